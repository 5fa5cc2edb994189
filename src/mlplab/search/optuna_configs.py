"""The sweeper's configs, registered in Hydra's ConfigStore: ``hydra/sweeper=mlplab_optuna`` with its
``hydra/sweeper/sampler`` (tpe, random, gp, cmaes, qmc, nsgaii) and ``hydra/sweeper/pruner`` (none, median, hyperband, successive_halving).

The keys are those of Hydra's own Optuna sweeper (hydra-optuna-sweeper, which needs optuna < 3): sampler,
direction, study_name, storage, n_trials, n_jobs, params, and its sampler group, so that a search config
switches between the two with its ``override /hydra/sweeper: ...`` line. Added here: pruner, trial (set per
job), importance_min_trials, objectives (several directions: a multi-objective
search), replicates.
"""


from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class TPESamplerConf:
    """Tree-structured Parzen estimators: Optuna's default, at home with categorical choices."""

    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    n_startup_trials: int = 5       # random trials before TPE models the results (Optuna's 10: half of a 20-trial search)
    n_ei_candidates: int = 24
    multivariate: bool | None = None
    constant_liar: bool = True      # trials still running count as bad guesses: parallel workers spread out


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class GPSamplerConf:
    """Bayesian optimization with a Gaussian process: the most from few trials; each suggestion costs more."""

    _target_: str = "optuna.samplers.GPSampler"
    seed: int | None = None
    n_startup_trials: int = 5
    deterministic_objective: bool = False   # true only if a trial's value has no noise (not so with a seeded run)


@dataclass
class CmaEsSamplerConf:
    """CMA-ES over the numeric keys; categorical ones (hidden_dims) are sampled at random."""

    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: int | None = None
    n_startup_trials: int = 1
    sigma0: float | None = None
    warn_independent_sampling: bool = False  # else a warning per trial for every categorical key


@dataclass
class QMCSamplerConf:
    """Quasi-random points (Sobol or Halton): an even cover of the space, no model."""

    _target_: str = "optuna.samplers.QMCSampler"
    seed: int | None = None
    qmc_type: str = "sobol"
    scramble: bool = False


@dataclass
class NSGAIISamplerConf:
    """A genetic algorithm; generations of population_size trials."""

    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: int | None = None
    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


SAMPLERS = {"tpe": TPESamplerConf, "random": RandomSamplerConf, "gp": GPSamplerConf, "cmaes": CmaEsSamplerConf,
            "qmc": QMCSamplerConf, "nsgaii": NSGAIISamplerConf}


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConf:
    """Stop a trial whose metric at step n is worse than the median of earlier trials at step n."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 3       # trials that finish before any is pruned (Optuna's 5: docs/benchmarks.md)
    n_warmup_steps: int = 0         # epochs every trial runs before it can be pruned
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class HyperbandPrunerConf:
    """Successive halving in several brackets of different aggressiveness; steps are epochs."""

    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1           # epochs before the first cut
    max_resource: Any = "auto"      # epochs of a full trial; auto: those of the first trial that completes
    reduction_factor: int = 3       # 1 in reduction_factor trials survive each cut


@dataclass
class SuccessiveHalvingPrunerConf:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0


# hydra/sweeper/pruner=<name> and the short form hydra.sweeper.pruner=<name> build these, with the same defaults
PRUNERS = {"none": NopPrunerConf, "median": MedianPrunerConf, "hyperband": HyperbandPrunerConf,
           "successive_halving": SuccessiveHalvingPrunerConf}


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.mlplab_optuna_sweeper.sweeper.OptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": "none"}])
    sampler: Any = None
    pruner: Any = None              # a pruner config (hydra/sweeper/pruner=...) or its name (hydra.sweeper.pruner=median)
    direction: Any = "minimize"     # the objective is what the task function returns; a list: one per objective
    objectives: Any = None          # null: what the task returns; a list: metrics.json names (val/acc, train_time_s, ...)
    replicates: str | None = None   # 'seed=0,1,2' or 'data.fold=range(5)': each trial runs once per value, scored on the mean
    study_name: str | None = None
    storage: str | None = None   # RDB URL or journal file path; null: <sweep dir>/optuna.journal
    n_trials: int = 20              # trials in the study, counting those earlier commands finished
    n_jobs: int = 1                 # trials launched together (run in parallel by a parallel launcher)
    params: dict[str, Any] | None = None   # the search space: key -> interval / tag(log, ...) / choice / range
    importance_min_trials: int = 8  # completed trials before the summary gives parameter importances
    trial: int | None = None     # set by the sweeper on each job: the trial the job reports to


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="mlplab_optuna", node=OptunaSweeperConf, provider="mlplab")
for name, node in SAMPLERS.items():
    store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="mlplab")
for name, node in PRUNERS.items():
    store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="mlplab")
