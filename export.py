"""Export a checkpoint as a standalone model file: `python export.py ckpt_path=<file> format=torchscript|onnx`.

Every setting lives in conf/export.yaml; the work is mlplab.export.export.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mlplab.config import refuse_unknown_overrides
from mlplab.errors import reported_as_one_line
from mlplab.run_record import recorded_run
from mlplab.export import export


@hydra.main(config_path="conf", config_name="export", version_base="1.3")
@reported_as_one_line
@recorded_run
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    refuse_unknown_overrides(Path(__file__).parent / "conf", "export", sys.argv[1:])  # one line, before Hydra starts
    main()
