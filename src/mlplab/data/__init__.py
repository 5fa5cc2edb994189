"""The data family: MNIST-family data modules (``datamodule``), their IDX files (``idx``), the user's own pictures
(``image_folder``, ``pictures``) and CSV files (``csv_data``), and batch augmentation (``augment``).

``mlplab.data.MNISTDataModule`` is the path configs and checkpoints name. It is looked up on first use (PEP 562),
so that config validation can read an IDX header (``mlplab.data.idx``) without importing Lightning and torchvision.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "MNISTDataModule":
        from mlplab.data.datamodule import MNISTDataModule

        return MNISTDataModule
    raise AttributeError(f"module 'mlplab.data' has no attribute {name!r}")
