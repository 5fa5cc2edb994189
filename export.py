"""Export a checkpoint as a standalone model file: `python export.py ckpt_path=<file> format=torchscript|onnx`.

Every setting lives in conf/export.yaml; the work is mlplab.export.export.
"""

import hydra
from omegaconf import DictConfig

from mlplab.errors import reported_as_one_line
from mlplab.export import export


@hydra.main(config_path="conf", config_name="export", version_base="1.3")
@reported_as_one_line
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
