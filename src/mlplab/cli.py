"""What every entry point (train.py, eval.py, ...) does around its task. It imports no torch or Lightning: a typo,
``--help`` and ``--cfg`` are answered before they load; the task (``"module:function"``) is imported after validation."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mlplab.composition import refuse_composition
from mlplab.config import validate, validate_arguments
from mlplab.errors import exit_with, hydra_errors_raised, reported_as_one_line, user_error_in, wants_traceback
from mlplab.run_record import recorded_run
from mlplab.search.sweeps import recorded_sweep_job


def run(task: str, config_name: str, sweep_objective: bool = False) -> None:
    """``python <script>.py <overrides>``: ``task`` on ``conf/<config_name>`` (beside the script), composed once by
    Hydra; what Hydra refuses (``optimizer=adamx``, ``optimizer.lrr=1``), and bad input, as one line; ``run.json``
    around it. ``sweep_objective``: ``task`` returns what a sweeper optimizes (a job's share of cores, its row in the
    table). Configs set ``hydra.job.name`` (not cli)."""
    config_dir = Path(sys.argv[0]).resolve().parent / "conf"

    def task_function(cfg: DictConfig) -> Any:  # imported only now, once Hydra has composed and validated cfg
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # each job's own composition: swept groups, related keys
            validate(cfg)  # (a single run was checked by ValidateBeforeRun; a failed job is recorded, the sweep goes on)
        module, _, function = task.partition(":")
        run_task = getattr(importlib.import_module(module), function)
        validate_arguments(cfg)  # the targets import now, with the task's own modules
        return run_task(cfg)

    recorded = recorded_sweep_job(recorded_run(task_function)) if sweep_objective else recorded_run(task_function)
    try:
        with hydra_errors_raised():
            hydra.main(config_path=str(config_dir), config_name=config_name, version_base="1.3")(reported_as_one_line(recorded))()
    except Exception as error:
        if wants_traceback():
            raise
        if user_error := user_error_in(error):
            exit_with(user_error)
        refuse_composition(config_dir, config_name, sys.argv[1:], error)
