"""Evaluate a checkpoint: `python eval.py ckpt_path=<file> [split=val] [data=<name>]`.

Every setting lives in conf/eval.yaml; the work is mlplab.evaluation.evaluate.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mlplab.config import refuse_unknown_overrides
from mlplab.errors import reported_as_one_line
from mlplab.run_record import recorded_run
from mlplab.evaluation import evaluate


@hydra.main(config_path="conf", config_name="eval", version_base="1.3")
@reported_as_one_line
@recorded_run
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    refuse_unknown_overrides(Path(__file__).parent / "conf", "eval", sys.argv[1:])  # one line, before Hydra starts
    main()
