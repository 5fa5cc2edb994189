"""Fine-tune a trained MLP on new data, new labels or few labels:
`python finetune.py pretrained=logs/train/runs/<run>/checkpoints/last.ckpt data=fashion_mnist`.

Every setting lives in conf/ (start at conf/finetune.yaml); the pipeline is mlplab.finetune.finetune.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mlplab.config import refuse_unknown_overrides
from mlplab.errors import reported_as_one_line
from mlplab.run_record import recorded_run
from mlplab.finetune import finetune
from mlplab.sweeps import recorded_sweep_job


@hydra.main(config_path="conf", config_name="finetune", version_base="1.3")
@reported_as_one_line
@recorded_sweep_job
@recorded_run
def main(cfg: DictConfig) -> float:
    return finetune(cfg)


if __name__ == "__main__":
    refuse_unknown_overrides(Path(__file__).parent / "conf", "finetune", sys.argv[1:])  # one line, before Hydra starts
    main()
