"""A standalone model file: the network with the dataset's normalization built in, loadable without mlplab.

Input: float32 images ``[N, 1, 28, 28]`` with pixel values in [0, 1], light ink on a dark background as in
the dataset (what ``torchvision.transforms.ToTensor()`` makes of an MNIST image; ``uint8 / 255``).
Output: logits ``[N, classes]`` already divided by the checkpoint's temperature (``mlplab.calibration``), so a plain
softmax gives the calibrated probabilities predict.py prints, and the argmax is the network's. A ``torch.export``
program (``.pt2``, default: ``torch.export.load(path).module()``), ONNX (``.onnx``: any ONNX runtime) or TorchScript
(``.pt``, legacy: ``torch.jit.load``), each carrying the dataset, class names, mean, std and temperature
(``mlplab.json`` extra file, or the ONNX ``mlplab`` metadata property).

``quantize=int8`` (ONNX only): onnxruntime's dynamic quantization stores the weights as int8 and quantizes
activations per batch at run time; checked by the share of inputs where it agrees with float32 (docs/benchmarks.md).
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
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

log = logging.getLogger(__name__)

INPUT = "images"
ONNX_EXTRA = "format=onnx needs the onnx extra: pip install 'mlplab[onnx]' (onnx, onnxscript, onnxruntime)"


class StandaloneClassifier(nn.Module):
    """Raw images in [0, 1] -> normalization -> the trained network -> logits / temperature."""

    def __init__(self, net: nn.Module, mean: float, std: float, temperature: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))
        self.register_buffer("temperature", torch.tensor(temperature))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std) / self.temperature


def standalone(trained: TrainedClassifier) -> StandaloneClassifier:
    info = trained.info
    return StandaloneClassifier(copy.deepcopy(trained.module.net), info.mean, info.std, trained.temperature).eval()


def metadata(trained: TrainedClassifier, quantize: str | None = None) -> dict[str, Any]:
    info = trained.info
    return {"dataset": trained.dataset, "class_names": list(trained.class_names), "mean": info.mean, "std": info.std,
            "temperature": trained.temperature,
            "input": f"float32 [N, {', '.join(map(str, info.image_shape))}] in [0, 1], light ink on dark",
            "output": f"logits [N, classes] divided by the temperature {trained.temperature:.4g}: softmax gives "
                      "calibrated probabilities"} | ({"quantized": f"{quantize} (onnxruntime dynamic)"} if quantize else {})


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


def quantize_int8(fp32: Path, path: Path) -> None:
    """onnxruntime's dynamic quantization: int8 weights, activations quantized per batch (no calibration data),
    after its recommended pre-processing (shape inference, graph optimization). The model's metadata stays."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as err:
        raise UserError(ONNX_EXTRA) from err

    prepared = fp32.with_name("prepared.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # onnxruntime's quantizer notes every tensor it leaves alone on the root logger
    try:
        quant_pre_process(fp32, prepared)
        quantize_dynamic(prepared, path, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def export(cfg: DictConfig) -> Path:
    """Write ``cfg.ckpt_path`` as a standalone ``cfg.format`` file, then check it reproduces the checkpoint's logits
    (``quantize=int8``: its predictions, on random images and on images the network is sure of)."""
    quantize = cfg.get("quantize")
    if quantize is not None and cfg.format != "onnx":
        raise ConfigError(f"quantize={quantize} needs format=onnx (onnxruntime's dynamic quantization); "
                          f"format={cfg.format} is written in float32")
    trained = load_trained_from_config(cfg)
    default_name = "model.int8" if quantize else "model"
    path = Path(cfg.output) if cfg.get("output") else Path(cfg.output_dir) / f"{default_name}{EXPORT_FORMATS[cfg.format]}"
    if path.suffix != EXPORT_FORMATS[cfg.format]:
        raise ConfigError(f"output={cfg.output} must end in {EXPORT_FORMATS[cfg.format]} for format={cfg.format}")
    path.parent.mkdir(parents=True, exist_ok=True)
    model, meta = standalone(trained), metadata(trained, quantize)
    example = torch.rand(256 if quantize else 8, *trained.info.image_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(example)
        if quantize:
            with tempfile.TemporaryDirectory() as folder:
                fp32 = Path(folder) / "model.onnx"
                EXPORTERS[cfg.format](model, example[:8], fp32, meta)
                quantize_int8(fp32, path)
                fp32_size = fp32.stat().st_size
        else:
            EXPORTERS[cfg.format](model, example[:8], path, meta)
        outputs = run_exported(path, example)
    log.info("wrote %s (%.1f kB): %s -> %s, classes %s", path, path.stat().st_size / 1e3, meta["input"], meta["output"],
             " ".join(meta["class_names"]))
    if quantize:
        agree = float((outputs.argmax(1) == expected.argmax(1)).float().mean())
        log.info("int8: %.1f kB instead of %.1f kB in float32; same class as the checkpoint on %.1f%% of %d random images "
                 "(accuracy on real data: bench/int8.py)", path.stat().st_size / 1e3, fp32_size / 1e3, 100 * agree, len(example))
    else:
        log.info("max |logit difference| from the checkpoint on 8 random images: %.2e", (outputs - expected).abs().max().item())
    return path
