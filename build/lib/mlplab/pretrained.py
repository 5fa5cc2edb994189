"""Pretrained weights to fine-tune: a checkpoint written by train.py (or finetune.py), or a plain state dict.

A checkpoint stores the network's hyperparameters next to its weights, so the network is rebuilt without the
user repeating the architecture. A plain state dict (``torch.save(module.net.state_dict(), path)``) does not:
its layer widths, input size and class count are read from the weight shapes, and what shapes cannot tell
(activation, dropout) is the MLP's default (ReLU, no dropout). Files load with ``weights_only=True``: a
checkpoint can never run code. Every way a file can be unusable ends in one line naming it and what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mlplab.errors import ConfigError, UserError
from mlplab.models import MLP

MLP_TARGET = f"{MLP.__module__}.{MLP.__qualname__}"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


@dataclass(frozen=True)
class PretrainedNet:
    """A pretrained MLP: its config (``_target_`` + MLP arguments) and its weights under the MLP's own keys."""

    path: Path
    net: dict[str, Any]
    weights: dict[str, torch.Tensor]

    @property
    def in_features(self) -> int:
        return self.net["in_features"]

    @property
    def num_classes(self) -> int:
        return self.net["num_classes"]


def load_pretrained(path: str | Path | None) -> PretrainedNet:
    """Read ``path`` and check that its weights fit the MLP they describe."""
    if path is None:
        raise ConfigError("pretrained is required: pretrained=<run dir>/checkpoints/last.ckpt (from train.py)")
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


def read_weights_only(path: Path, key: str) -> Any:
    """``torch.load(path, weights_only=True)``, every failure told as one line naming the config ``key``."""
    if not path.is_file():
        raise UserError(f"{key}={path}: {'is a folder, not a file' if path.is_dir() else 'no such file'}; pass a "
                        "checkpoint written by train.py, e.g. logs/train/runs/<run>/checkpoints/last.ckpt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
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
