"""Classify your own pictures: `python predict.py ckpt_path=<file> inputs=<picture, folder or pattern>`.

Every setting lives in conf/predict.yaml; the work is mlplab.prediction.predict.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mlplab.config import refuse_unknown_overrides
from mlplab.errors import reported_as_one_line
from mlplab.run_record import recorded_run
from mlplab.prediction import predict


@hydra.main(config_path="conf", config_name="predict", version_base="1.3")
@reported_as_one_line
@recorded_run
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    refuse_unknown_overrides(Path(__file__).parent / "conf", "predict", sys.argv[1:])  # one line, before Hydra starts
    main()
