"""Optuna studies kept in storage, shared by the search (the sweeper) and its jobs (the pruning callback).

A study lives in storage so that every process sees the same trials: the sweeper, each job reporting its metric
and asking whether to stop, a second command on the same study, the one resuming a killed search, and
``optuna-dashboard <storage>``. The storage is named by one string, as optuna-dashboard names it:

- an RDB URL (``sqlite:///optuna.db``, ``postgresql://...``): Optuna's RDBStorage;
- anything else is a file path for Optuna's JournalStorage (an append-only log, safe for processes on one
  machine or on a shared filesystem, with no database to install).

Optuna is imported here, and only when a study is opened: a run without a search never loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import instantiate

from mlplab.errors import ConfigError
from mlplab.search.optuna_configs import PRUNERS

if TYPE_CHECKING:
    import optuna


def is_rdb_url(storage: str) -> bool:
    return "://" in storage


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """The storage a string names: an RDB URL, else a journal file (its folder is created). One that cannot be
    opened (no driver for the URL, no such database, a folder that cannot be written) is a ConfigError."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        if is_rdb_url(storage):
            return optuna.storages.RDBStorage(storage)
        path = Path(storage).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    except (ImportError, OSError, ValueError, SQLAlchemyError) as err:
        reason = " ".join(str(err).split("(Background on this error")[0].split())
        raise ConfigError(f"hydra.sweeper.storage={storage} cannot be opened ({type(err).__name__}: {reason}); use a "
                          "journal file in a folder you can write, or an RDB URL whose database and driver are "
                          "there (sqlite:///optuna.db)") from err


def build_pruner(spec: Any) -> optuna.pruners.BasePruner:
    """A pruner from its name (``median``, with its config's defaults), from None (no pruning), or as Hydra built it."""
    import optuna

    if spec is None:
        spec = "none"
    if isinstance(spec, str):
        if spec not in PRUNERS:
            raise ConfigError(f"hydra.sweeper.pruner={spec} is not a pruner; choose one of {', '.join(PRUNERS)}")
        return instantiate(PRUNERS[spec])
    if not isinstance(spec, optuna.pruners.BasePruner):
        raise ConfigError(f"hydra.sweeper.pruner must name a pruner ({', '.join(PRUNERS)}), not {spec!r}")
    return spec


def trial_by_number(study: optuna.Study, storage: optuna.storages.BaseStorage, number: int) -> optuna.Trial:
    """The running trial ``number`` of ``study``, to report to from another process than the one that asked for it.

    Optuna hands out ``Trial`` objects from ``study.ask()`` only; a job launched in another process (joblib,
    submitit) knows its trial by number. The storage's public lookups give the trial's id, and ``Trial(study,
    trial_id)`` is the documented constructor behind ``ask``. tests/test_search.py checks this still works.
    """
    import optuna

    study_id = storage.get_study_id_from_name(study.study_name)
    return optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))
