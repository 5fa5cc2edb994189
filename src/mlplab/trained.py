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

from mlplab.data import DATASETS, DatasetInfo, class_names
from mlplab.errors import UserError
from mlplab.module import ClassifierModule
from mlplab.pretrained import read_weights_only
from mlplab.run_record import report_origin


@dataclass(frozen=True)
class TrainedClassifier:
    module: ClassifierModule  # on the CPU, in eval mode
    data_hparams: dict[str, Any]  # the MNISTDataModule arguments of the run that wrote the checkpoint
    origin: dict[str, Any] | None = None  # the run that wrote it: dir, commit, data hashes (mlplab.run_record)

    @property
    def dataset(self) -> str:
        return self.data_hparams["dataset"]

    @property
    def class_names(self) -> tuple[str, ...]:
        return class_names(self.dataset, self.data_hparams.get("classes"))

    @property
    def info(self) -> DatasetInfo:
        return DATASETS[self.dataset]


def load_trained(ckpt_path: str | Path) -> TrainedClassifier:
    """Load a checkpoint written by ``train.py`` with ``weights_only=True``; one clear line when it is not one."""
    path = Path(str(ckpt_path))
    raw = read_weights_only(path, key="ckpt_path")
    hparams = raw.get("hyper_parameters", {}) if isinstance(raw, dict) else {}
    data = raw.get("datamodule_hyper_parameters", {}) if isinstance(raw, dict) else {}
    if "net" not in hparams or data.get("dataset") not in DATASETS:
        raise UserError(f"ckpt_path={ckpt_path} is not an mlplab checkpoint: it does not record its network "
                        "and dataset (write one with train.py)")
    module = ClassifierModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    return TrainedClassifier(module.eval(), dict(data))


def load_trained_from_config(cfg: DictConfig) -> TrainedClassifier:
    """``load_trained(cfg.ckpt_path)``, saying what to type when the user left ckpt_path out."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise UserError("ckpt_path=<file> is required: a checkpoint written by train.py, "
                        "e.g. ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt")
    trained = load_trained(cfg.ckpt_path)
    return TrainedClassifier(trained.module, trained.data_hparams, report_origin(cfg.ckpt_path))
