"""A finished run's checkpoint, read back: the network, and the data settings it was trained with.

``eval.py``, ``predict.py`` and ``export.py`` start from a checkpoint alone. Lightning stores the
datamodule's hyperparameters next to the module's, so the dataset (its class names, mean and std) and the
exact validation split come with the weights: nobody has to repeat them on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlplab.csv_data import CSVDataModule
from mlplab.data import DATASETS, DatasetInfo, MNISTDataModule, SplitDataModule, class_names
from mlplab.errors import UserError
from mlplab.module import ClassifierModule
from mlplab.image_folder import ImageFolderDataModule
from mlplab.pretrained import read_weights_only

# The datamodules a checkpoint may come from; Lightning stores each one's state_dict under its class name.
DATAMODULES: dict[str, type[SplitDataModule]] = {
    cls.__qualname__: cls for cls in (MNISTDataModule, ImageFolderDataModule, CSVDataModule)
}


@dataclass(frozen=True)
class TrainedClassifier:
    module: ClassifierModule  # on the CPU, in eval mode
    data_hparams: dict[str, Any]  # the datamodule arguments of the run that wrote the checkpoint
    data_class: type[SplitDataModule] = MNISTDataModule
    data_record: dict[str, Any] | None = None  # the datamodule's state_dict: class names, normalization, shape

    @property
    def dataset(self) -> str:
        """The built-in dataset's name, or the user's file or folder."""
        return self.data_hparams.get("dataset") or str(self.data_hparams.get("root") or self.data_hparams.get("path"))

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.data_record is not None:
            return tuple(self.data_record["class_names"])
        return class_names(self.dataset, self.data_hparams.get("classes"))

    @property
    def info(self) -> DatasetInfo:
        """Class names (after ``data.classes``), normalization, input shape and picture box of the training data."""
        if self.data_record is None:  # written before checkpoints recorded their data
            return DATASETS[self.dataset]
        record = self.data_record
        return DatasetInfo(None, record["mean"], record["std"], self.class_names, tuple(record["input_shape"]), record["box"])

    def datamodule(self, **overrides: Any) -> SplitDataModule:
        """The run's own data settings (same files, same validation split), with ``overrides``."""
        return self.data_class(**(self.data_hparams | overrides))


def load_trained(ckpt_path: str | Path) -> TrainedClassifier:
    """Load a checkpoint written by ``train.py`` with ``weights_only=True``; one clear line when it is not one."""
    path = Path(str(ckpt_path))
    raw = read_weights_only(path, key="ckpt_path")
    hparams = raw.get("hyper_parameters", {}) if isinstance(raw, dict) else {}
    data = raw.get("datamodule_hyper_parameters", {}) if isinstance(raw, dict) else {}
    kind = next((name for name in DATAMODULES if isinstance(raw, dict) and name in raw), None)
    if "net" not in hparams or (kind is None and data.get("dataset") not in DATASETS):
        raise UserError(f"ckpt_path={ckpt_path} is not an mlplab checkpoint: it does not record its network "
                        "and dataset (write one with train.py)")
    module = ClassifierModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    data_class = DATAMODULES[kind] if kind else MNISTDataModule
    return TrainedClassifier(module.eval(), dict(data), data_class, raw[kind] if kind else None)


def load_trained_from_config(cfg: DictConfig) -> TrainedClassifier:
    """``load_trained(cfg.ckpt_path)``, saying what to type when the user left ckpt_path out."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise UserError("ckpt_path=<file> is required: a checkpoint written by train.py, "
                        "e.g. ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt")
    return load_trained(cfg.ckpt_path)
