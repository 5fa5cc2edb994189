"""Replay the learning curves of unpruned searches through candidate pruners, to shortlist pruner settings
before paying for real searches (docs/benchmarks.md, "Optuna search with and without pruning").

    python bench/pruner_replay.py logs/bench/pruning/none [more unpruned sweep dirs]

Each trial of the sweep's study reports its recorded val/acc epoch by epoch to a fresh in-memory study with the
candidate pruner, in trial order; a pruned trial stops there. Time is estimated from each job's wall time
(a fixed 1.5 s per job plus an equal share per epoch). What this cannot show: in a real search the sampler
sees the pruned trials and proposes different ones, so a shortlisted setting still needs a real run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
from optuna.pruners import HyperbandPruner, MedianPruner, SuccessiveHalvingPruner
from optuna.trial import TrialState

from mlplab.search.studies import open_storage

JOB_FIXED_S = 1.5  # a job's cost besides its epochs (building it, reading the data): docs/benchmarks.md
CANDIDATES = {
    "median, 5 start-up trials (Optuna's default)": lambda: MedianPruner(n_startup_trials=5),
    "median, 3 start-up trials": lambda: MedianPruner(n_startup_trials=3),
    "median, 2 start-up trials": lambda: MedianPruner(n_startup_trials=2),
    "hyperband, min 1, factor 3": lambda: HyperbandPruner(min_resource=1, reduction_factor=3),
    "hyperband, min 1, max 10, factor 4": lambda: HyperbandPruner(min_resource=1, max_resource=10, reduction_factor=4),
    "successive halving, min 1, factor 3": lambda: SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
    "successive halving, min 1, factor 4": lambda: SuccessiveHalvingPruner(min_resource=1, reduction_factor=4),
    "successive halving, min 2, factor 3": lambda: SuccessiveHalvingPruner(min_resource=2, reduction_factor=3),
}


def recorded_trials(sweep_dir: Path) -> list[tuple[dict[int, float], float, float]]:
    """(val/acc by epoch, job wall time, final value) of each trial of an unpruned sweep, in trial order."""
    study = optuna.load_study(study_name="mlp", storage=open_storage(str(sweep_dir / "optuna.journal")))
    trials = []
    for trial in sorted(study.trials, key=lambda t: t.number):
        if trial.state != TrialState.COMPLETE:
            raise SystemExit(f"{sweep_dir}: trial {trial.number} is {trial.state.name}; replay needs an unpruned search")
        wall = json.loads((sweep_dir / str(trial.number) / "job.json").read_text())["wall_time_s"]
        trials.append((trial.intermediate_values, wall, trial.value))
    return trials


def replay(trials: list[tuple[dict[int, float], float, float]], pruner: optuna.pruners.BasePruner) -> tuple[int, float, float]:
    """Epochs trained, estimated share of the unpruned wall time, best completed value."""
    # a fixed name: Hyperband assigns trials to brackets by hashing it, so each call replays the same way
    study = optuna.create_study(study_name="replay", direction="maximize", pruner=pruner)
    epochs, seconds, best = 0, 0.0, float("-inf")
    for curve, wall, value in trials:
        per_epoch = (wall - JOB_FIXED_S) / len(curve)
        trial, pruned = study.ask(), False
        for step in sorted(curve):
            trial.report(curve[step], step)
            epochs, seconds = epochs + 1, seconds + per_epoch
            if trial.should_prune():
                pruned = True
                break
        seconds += JOB_FIXED_S
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, value)
            best = max(best, value)
    return epochs, seconds / sum(wall for _, wall, _ in trials), best


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for sweep in map(Path, sys.argv[1:]):
        trials = recorded_trials(sweep)
        unpruned = max(value for _, _, value in trials)
        print(f"\n{sweep}: {len(trials)} trials, best val/acc {unpruned:.4f}\n")
        print("| pruner | epochs trained | share of the wall time | best val/acc | vs unpruned (points) |")
        print("|---|---:|---:|---:|---:|")
        for name, make in CANDIDATES.items():
            epochs, share, best = replay(trials, make())
            print(f"| {name} | {epochs} | {share:.2f} | {best:.4f} | {100 * (best - unpruned):+.2f} |")
