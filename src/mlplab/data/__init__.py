"""The data family. ``mlplab.data.MNISTDataModule``, the path configs and checkpoints name, is looked up on first
use (PEP 562), so that validation can read an IDX header (``mlplab.data.idx``) without Lightning and torchvision."""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "MNISTDataModule":
        from mlplab.data.datamodule import MNISTDataModule

        return MNISTDataModule
    raise AttributeError(f"module 'mlplab.data' has no attribute {name!r}")
