"""What a checkpoint holds beyond Lightning's defaults, and how it reaches the disk.

``RandomState``: Lightning restores weights, optimizer, schedule, loop counters and callback states, but
not the random number generators. The batch order is already a function of ``seed`` and the epoch
(``DistributedSampler.set_epoch``); dropout masks and augmentation draws come from the global generators, so a
resumed run only matches the run it continues when their states travel in the checkpoint too.
Stored as tensors and plain values: checkpoints stay loadable with ``torch.load(weights_only=True)``.

``AtomicCheckpointIO``: Lightning writes through an fsspec transaction whose temporary file lives in the
system temp folder; committing it is ``shutil.move``, a copy into the target (not a rename) whenever that folder
is on another filesystem (tmpfs, node-local /tmp next to a network home), and nothing is fsynced. A crash or
a second Ctrl-C during that copy leaves a truncated ``last.ckpt`` in place of the good one. Here the
checkpoint goes to a temporary file next to its target, is fsynced, and replaces the target by ``os.replace``:
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
