"""mlplab: build, train, sweep and fine-tune MLPs on MNIST-family images with Lightning and Hydra."""

__version__ = "0.1.0"
