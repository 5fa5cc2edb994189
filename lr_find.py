"""Find a learning rate: `python lr_find.py [optimizer=sgd model.hidden_dims=[1024]]` (any train.py override).

Settings in conf/lr_find.yaml (training's config plus the range); the work is mlplab.lr_find.lr_range_test.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mlplab.config import refuse_unknown_overrides
from mlplab.errors import reported_as_one_line
from mlplab.lr_find import lr_range_test
from mlplab.run_record import recorded_run


@hydra.main(config_path="conf", config_name="lr_find", version_base="1.3")
@reported_as_one_line
@recorded_run
def main(cfg: DictConfig) -> None:
    lr_range_test(cfg)


if __name__ == "__main__":
    refuse_unknown_overrides(Path(__file__).parent / "conf", "lr_find", sys.argv[1:])  # one line, before Hydra starts
    main()
