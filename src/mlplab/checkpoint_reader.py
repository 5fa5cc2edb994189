"""Reading checkpoints: every ``torch.load`` of one in the package, always ``weights_only=True`` (a checkpoint can
never run code), and every way a file can be unusable told in one line naming it and what is wrong.

- A finished run's (eval.py, predict.py, export.py): the network, the data settings stored beside it by
  Lightning (dataset, class names, mean and std, the exact validation split), so nobody repeats them, and the
  temperature fitted on that split (``mlplab.calibration``; 1.0 when the checkpoint has none).
- Pretrained weights (finetune.py): a checkpoint, or a plain state dict whose widths, input size and class count
  come from the weight shapes (activation, dropout: the MLP's defaults).
- Whether a checkpoint fits this config, which run wrote it, which epoch ``last.ckpt`` holds. Writing them:
  ``mlplab.checkpoint_writer``.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from mlplab.calibration import TEMPERATURE_KEY
from mlplab.choices import DATASETS, DatasetInfo
from mlplab.classifier import ClassifierModule
from mlplab.data.csv_data import CSVDataModule
from mlplab.data.datamodule import MNISTDataModule, SplitDataModule, class_names
from mlplab.data.image_folder import ImageFolderDataModule
from mlplab.errors import ConfigError, UserError
from mlplab.models import MLP
from mlplab.rules import check, shown
from mlplab.run_dirs import command_line_overrides, entry_point
from mlplab.run_record import CHECKPOINT_KEY, note_checkpoint, read_record

log = logging.getLogger(__name__)

MLP_TARGET = f"{MLP.__module__}.{MLP.__qualname__}"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def read_weights_only(path: Path, key: str, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``, every failure told as one line naming the config ``key``.
    The package's only ``torch.load`` of a checkpoint: files can never run code. ``mmap``: read only what is used."""
    if not path.is_file():
        raise UserError(f"{key}={path}: {'is a folder, not a file' if path.is_dir() else 'no such file'}; pass a "
                        "checkpoint written by train.py, e.g. logs/train/runs/<run>/checkpoints/last.ckpt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch's reasons are long and many; the user needs to know which case it is
        with path.open("rb") as file:
            is_zip = file.read(len(ZIP_MAGIC)) == ZIP_MAGIC
        if not is_zip:
            raise UserError(f"{key}={path} is not a PyTorch checkpoint (expected a .ckpt written by train.py or "
                            "a file written by torch.save)") from err
        if "Unsupported global" in str(err):
            raise UserError(f"{key}={path} holds Python objects besides tensors and plain values (a whole model "
                            "saved with torch.save(model)?); files must load with torch.load(weights_only=True), as "
                            "train.py's checkpoints and state dicts do") from err
        reason = str(err).strip().splitlines()[0].split(". ")[0]
        raise UserError(f"{key}={path} is a damaged checkpoint (truncated or corrupted: {reason})") from err


@dataclass(frozen=True)
class PretrainedNet:
    """A pretrained MLP: its config (``_target_`` + MLP arguments) and its weights under the MLP's own keys."""

    path: Path
    net: dict[str, Any]  # in_features and num_classes among them
    weights: dict[str, torch.Tensor]


def load_pretrained(path: str | Path | None) -> PretrainedNet:
    """Read ``path`` and check that its weights fit the MLP they describe."""
    check({"pretrained": None if path is None else str(path)})
    path = Path(path)
    contents = read_weights_only(path, key="pretrained")
    if isinstance(contents, dict) and "state_dict" in contents:
        net = (contents.get("hyper_parameters") or {}).get("net")
        if not isinstance(net, dict):
            raise UserError(f"pretrained={path} is a checkpoint without network hyperparameters (hyper_parameters.net); "
                            "use one written by train.py")
        if net.get("_target_") != MLP_TARGET:
            raise UserError(f"pretrained={path} holds a {net.get('_target_')} network; finetune.py fine-tunes {MLP_TARGET}")
        weights = without_prefix(contents["state_dict"], "net.")
    elif is_state_dict(contents):
        weights = without_prefix(contents, "net.")
        net = mlp_config_from_shapes(weights, path)
    else:
        raise UserError(f"pretrained={path} is not a checkpoint: it holds {describe(contents)}; expected a .ckpt "
                        "written by train.py or a state dict of an mlplab MLP")
    check_weights_fit(net, weights, path)
    return PretrainedNet(path, dict(net), weights)


def is_state_dict(contents: Any) -> bool:
    return isinstance(contents, dict) and bool(contents) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in contents.items()
    )


