"""A standalone model file: the network with the dataset's normalization built in, loadable without mlplab.

Input: float32 images ``[N, 1, 28, 28]`` with pixel values in [0, 1], light ink on a dark background as in
the dataset (what ``torchvision.transforms.ToTensor()`` makes of an MNIST image; ``uint8 / 255``).
Output: logits ``[N, classes]``. A ``torch.export`` program (``.pt2``, default: ``torch.export.load(path).module()``),
ONNX (``.onnx``: any ONNX runtime) or TorchScript (``.pt``, legacy: ``torch.jit.load``), each carrying the dataset,
class names, mean and std (``mlplab.json`` extra file, or the ONNX ``mlplab`` metadata property).
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from mlplab.checkpoint_reader import TrainedClassifier, load_trained_from_config
from mlplab.choices import EXPORT_FORMATS
from mlplab.errors import ConfigError, UserError
from mlplab.rules import check

log = logging.getLogger(__name__)

INPUT = "images"
ONNX_EXTRA = "format=onnx needs the onnx extra: pip install 'mlplab[onnx]' (onnx, onnxscript, onnxruntime)"


class StandaloneClassifier(nn.Module):
    """Raw images in [0, 1] -> normalization -> the trained network -> logits."""

    def __init__(self, net: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)


def standalone(trained: TrainedClassifier) -> StandaloneClassifier:
    return StandaloneClassifier(copy.deepcopy(trained.module.net), trained.info.mean, trained.info.std).eval()


def metadata(trained: TrainedClassifier) -> dict[str, Any]:
    info = trained.info
    return {"dataset": trained.dataset, "class_names": list(trained.class_names), "mean": info.mean, "std": info.std,
            "input": f"float32 [N, {', '.join(map(str, info.image_shape))}] in [0, 1], light ink on dark",
            "output": "logits [N, classes]"}


@contextmanager
def torchscript_quietly():
    """torch warns that TorchScript is deprecated on every call: where it is asked for (format=torchscript, and
    TensorBoard's graph, which only tracing gives), that is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
        yield


def save_torchscript(model: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, Any]) -> None:
    with torchscript_quietly():
        torch.jit.save(torch.jit.trace(model, example), str(path), _extra_files={"mlplab.json": json.dumps(meta)})


def save_exported_program(model: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, Any]) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path), extra_files={"mlplab.json": json.dumps(meta)})


def save_onnx(model: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, Any]) -> None:
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as err:
        raise UserError(ONNX_EXTRA) from err
    for name in ("onnxscript", "onnx_ir"):  # their graph-optimization notes would drown the export's own report
        logging.getLogger(name).setLevel(logging.WARNING)
    program = torch.onnx.export(
        model, (example,), input_names=[INPUT], output_names=["logits"],
        dynamic_shapes={INPUT: {0: torch.export.Dim("batch")}}, dynamo=True, verbose=False,
    )
    program.model.metadata_props["mlplab"] = json.dumps(meta)
    program.save(str(path))


EXPORTERS = {"export": save_exported_program, "onnx": save_onnx, "torchscript": save_torchscript}  # choices.EXPORT_FORMATS


def run_exported(path: Path, images: torch.Tensor) -> torch.Tensor:
    """Logits from the written file, loaded as a user without mlplab would load it."""
    if path.suffix == EXPORT_FORMATS["export"]:
        return torch.export.load(str(path)).module()(images)
    if path.suffix == EXPORT_FORMATS["torchscript"]:
        with torchscript_quietly():
            return torch.jit.load(str(path))(images)
    try:
        import onnxruntime
    except ImportError as err:
        raise UserError(ONNX_EXTRA) from err
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {INPUT: images.numpy()})[0])


def export(cfg: DictConfig) -> Path:
    """Write ``cfg.ckpt_path`` as a standalone ``cfg.format`` file, then check it reproduces the checkpoint's logits."""
    check({"format": cfg.format, "output": cfg.get("output")})
    trained = load_trained_from_config(cfg)
    path = Path(cfg.output) if cfg.get("output") else Path(cfg.output_dir) / f"model{EXPORT_FORMATS[cfg.format]}"
    if path.suffix != EXPORT_FORMATS[cfg.format]:
        raise ConfigError(f"output={cfg.output} must end in {EXPORT_FORMATS[cfg.format]} for format={cfg.format}")
    path.parent.mkdir(parents=True, exist_ok=True)
    model, meta = standalone(trained), metadata(trained)
    example = torch.rand(8, *trained.info.image_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        EXPORTERS[cfg.format](model, example, path, meta)
        expected = trained.module((example - trained.info.mean) / trained.info.std)
        difference = (run_exported(path, example) - expected).abs().max().item()
    log.info("wrote %s (%.1f kB): %s -> %s, classes %s", path, path.stat().st_size / 1e3, meta["input"], meta["output"],
             " ".join(meta["class_names"]))
    log.info("max |logit difference| from the checkpoint on 8 random images: %.2e", difference)
    return path
