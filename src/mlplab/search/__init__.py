"""The search family: sweep records and summaries (``sweeps``), Optuna studies (``studies``), the pruning
callback (``pruning``), the sweeper's configs (``optuna_configs``) and the search itself (``optuna_sweeper``).
Importing the package imports none of them: Hydra loads ``sweeps`` at every start, Optuna only a search needs."""
