"""What a checkpoint holds beyond Lightning's defaults, and how it reaches the disk.

``RandomState``: Lightning restores weights, optimizer, schedule, loop counters and callback states, not the
random generators; the batch order follows ``seed`` and the epoch, but dropout and augmentation draw from the
global generators, so a resumed run matches the run it continues only when their states travel in the checkpoint,
as tensors and plain values (``torch.load(weights_only=True)`` reads them; Lightning's private
``_collect_rng_states`` keeps numpy's state as an array, which weights_only refuses).

``AtomicCheckpointIO``: Lightning commits a checkpoint with ``shutil.move`` from the system temp folder: a copy
(not a rename) when that is another filesystem, unsynced, so a crash or a second Ctrl-C during it leaves a
truncated ``last.ckpt``. Here it goes to a temporary file beside its target, is fsynced and ``os.replace``-d:
readers see the old file or the new one, never a part.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mlplab.run_record import CHECKPOINT_KEY, running_record


class RandomState(L.Callback):
    """Saves the torch, CUDA, numpy and Python random states in every checkpoint; restores them on resume."""

    def state_dict(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        version, python_state, gauss_next = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                      "has_gauss": has_gauss, "cached_gaussian": cached_gaussian},
            "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        numpy_state = state["numpy"]
        np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                             numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
        python_state = state["python"]
        random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.<name>.tmp`` beside the target, fsync, then ``os.replace``; remote URLs go to Lightning."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        target = Path(str(path).removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        try:
            with temporary.open("wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)  # only still there when saving failed
        if os.name == "posix":  # make the rename itself survive a power cut
            directory = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)


class RunOrigin(L.Callback):
    """Puts the run's dir, commit, dirty flag and data hashes (fixed before fitting: read once) into every checkpoint."""

    origin: dict[str, Any] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (record := running_record(trainer.default_root_dir)) is not None:
            git_info = record.get("git") or {}
            self.origin = {key: record[key] for key in ("run_dir", "command", "start_time", "data_sha256")} | {
                "git_commit": git_info.get("commit"), "git_dirty": git_info.get("dirty")}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.origin is not None:
            checkpoint[CHECKPOINT_KEY] = self.origin
