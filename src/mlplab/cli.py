"""What every entry point (train.py, finetune.py, eval.py, predict.py, export.py, lr_find.py) does around its task.

Before Hydra starts: unknown group options and keys are refused in one line (``mlplab.config``). Then Hydra
composes ``conf/<config_name>.yaml`` with the command line, and the task runs with bad input reported as one
line (``mlplab.errors``), ``run.json`` written around it (``mlplab.run_record``) and, for tasks a sweeper can
optimize, the job's share of the cores and its outcome in the sweep's table (``mlplab.sweeps``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from mlplab.config import refuse_unknown_overrides
from mlplab.errors import reported_as_one_line
from mlplab.run_record import recorded_run
from mlplab.sweeps import recorded_sweep_job


def run(task: Callable[[DictConfig], Any], config_name: str, sweep_objective: bool = False) -> None:
    """``python <script>.py <overrides>``: ``task`` on ``conf/<config_name>.yaml`` beside the script.
    ``sweep_objective``: ``task`` returns the metric a sweeper optimizes (train, finetune).

    Hydra names the job after the file that calls ``hydra.main``; each config sets ``hydra.job.name`` to its
    task instead, so logs and the job name stay ``train.log``, ``train`` with ``hydra.main`` called here.
    """
    config_dir = Path(sys.argv[0]).resolve().parent / "conf"
    refuse_unknown_overrides(config_dir, config_name, sys.argv[1:])
    recorded = recorded_sweep_job(recorded_run(task)) if sweep_objective else recorded_run(task)
    hydra.main(config_path=str(config_dir), config_name=config_name, version_base="1.3")(reported_as_one_line(recorded))()
