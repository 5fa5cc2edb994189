"""When training goes wrong: a diverging loss, Ctrl-C, a preempted job. Stop cleanly, say what was kept.

``StopOnDivergence``: a learning rate too high for the recipe sends the loss to inf or NaN (SGD) or to
values hundreds of times worse than guessing (Adam, whose steps are bounded), and every later step is wasted
while ``last.ckpt`` would be overwritten with the ruined weights at the end of the epoch. Diverged means: the
loss is not finite, or above ``max_loss_vs_chance`` (100) times the loss of a uniform guess, ln(classes)
(2.3 for 10 classes; a trained model is far below it, and a model at 230 is confidently wrong everywhere).
On one CPU process the loss is read after every step (nothing to wait for): training stops at the first bad
step. On a GPU that read would make every step wait for the device, so each step records the first diverged loss
*on the device* (no wait; costs in docs/benchmarks.md), and the host reads the record every
``check_every_n_steps`` steps and before every validation and checkpoint (under DDP reduced over the ranks, so
all stop together): the stop comes within that many steps, never after saving, and names the bad step.

``ReportInterruption``: Lightning stops at the next batch boundary on SIGTERM (preemption) and at once on Ctrl-C,
writing nothing. The last finished epoch is in ``last.ckpt`` (written atomically after every validation, with
the random states: resuming reproduces the uninterrupted run exactly, which a mid-epoch checkpoint would not).
This callback says so in one line with the command that resumes, and makes SIGTERM exit 1 like Ctrl-C
(Lightning's 0 reads as success to a scheduler).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mlplab.checkpoint_reader import kept_checkpoint, last_checkpoint
from mlplab.errors import TrainingDiverged, UserError
from mlplab.rules import check
from mlplab.run_dirs import command_line_overrides, entry_point, resume_command

log = logging.getLogger(__name__)


class StopOnDivergence(L.Callback):
    """Ends training with a TrainingDiverged error naming the epoch and step of the first diverged loss."""

    def __init__(self, check_every_n_steps: int = 50, max_loss_vs_chance: float = 100.0) -> None:
        check({"callbacks.stop_on_divergence.check_every_n_steps": check_every_n_steps,
               "callbacks.stop_on_divergence.max_loss_vs_chance": max_loss_vs_chance})
        self.check_every_n_steps = check_every_n_steps
        self.max_loss_vs_chance = max_loss_vs_chance
        self._max_loss = math.inf
        self._bad_batch: torch.Tensor | None = None  # on the device: index of the first diverged loss, or -1
        self._bad_loss: torch.Tensor | None = None
        self._epoch_start_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        classes = (pl_module.hparams.get("net") or {}).get("num_classes", 0) if hasattr(pl_module, "hparams") else 0
        self._max_loss = self.max_loss_vs_chance * math.log(classes) if classes > 1 else math.inf

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._bad_batch = self._bad_loss = None
        self._epoch_start_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        if loss is None:
            return
        loss = loss.detach()
        if loss.device.type == "cpu" and trainer.world_size == 1:  # nothing to wait for: look now, stop at once
            if not float(loss) <= self._max_loss:
                self._stop(trainer, batch_idx, float(loss))
            return
        if self._bad_batch is None:
            self._bad_batch, self._bad_loss = torch.full_like(loss, -1.0, dtype=torch.float32), loss
        # Python scalars and device tensors only: nothing here waits for the device. NaN <= x is false.
        first = ~(loss <= self._max_loss) & (self._bad_batch < 0)
        self._bad_batch = torch.where(first, float(batch_idx), self._bad_batch)
        self._bad_loss = torch.where(first, loss, self._bad_loss)
        if (batch_idx + 1) % self.check_every_n_steps == 0:
            self._check(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: L.Trainer) -> None:
        if self._bad_batch is None:
            return
        bad_batch = int(trainer.strategy.reduce(self._bad_batch.clone(), reduce_op="max"))  # one rank diverged: all stop
        if bad_batch >= 0:
            self._stop(trainer, bad_batch, float(self._bad_loss))

    def _stop(self, trainer: L.Trainer, bad_batch: int, loss: float) -> None:
        why = f"{loss:.4g}, over {self._max_loss:.3g} (= {self.max_loss_vs_chance:g} x the loss of a uniform guess)" if math.isfinite(loss) else str(loss)
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        raise TrainingDiverged(
            f"training diverged: the loss was {why} at epoch {trainer.current_epoch}, batch {bad_batch} "
            f"(step {self._epoch_start_step + bad_batch}), learning rate now {lr:.3g}; stopped before saving it: "
            f"{kept_checkpoint(trainer)}. Lower optimizer.lr, or regularize (model.batch_norm=true)"
        )


class ReportInterruption(L.Callback):
    """On Ctrl-C or SIGTERM: one line saying where it stopped, what was kept and how to resume; exit status 1."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt | SIGTERMException):
            return
        if isinstance(exception, SIGTERMException):
            exception.code = 1  # re-raised by Lightning as SystemExit: the process exits with it
        if not trainer.is_global_zero:
            return
        signal_name = "SIGTERM" if isinstance(exception, SIGTERMException) else "Ctrl-C (SIGINT)"
        where = f"at epoch {trainer.current_epoch}, step {trainer.global_step}"
        last = last_checkpoint(trainer)
        resume = ""
        if last:
            resume = "; resume with: " + resume_command(entry_point(), command_line_overrides(), last, trainer.default_root_dir)
        log.warning("interrupted by %s %s: %s%s", signal_name, where, kept_checkpoint(trainer), resume)


