"""Train an MLP on MNIST-family images: `python train.py model=mlp trainer.max_epochs=10`.

Every setting lives in conf/ (start at conf/train.yaml); the pipeline is mlplab.pipeline.train.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mlplab.config import refuse_unknown_overrides
from mlplab.errors import reported_as_one_line
from mlplab.pipeline import train
from mlplab.run_record import recorded_run
from mlplab.sweeps import recorded_sweep_job


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@reported_as_one_line
@recorded_sweep_job
@recorded_run
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    refuse_unknown_overrides(Path(__file__).parent / "conf", "train", sys.argv[1:])  # one line, before Hydra starts
    main()