def without_prefix(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The network's own keys: Lightning's state_dict names them ``net.<key>`` (the module's attribute)."""
    return {key.removeprefix(prefix): value for key, value in weights.items()}


def describe(contents: Any) -> str:
    if isinstance(contents, dict):
        return f"a dict with keys {', '.join(map(str, list(contents)[:4]))}{', ...' if len(contents) > 4 else ''}"
    return f"a {type(contents).__name__}"


def mlp_config_from_shapes(weights: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """The MLP a plain state dict describes: widths from the Linear weights, batch norm from its running stats."""
    head = weights.get("head.weight")
    linear = sorted(
        (int(key.split(".")[1]), value) for key, value in weights.items()
        if key.startswith("backbone.") and key.endswith(".weight") and value.ndim == 2
    )
    if head is None or head.ndim != 2:
        raise UserError(f"pretrained={path} is a state dict of another network ({describe(weights)}); expected an "
                        "mlplab MLP's (backbone.*, head.*)")
    return {
        "_target_": MLP_TARGET,
        "in_features": linear[0][1].shape[1] if linear else head.shape[1],
        "num_classes": head.shape[0],
        "hidden_dims": [value.shape[0] for _, value in linear],
        "batch_norm": any(key.endswith(".running_mean") for key in weights),
    }


def check_weights_fit(net: dict[str, Any], weights: dict[str, torch.Tensor], path: Path) -> None:
    """Every weight of the described MLP present with its shape, and nothing else: else another architecture."""
    arguments = {key: value for key, value in net.items() if key != "_target_"}
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialization, no random numbers drawn
            expected = {key: value.shape for key, value in MLP(**arguments).state_dict().items()}
    except (TypeError, UserError) as err:
        raise UserError(f"pretrained={path} describes an MLP that cannot be built ({err})") from err
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    reshaped = sorted(key for key in expected.keys() & weights.keys() if weights[key].shape != expected[key])
    if missing or unexpected or reshaped:
        found = "; ".join(
            f"{what} {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", reshaped)) if keys
        )
        raise UserError(f"pretrained={path}: its weights do not fit the MLP its hyperparameters describe ({found}): "
                        "a checkpoint of another architecture?")


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
    temperature: float = 1.0  # logits are divided by it before softmax (1.0: uncalibrated; mlplab.calibration)

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
    temperature = raw.get(TEMPERATURE_KEY)  # absent from checkpoints written before calibration, or without it
    return TrainedClassifier(module.eval(), dict(data), data_class, raw[kind] if kind else None,
                             temperature=float(temperature) if temperature is not None else 1.0)


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
                      f"{shlex.join(['python', entry_point(), *kept])}")


def plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def overrides_any(arg: str, keys: set[str]) -> bool:
    """Whether a command-line override sets one of ``keys``: itself (``model.hidden_dims=[128]``), its group
    (``data=fashion_mnist`` for ``data.dataset``) or an experiment, which may set anything."""
    name = arg.split("=", 1)[0].lstrip("+~")
    return any(key == name or key.startswith(name + ".") for key in keys) or name.startswith("experiment")


def load_trained_from_config(cfg: DictConfig, path: str | Path | None = None) -> TrainedClassifier:
    """``load_trained(path or cfg.ckpt_path)``, its origin reported in the run dir, saying what to type when the
    user left ckpt_path out."""
    if path is None and (OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path):
        raise UserError("ckpt_path=<file> is required: a checkpoint written by train.py, "
                        "e.g. ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt")
    path = path or cfg.ckpt_path
    return replace(load_trained(path), origin=report_origin(path, cfg.output_dir))


def checkpoint_origin(ckpt_path: str | Path) -> dict[str, Any] | None:
    """What a checkpoint says about the run that wrote it, else the run.json beside its checkpoints/ folder."""
    path = Path(str(ckpt_path))
    try:
        contents = read_weights_only(path, "ckpt_path", mmap=True)
    except UserError:  # the loaders report unreadable checkpoints themselves
        contents = None
    if isinstance(contents, dict) and isinstance(contents.get(CHECKPOINT_KEY), dict):
        return dict(contents[CHECKPOINT_KEY])
    if data := read_record(path.resolve().parent.parent):
        git_info = data.get("git") or {}
        return {key: data.get(key) for key in ("run_dir", "command", "start_time", "data_sha256")} | {
            "git_commit": git_info.get("commit"), "git_dirty": git_info.get("dirty")}
    return None


def report_origin(ckpt_path: str | Path, run_dir: str | Path, key: str = "ckpt_path") -> dict[str, Any] | None:
    """Log which run and commit ``ckpt_path`` came from, record it in run.json, and return it (None: unknown)."""
    origin = checkpoint_origin(ckpt_path)
    if origin is None:
        log.info("%s=%s: no record of the run that wrote it (no run.json beside it)", key, ckpt_path)
    else:
        commit = (origin.get("git_commit") or "unknown")[:12]
        dirty = ", with uncommitted changes: see git_diff.patch in that run dir" if origin.get("git_dirty") else ""
        log.info("%s=%s comes from run %s (commit %s%s), started %s", key, ckpt_path, origin.get("run_dir"), commit,
                 dirty, origin.get("start_time"))
    note_checkpoint(ckpt_path, origin, run_dir)
    return origin


def last_checkpoint(trainer: L.Trainer) -> str:
    """The path of ``last.ckpt`` (the newest finished epoch) if a checkpoint callback wrote one, else ''. Our own
    ModelCheckpoint (``filename: last``) keeps it in ``best_model_path``; ``save_last=true`` in ``last_model_path``."""
    for callback in trainer.checkpoint_callbacks:
        for path in (callback.last_model_path, callback.best_model_path):
            if path and Path(path).name == "last.ckpt" and Path(path).is_file():
                return path
    return ""


def kept_checkpoint(trainer: L.Trainer) -> str:
    """Which checkpoint holds the last good state, in words, for the one-line reports."""
    last = last_checkpoint(trainer)
    if not last:
        return "no epoch finished, so no checkpoint was kept"
    epoch = read_weights_only(Path(last), "last.ckpt", mmap=True)["epoch"]
    return f"{last} keeps the end of epoch {epoch}"
