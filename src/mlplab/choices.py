"""The bottom layer: the names a user chooses from and their plain facts, read by validation without torch,
Lightning or Optuna. tests/test_rules.py checks each list against what its implementation offers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """What the pipeline needs to know about a dataset before reading it."""

    folder: str | None  # torchvision's class and folder name (<data_dir>/<folder>/raw); None: the user's own data
    mean: float
    std: float
    class_names: tuple[str, ...]
    image_shape: tuple[int, ...] = (1, 28, 28)
    box: int = 28  # side of the box predict.py scales a picture's ink into (MNIST: 20, how the dataset was made)


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("MNIST", 0.1307, 0.3081, tuple(str(d) for d in range(10)), box=20),
    "fashion_mnist": DatasetInfo(
        "FashionMNIST", 0.2860, 0.3530,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "kmnist": DatasetInfo("KMNIST", 0.1918, 0.3483, ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
}
LOADERS = ("tensor", "torchvision")  # data.loader: batches gathered from device tensors, or torchvision's DataLoader
ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "leaky_relu")
EXPORT_FORMATS = {"export": ".pt2", "onnx": ".onnx", "torchscript": ".pt"}  # format -> file suffix
SAMPLERS = ("tpe", "random", "gp", "cmaes", "qmc", "nsgaii")  # hydra/sweeper/sampler
PRUNERS = ("none", "median", "hyperband", "successive_halving")  # hydra/sweeper/pruner and hydra.sweeper.pruner
DIRECTIONS = ("maximize", "minimize")  # hydra.sweeper.direction, one per objective
# hydra.sweeper.objectives: what a search can optimize, read from each job's metrics.json, and which way is better
OBJECTIVES = {"val/acc": "maximize", "val/loss": "minimize", "train_time_s": "minimize", "parameters": "minimize"}
# trainer.precision: what Lightning accepts (it lists them only in private type aliases; tests compare) and auto
PRECISIONS = ("auto", "transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true",
              "bf16-mixed", "32-true", "64-true", "64", "32", "16", "bf16", 64, 32, 16)
