"""The plugin Hydra scans for: a Sweeper that hands the search to ``mlplab.search.optuna_sweeper.OptunaSearch``."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

import mlplab.search.optuna_configs  # noqa: F401  registers hydra/sweeper=mlplab_optuna, its samplers and pruners


class OptunaSweeper(Sweeper):
    """``hydra/sweeper=mlplab_optuna``; Optuna is imported in ``setup``, only by a command that searches."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from mlplab.search.optuna_sweeper import OptunaSearch

        self.search = OptunaSearch(**self.settings)
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.search.sweep(arguments)
