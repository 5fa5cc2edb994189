"""The plugin Hydra scans for; the search itself (``mlplab.search.optuna_sweeper``, with Optuna) is imported in
``setup``, so only a command that searches loads Optuna."""

from typing import Any

from hydra.plugins.sweeper import Sweeper

import mlplab.search.optuna_configs  # noqa: F401  registers hydra/sweeper=mlplab_optuna, its samplers and pruners


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def setup(self, **context: Any) -> None:
        from mlplab.search.optuna_sweeper import OptunaSearch

        self.search = OptunaSearch(**self.settings)
        self.search.setup(**context)

    def sweep(self, arguments: list[str]) -> Any:
        return self.search.sweep(arguments)
