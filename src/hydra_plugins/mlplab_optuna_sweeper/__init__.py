"""mlplab's Hydra sweeper for Optuna >= 4: ``hydra/sweeper=mlplab_optuna`` (conf/hparams_search/mlp_optuna.yaml).

Hydra finds it because ``hydra_plugins`` is a namespace package: Hydra imports every module under it at start.
``config`` registers the configs (light: no Optuna import); ``sweeper`` holds the search, imported when it runs.
"""
