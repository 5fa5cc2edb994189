"""Train an MLP on MNIST-family images: `python train.py model=mlp trainer.max_epochs=10`.

Every setting lives in conf/ (start at conf/train.yaml); the pipeline is mlplab.pipeline.train.
"""

from mlplab.cli import run

if __name__ == "__main__":
    run("mlplab.pipeline:train", config_name="train", sweep_objective=True)
