"""Find a learning rate: `python lr_find.py [optimizer=sgd model.hidden_dims=[1024]]` (any train.py override).

Settings in conf/lr_find.yaml (training's config plus the range); the work is mlplab.lr_find.lr_range_test.
"""

from mlplab.cli import run
from mlplab.lr_find import lr_range_test

if __name__ == "__main__":
    run(lr_range_test, config_name="lr_find")
