"""mlplab's Hydra sweeper for Optuna >= 4 (``hydra/sweeper=mlplab_optuna``). Hydra imports every module under the
``hydra_plugins`` namespace at every start, eval.py and predict.py included: this package stays light."""