class WorkerLost(UserError):
    """A DDP rank died or stopped answering, so the others cannot continue."""


def worker_processes(trainer: L.Trainer) -> list[Any]:
    """The ``subprocess.Popen`` of each DDP worker this process started (local rank i+1 at index i), or [].

    Private Lightning API, isolated here: ``_SubprocessScriptLauncher.procs`` is the only record of which
    process is which rank (tests/test_distributed.py fails loudly if it disappears)."""
    launcher = getattr(trainer.strategy, "launcher", None)
    return list(getattr(launcher, "procs", None) or [])


def process_state(pid: int) -> str:
    """``T`` (stopped), ``Z`` (dead), ``R``/``S`` (alive)... from /proc; '' where there is no /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def lost_workers(trainer: L.Trainer, error: BaseException, timeout_s: float | None = None) -> WorkerLost:
    """The error a failed collective becomes: which rank was lost and how, what was kept. Workers still there
    (stopped, or stuck elsewhere) are killed, so nothing is left running."""
    waited = f"{timeout_s:g} s (trainer.strategy.timeout.seconds)" if timeout_s else "the process group's timeout"
    # A killed peer's sockets close before the kernel reaps it, so the error can arrive first: give it a moment.
    procs, grace = worker_processes(trainer), time.monotonic() + 2
    while procs and time.monotonic() < grace and all(p.poll() is None and process_state(p.pid) != "T" for p in procs):
        time.sleep(0.05)
    lost = []
    for local_rank, proc in enumerate(procs, start=1):
        code, state = proc.poll(), process_state(proc.pid)
        if code is not None:
            how = f"ended by signal {-code}" if code < 0 else f"exited with status {code}"
        elif state == "T":
            how = f"stopped (not answering for {waited})"
        else:
            continue
        lost.append(f"rank {trainer.node_rank * trainer.num_devices + local_rank} (PID {proc.pid}) {how}")
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    if trainer.global_rank != 0:
        who = "rank 0, or another rank, ended or stopped answering"
    else:
        who = "; ".join(lost) or f"a rank on another node ended or stopped answering within {waited}"
    reason = " ".join(str(error).split())[:160]
    return WorkerLost(f"distributed training lost a worker: {who}; rank {trainer.global_rank} stopped at epoch "
                      f"{trainer.current_epoch}, step {trainer.global_step} ({type(error).__name__}: {reason}): "
                      f"{kept_checkpoint(trainer)}")


def is_collective_failure(error: BaseException) -> bool:
    """What torch.distributed raises when a peer is gone: DistBackendError, or gloo's RuntimeErrors about the
    connection or a timeout."""
    if isinstance(error, torch.distributed.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("gloo" in text or "NCCL" in text or "Timed out" in text)
