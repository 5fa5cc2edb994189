"""The run pipeline shared by the entry points: config -> objects -> fit -> best checkpoint -> test.

A run directory (Hydra's) ends up holding the composed config (``.hydra/``), ``checkpoints/``
(best by the monitored metric, plus ``last.ckpt``), TensorBoard events, ``metrics.json`` and ``run.json``
(the entry point's ``mlplab.run_record.recorded_run``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mlplab.checkpoint_reader import refuse_misfit
from mlplab.classifier import ClassifierModule
from mlplab.data.datamodule import MNISTDataModule
from mlplab.errors import UserError
from mlplab.faults import is_collective_failure, lost_workers
from mlplab.run_record import note_data
from mlplab.tracking import record_outcome

log = logging.getLogger(__name__)


def not_an_advert(record: logging.LogRecord) -> bool:
    """Lightning logs a tip to install its cloud logger whenever a Trainer starts: noise in every run's output."""
    return not str(record.msg).startswith("💡 Tip")


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(not_an_advert)


def build_datamodule(cfg: DictConfig) -> MNISTDataModule:
    datamodule = instantiate(cfg.data, _convert_="all")
    note_data(datamodule, cfg.output_dir)  # the SHA-256 of its files into run.json
    return datamodule


def build_module(
    cfg: DictConfig, datamodule: MNISTDataModule, net: dict[str, Any] | None = None, backbone_lr_scale: float = 1.0
) -> ClassifierModule:
    """The LightningModule for this config, with the network's input and output sizes taken from the data.

    ``net`` replaces ``cfg.model`` (fine-tuning rebuilds the pretrained network from its checkpoint).
    """
    net = (net or OmegaConf.to_container(cfg.model, resolve=True)) | {
        "in_features": datamodule.in_features,
        "num_classes": datamodule.num_classes,
    }
    return ClassifierModule(
        net=net,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") else None,
        l1=cfg.regularization.l1,
        label_smoothing=cfg.regularization.label_smoothing,
        backbone_lr_scale=backbone_lr_scale,
    )


def fastest_precision(accelerator: str = "auto") -> str:
    """``bf16-mixed`` where the hardware computes bf16 natively (CUDA GPUs since Ampere, CPUs with AVX512-BF16
    or AMX), else ``32-true``: emulated bf16 is slower (docs/benchmarks.md). torch tells it for the CPU only in
    private functions: a torch without them gets 32-true, and tests/test_config.py fails loudly."""
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    native_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
        torch.cpu, "_is_amx_tile_supported", lambda: False
    )()
    return "bf16-mixed" if native_bf16 else "32-true"


def build_trainer(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None] + list(extra_callbacks)
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None]
    precision = cfg.trainer.get("precision")
    if precision == "auto":
        precision = fastest_precision(cfg.trainer.get("accelerator", "auto"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=precision)
    # Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 so that looking for GPUs cannot poison fork; torch's
    # Adam then asks NVML again on every step (a dlopen each time). Devices are chosen now: use the cached check.
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    return trainer


def start_run(cfg: DictConfig) -> None:
    """Process-wide settings every run starts with: matmul precision, and the seed of weights, dropout and batches."""
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    L.seed_everything(cfg.seed, workers=True, verbose=False)


def build(cfg: DictConfig) -> tuple[MNISTDataModule, ClassifierModule, L.Trainer]:
    """Everything a run needs, seeded and (with ``compile=true``) compiled, not yet fitted."""
    start_run(cfg)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg)
    compile_network(cfg, module)
    return datamodule, module, trainer


def compile_network(cfg: DictConfig, module: ClassifierModule) -> None:
    """``compile=true``: torch.compile the network in place, so state_dict keys (and checkpoints) stay unchanged."""
    if cfg.compile:
        module.net.compile(**(cfg.get("compile_options") or {}))


def train(cfg: DictConfig) -> float:
    """Fit, evaluate the best checkpoint on validation and, once, on the official test set.

    Returns the monitored metric of the best checkpoint so a Hydra sweeper can optimize it.
    """
    datamodule, module, trainer = build(cfg)
    if cfg.get("ckpt_path"):
        refuse_misfit(cfg.ckpt_path, module.hparams.net, dict(datamodule.hparams))
    return fit_and_report(cfg, trainer, module, datamodule)


def fit_and_report(
    cfg: DictConfig,
    trainer: L.Trainer,
    module: ClassifierModule,
    datamodule: MNISTDataModule,
    extra_metrics: dict[str, Any] | None = None,
) -> float:
    """The end every entry point shares: fit, validate and test the best checkpoint, write metrics.json
    (with ``extra_metrics`` appended) and log where the run went. Returns the best checkpoint's monitored metric."""
    output_dir = Path(cfg.output_dir)
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except Exception as err:
        if trainer.world_size > 1 and is_collective_failure(err):
            raise lost_workers(trainer, err, OmegaConf.select(cfg, "trainer.strategy.timeout.seconds", default=None)) from err
        raise
    train_time = time.perf_counter() - start

    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    val = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]

    metrics: dict[str, Any] = {
        "val/acc": val["val/acc"],
        "val/loss": val["val/loss"],
        "test/acc": test["test/acc"],
        "test/loss": test["test/loss"],
        "best_ckpt": best,
        "epochs": trainer.current_epoch,
        "train_time_s": round(train_time, 3),
        "parameters": sum(p.numel() for p in module.parameters()),
    } | (extra_metrics or {})
    metrics |= {key: value for key, value in (val | test).items() if key not in metrics}  # callbacks' (val/temperature, test/ece)
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        record_outcome(trainer, output_dir, metrics)
        log.info(
            "val/acc %.4f  val/loss %.4f  test/acc %.4f  test/loss %.4f  (%d epochs, %.1f s training)",
            metrics["val/acc"], metrics["val/loss"], metrics["test/acc"], metrics["test/loss"],
            metrics["epochs"], train_time,
        )
        if "val/temperature" in metrics:
            log.info("temperature %.3f (fitted on validation): test/ece %.4f -> %.4f", metrics["val/temperature"],
                     metrics["test/ece"], metrics["test/ece_scaled"])
        log.info("run dir: %s", output_dir)
    return monitored_value(checkpoint, metrics | val)


def monitored_value(checkpoint: Any, metrics: dict[str, Any]) -> float:
    """What a sweeper optimizes: the best checkpoint's monitored metric, never another number in its place."""
    if checkpoint is None or not checkpoint.monitor:
        return float(metrics["val/acc"])
    if checkpoint.monitor in metrics:
        return float(metrics[checkpoint.monitor])
    if checkpoint.best_model_score is not None:
        return float(checkpoint.best_model_score)
    logged = ", ".join(sorted(key for key in metrics if "/" in key))
    raise UserError(f"callbacks.model_checkpoint.monitor={checkpoint.monitor} has no value at the end of the run, so "
                    f"there is nothing to optimize; monitor a metric the run logs ({logged})")
