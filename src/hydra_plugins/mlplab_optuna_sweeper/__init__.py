"""mlplab's Hydra sweeper for Optuna >= 4: ``hydra/sweeper=mlplab_optuna`` (conf/hparams_search/mlp_optuna.yaml).

Hydra finds it because ``hydra_plugins`` is a namespace package: Hydra imports every module under it at every
start, eval.py and predict.py included. So this package holds only the plugin class and the registration of its
configs; the search (``mlplab.search.optuna_sweeper``, with Optuna) is imported when a sweep is set up.
"""
