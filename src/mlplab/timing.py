"""Timing training: Lightning's ``ThroughputMonitor`` reports per step; users comparing recipes (and
``bench/speed.py``) want one number per epoch: seconds of training, without validation, and samples/s.
"""

from __future__ import annotations

import time

import lightning as L
import torch


class EpochTimer(L.Callback):
    """Logs ``time/epoch_s`` (training batches only, validation excluded) and ``time/samples_per_s`` per epoch."""

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self._start: float | None = None
        self._samples = 0

    def _now(self, trainer: L.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)  # once per epoch: GPU work is asynchronous
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._samples = self._now(trainer), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._samples += len(batch[1])

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(trainer, pl_module)  # epochs that end without validation

    def _stop(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is None or trainer.sanity_checking:
            return
        seconds = self._now(trainer) - self._start
        self._start = None
        self.epoch_seconds.append(seconds)
        samples_per_s = self._samples * trainer.world_size / seconds
        pl_module.log_dict({"time/epoch_s": seconds, "time/samples_per_s": samples_per_s}, on_epoch=True, sync_dist=True)
