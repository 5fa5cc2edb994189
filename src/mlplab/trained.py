"""A finished run's checkpoint, read back: the network, and the data settings it was trained with.

``eval.py``, ``predict.py`` and ``export.py`` start from a checkpoint alone. Lightning stores the
datamodule's hyperparameters next to the module's, so the dataset (its class names, mean and std) and the
exact validation split come with the weights: nobody has to repeat them on the command line.
"""

from __future__ import annotations


import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlplab.csv_data import CSVDataModule
from mlplab.data import DATASETS, DatasetInfo, MNISTDataModule, SplitDataModule, class_names
from mlplab.errors import ConfigError, UserError
from mlplab.faults import command_line_overrides
from mlplab.module import ClassifierModule
from mlplab.image_folder import ImageFolderDataModule
from mlplab.pretrained import read_weights_only
from mlplab.rules import shown
from mlplab.run_record import report_origin

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
    origin: dict[str, Any] | None = None  # the run that wrote it: dir, commit, data hashes (mlplab.run_record)

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


# What a checkpoint's weights and labels depend on: a run resumed or evaluated with other values cannot use them.
FITTING_KEYS = {"model.hidden_dims": ("net", "hidden_dims"), "model.activation": ("net", "activation"),
                "model.batch_norm": ("net", "batch_norm"), "data.dataset": ("data", "dataset"),
                "data.classes": ("data", "classes")}


def refuse_misfit(ckpt_path: str | Path, net: dict[str, Any] | None, data: dict[str, Any],
                  keys: Sequence[str] = tuple(FITTING_KEYS), group_is_optional: bool = False) -> None:
    """ConfigError naming every value of ``keys`` where the checkpoint and this command differ (the checkpoint's
    ``model.hidden_dims=[512, 256]`` vs this command's ``[128]``), with the command that fits it: this one
    without the overrides that changed those values (and, where the group is optional, as ``data`` is in
    eval.py, without the keys of a group it no longer chooses)."""
    raw = read_weights_only(Path(str(ckpt_path)), key="ckpt_path")
    if not isinstance(raw, dict) or "state_dict" not in raw or "hyper_parameters" not in raw:
        raise UserError(f"ckpt_path={ckpt_path} is not a checkpoint written by train.py or finetune.py (it holds no "
                        "state_dict and hyper_parameters): resume from <run>/checkpoints/last.ckpt")
    saved = {"net": (raw.get("hyper_parameters") or {}).get("net") or {}, "data": raw.get("datamodule_hyper_parameters") or {}}
    current = {"net": net or {}, "data": data}
    differences = []
    for key in keys:
        part, name = FITTING_KEYS[key]
        if name not in saved[part] or name not in current[part]:
            continue
        before, now = plain(saved[part][name]), plain(current[part][name])
        if before != now:
            differences.append((key, before, now))
    if not differences:
        return
    what = "; ".join(f"the checkpoint's {key}={shown(before)} vs this command's {shown(now)}" for key, before, now in differences)
    changed = {key for key, _, _ in differences}
    arguments = command_line_overrides()
    dropped_groups = {arg.split("=", 1)[0].lstrip("+") for arg in arguments if overrides_any(arg, changed) and "." not in arg.split("=", 1)[0]}
    kept = [arg for arg in arguments if not overrides_any(arg, changed)
            and not (group_is_optional and arg.split(".", 1)[0] in dropped_groups)]
    raise ConfigError(f"ckpt_path={ckpt_path} does not fit this config: {what}; run it with: "
                      f"{shlex.join(['python', Path(sys.argv[0]).name, *kept])}")


def plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def overrides_any(arg: str, keys: set[str]) -> bool:
    """Whether a command-line override sets one of ``keys``: itself (``model.hidden_dims=[128]``), its group
    (``data=fashion_mnist`` for ``data.dataset``) or an experiment, which may set anything."""
    name = arg.split("=", 1)[0].lstrip("+~")
    return any(key == name or key.startswith(name + ".") for key in keys) or name.startswith("experiment")


def load_trained_from_config(cfg: DictConfig) -> TrainedClassifier:
    """``load_trained(cfg.ckpt_path)``, saying what to type when the user left ckpt_path out."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise UserError("ckpt_path=<file> is required: a checkpoint written by train.py, "
                        "e.g. ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt")
    trained = load_trained(cfg.ckpt_path)
    return replace(trained, origin=report_origin(cfg.ckpt_path))
