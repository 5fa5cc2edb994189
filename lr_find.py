"""Find a learning rate: `python lr_find.py [optimizer=sgd model.hidden_dims=[1024]]` (any train.py override).

Settings in conf/lr_find.yaml (training's config plus the range); the work is mlplab.lr_find.lr_range_test.
"""

from mlplab.cli import run

if __name__ == "__main__":
    run("mlplab.lr_find:lr_range_test", config_name="lr_find")
