"""The search family: sweep records (``sweeps``), Optuna studies, pruning, the sweeper's configs and search."""
