"""Pruning a search's trials: each job reports its monitored metric to its Optuna trial after every validation
and stops at once when the study's pruner says the trial is hopeless.

Why not optuna-integration's ``PyTorchLightningPruningCallback``: it needs the ``Trial`` object in the job's
process (joblib and submitit run jobs elsewhere), and raises only at ``on_fit_end``, after which the pipeline
would still validate and test. This callback finds its trial by number in the study's storage
(``mlplab.search.studies``) and raises ``TrialPruned`` from the deciding validation (recorded by ``recorded_sweep_job``).

The sweeper hands each job its trial (``hydra.sweeper.trial``) and the study's storage; outside a search
(``trial: null``) the callback does nothing, so a trial's command line re-runs as a plain training run.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from mlplab.search.studies import build_pruner, open_storage, trial_by_number
from mlplab.search.sweeps import TrialPruned

log = logging.getLogger(__name__)


class OptunaPruning(L.Callback):
    """Report ``monitor`` to trial ``trial`` of ``study_name`` after every validation (step: epochs done); stop if pruned."""

    def __init__(self, monitor: str, storage: str | None, study_name: str | None, trial: int | None,
                 pruner: Any = None) -> None:
        self.monitor, self.storage, self.study_name, self.number = monitor, storage, study_name, trial
        self.pruner = pruner
        self._trial = None

    @property
    def active(self) -> bool:
        return self.number is not None and self.storage is not None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active or not trainer.is_global_zero:
            return
        import optuna

        storage = open_storage(self.storage)
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=build_pruner(self.pruner))
        if len(study.directions) > 1:
            return  # Optuna takes no intermediate values from a multi-objective trial (and cannot prune it)
        self._trial = trial_by_number(study, storage, int(self.number))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking  # not the final validate()
        if not self.active or not fitting or self.monitor not in trainer.callback_metrics:
            return
        value, epoch = float(trainer.callback_metrics[self.monitor]), trainer.current_epoch + 1
        pruned = False
        if self._trial is not None:  # rank 0 talks to the study; under DDP every rank stops with it
            self._trial.report(value, step=epoch)
            pruned = self._trial.should_prune()
            if pruned:
                self._trial.set_user_attr("pruned_at_epoch", epoch)
        if trainer.strategy.broadcast(pruned, src=0):
            log.info("trial %d pruned at epoch %d (%s %.4f)", self.number, epoch, self.monitor, value)
            raise TrialPruned(epoch, self.monitor, value)
