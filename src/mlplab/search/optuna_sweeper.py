"""An Optuna search as a Hydra sweeper: each trial is one job of the multirun, launched by Hydra's launcher.

The study lives in storage (``mlplab.search.studies``; by default a journal file in the sweep dir), so that:

- jobs in other processes (joblib, submitit) report their metric to their trial and ask the pruner whether to
  stop (``mlplab.search.pruning.OptunaPruning``); the sweeper tells the trial's end: complete, pruned, or failed;
- a command started again on the same storage and study continues it: ``n_trials`` counts the trials the study
  already finished, and a trial a killed command left running is failed and asked again with the same values;
- two commands on the same study share the work: the storage hands each trial to one of them.

Each job runs in ``<sweep dir>/<trial number>``, so commands that share a study and a sweep dir never write
into the same job dir. At the end, the sweep dir holds ``best_overrides.txt`` and ``best.yaml`` (the best trial as
a command to run), ``optimization_results.yaml`` (as Hydra's Optuna sweeper writes it) and ``study.md``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import socket
import statistics
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

try:
    import optuna
    from optuna.trial import TrialState
except ImportError:  # the `sweep` extra is not installed; Hydra still imports this module whenever it starts
    optuna = None

from mlplab.composition import parsed_override, swept_values, unknown_key
from mlplab.errors import ConfigError, exit_with
from mlplab.rules import problems
from mlplab.run_dirs import entry_point
from mlplab.search.studies import build_pruner, open_storage, trial_by_number
from mlplab.search.sweeps import JOB_RECORD, STUDY_REPORT

log = logging.getLogger(__name__)

OWNER = "sweeper"            # trial user attr: host:pid of the command that asked for the trial
NOT_COUNTED = "not_counted"  # trial user attr: why a failed trial does not count toward n_trials
JOURNAL = "optuna.journal"   # the study's storage when hydra.sweeper.storage is null
SYNTAX = "interval(low, high), tag(log, interval(low, high)), tag(int, interval(low, high)), choice(a, b, ...) or range(start, stop[, step])"
ABSENT = object()


def quoted(text: str) -> str:
    """A string as a quoted Hydra override value (paths and URLs hold characters the grammar reserves)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def shown_list(items: list[str]) -> str:
    """Directions as typed: ``maximize``, or ``[maximize,minimize]``."""
    return items[0] if len(items) == 1 else "[" + ",".join(items) + "]"


def objective_text(name: str, value: float) -> str:
    """An objective's value as the tables show it: counts whole, seconds to a tenth, metrics to 4 places."""
    return f"{value:.0f}" if name == "parameters" else f"{value:.1f}" if name.endswith("_s") else f"{value:.4f}"


def override_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)


class SearchSpace:
    """Optuna distributions for the swept keys, and how each sampled value is written back as an override."""

    def __init__(self) -> None:
        self.distributions: dict[str, Any] = {}
        self.choice_texts: dict[str, dict[Any, str]] = {}  # key -> {choice: as typed}, for primitive choices

    def add(self, override: Override, config: DictConfig) -> None:
        d = optuna.distributions
        key, sweep = override.get_key_element(), override.value()
        try:
            if isinstance(sweep, IntervalSweep):
                log_scale = "log" in sweep.tags
                if "int" in sweep.tags:
                    dist = d.IntDistribution(int(sweep.start), int(sweep.end), log=log_scale)
                else:
                    dist = d.FloatDistribution(sweep.start, sweep.end, log=log_scale)
                candidates = [dist.low, dist.high]
            elif isinstance(sweep, RangeSweep):
                values = list(override.sweep_iterator())
                if not values:
                    raise ValueError("the range is empty")
                low, high, step = min(values), max(values), abs(sweep.step)
                is_int = all(isinstance(v, int) for v in (*values, step))
                dist = d.IntDistribution(low, high, step=step) if is_int else d.FloatDistribution(low, high, step=step)
                candidates = [low, high]
            elif isinstance(sweep, ChoiceSweep):
                values, texts = list(override.sweep_iterator()), list(override.sweep_string_iterator())
                if all(v is None or isinstance(v, bool | int | float | str) for v in values):
                    dist, candidates = d.CategoricalDistribution(values), values
                    self.choice_texts[key] = dict(zip(values, texts, strict=True))
                else:  # lists and dicts (hidden_dims): Optuna keeps the choice as typed
                    dist, candidates = d.CategoricalDistribution(texts), values
            else:
                raise ValueError(f"{type(sweep).__name__} is not a search space")
        except ValueError as err:
            raise ConfigError(f"search space {override.input_line}: {err}; allowed: {SYNTAX}") from err
        self.check_values(override, candidates, config)
        self.distributions[key] = dist

    @staticmethod
    def check_values(override: Override, candidates: list[Any], config: DictConfig) -> None:
        """Every choice, and both ends of a range, must be a value the config accepts (mlplab.rules)."""
        name = override.get_key_element().lstrip("+~")
        if OmegaConf.select(config, name, default=ABSENT) is ABSENT and not override.is_add():
            raise ConfigError(f"search space {override.input_line}: "
                              f"{unknown_key(OmegaConf.to_container(config, resolve=False), override)}")
        if isinstance(OmegaConf.select(config, name, default=None), DictConfig):
            return  # a config group's options: Hydra checks the names
        for value in candidates:
            found = problems({name: value})
            if found:
                raise ConfigError(f"search space {override.input_line}: {found[0]}")

    def overrides(self, params: dict[str, Any]) -> list[str]:
        return [f"{key}={self.choice_texts.get(key, {}).get(value, override_value(value))}" for key, value in params.items()]


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def abandoned(trial: Any) -> bool:
    """A running trial whose command was killed: asked on this host by a process that is gone."""
    host, _, pid = trial.user_attrs.get(OWNER, "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's: its command may be alive (RDB heartbeats are Optuna's tool for that)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class OptunaSearch(Sweeper):
    """The search behind ``hydra/sweeper=mlplab_optuna``: trials sampled by Optuna, run as Hydra jobs, pruned by their own reports."""

    def __init__(self, sampler: Any, pruner: Any, direction: str | list[str], study_name: str | None, storage: str | None,
                 n_trials: int, n_jobs: int, params: DictConfig | None, importance_min_trials: int = 8,
                 trial: int | None = None, objectives: list[str] | None = None, replicates: str | None = None) -> None:
        self.directions = [direction] if isinstance(direction, str) else list(direction)
        self.objectives = list(objectives) if objectives else None  # None: the value the task returns
        self.replicates = replicates
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs, self.params = n_trials, n_jobs, params or {}
        self.pruner, self.importance_min_trials = pruner, importance_min_trials
        self.job_idx = 0
        self.lock = threading.Lock()  # trials are asked, launched and told from worker threads (n_jobs > 1)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(config.hydra.sweep.dir)

    # --- before any trial: the search space and the settings, each refused in one line -------------------

    def search_space(self, arguments: list[str]) -> tuple[SearchSpace, list[str]]:
        """The swept keys of ``params`` and of the command line (which wins), and the overrides every job shares."""
        entries: dict[str, Override] = {}
        for key, value in self.params.items():
            text = f"{key}={value}"
            try:
                entries[key] = parsed_override(text)
            except Exception as err:
                raise ConfigError(f"search space {text}: {' '.join(str(err).split())}; allowed: {SYNTAX}") from err
        fixed = []
        for override in map(parsed_override, arguments):
            key = override.get_key_element()
            if override.is_sweep_override():
                entries[key] = override
            else:
                entries.pop(key, None)
                fixed.append(override.input_line)
        space = SearchSpace()
        for override in entries.values():
            if override.is_sweep_override():
                space.add(override, self.config)
            else:
                fixed.append(override.input_line)
        return space, fixed

    def open_study(self) -> Any:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial from Optuna repeats Hydra's own
        self.storage_url = self.storage or str(self.sweep_dir / JOURNAL)
        self.storage_handle = open_storage(self.storage_url)
        name = self.study_name or "mlplab"
        existing = {s.study_name: s for s in optuna.get_all_study_summaries(self.storage_handle, include_best_trial=False)}
        sampler_cfg = self.config.hydra.sweeper.sampler
        seed = sampler_cfg.get("seed")
        if seed is not None and name in existing:
            seed += existing[name].n_trials  # a command joining or resuming a study samples values of its own
        try:
            sampler = instantiate(sampler_cfg, **({"seed": seed} if "seed" in sampler_cfg else {}))
        except Exception as err:  # a sampler's own package missing (gp, qmc: scipy; cmaes: cmaes), a bad argument
            reason = " ".join(str(err.__cause__ or err).split())
            raise ConfigError(f"hydra.sweeper.sampler ({sampler_cfg._target_}) cannot be built: {reason}; "
                              "pip install -e '.[sweep]' installs every sampler's packages") from err
        study = optuna.create_study(study_name=name, storage=self.storage_handle, sampler=sampler,
                                    pruner=build_pruner(self.pruner), directions=self.directions, load_if_exists=True)
        found = [d.name.lower() for d in study.directions]
        if found != self.directions:
            raise ConfigError(f"hydra.sweeper.direction={shown_list(self.directions)} but study {name} in {self.storage_url} "
                              f"has direction {shown_list(found)}; use the study's direction or another study_name")
        return study

    def replicate_overrides(self) -> list[str]:
        """``hydra.sweeper.replicates='seed=0,1,2'``: one override per run of each trial (``seed=0``, ...); [] for one run."""
        if not self.replicates:
            return []
        try:
            override = parsed_override(self.replicates)
            values = swept_values(override)
        except Exception as err:
            raise ConfigError(f"hydra.sweeper.replicates={self.replicates}: {' '.join(str(err).split())}; allowed: a key "
                              "and its values as a sweep, e.g. 'seed=0,1,2' or 'data.fold=range(5)'") from err
        key = override.get_key_element()
        if len(values) < 2:
            raise ConfigError(f"hydra.sweeper.replicates={self.replicates} must name at least two values of {key} "
                              "(e.g. 'seed=0,1,2')")
        SearchSpace.check_values(override, list(override.sweep_iterator()) if override.is_sweep_override() else values,
                                 self.config)
        return [f"{key}={value}" for value in values]

    # --- the search ----------------------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> None:
        if optuna is None:
            exit_with(ConfigError("hydra/sweeper=mlplab_optuna needs Optuna: pip install -e '.[sweep]'"))
        try:
            space, fixed = self.search_space(arguments)
            self.runs = self.replicate_overrides() or [None]
            study = self.open_study()
        except ConfigError as err:
            exit_with(err)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Optuna study %s in %s: %d of %d trials done, %s", study.study_name, self.storage_url,
                 self.counted(study), self.n_trials, ", ".join(f"{k}: {v}" for k, v in space.distributions.items()))
        # Hydra's basic launcher runs a job in this process: one at a time. A launcher that runs jobs elsewhere
        # (joblib, submitit) gets n_jobs trials at once, and a trial that ends (pruned, too) frees its slot at once.
        in_process = str(self.config.hydra.launcher.get("_target_", "")).endswith("BasicLauncher")
        workers = 1 if in_process else self.n_jobs
        running: dict[Future, Any] = {}
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trial") as pool:
            try:
                while True:
                    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                        if abandoned(trial):  # a command sharing the study was killed: its trial is run again
                            self.give_back(study, trial.number, trial.params, "left running by a killed command")
                    while len(running) < workers and self.counted(study) < self.n_trials:
                        trial = self.ask(study, space)
                        if in_process:  # Lightning's signal handling wants the main thread
                            self.run_trial(study, trial, fixed, space)
                        else:
                            running[pool.submit(self.run_trial, study, trial, fixed, space)] = trial
                    if not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        running.pop(future)
                        future.result()  # HYDRA_FULL_ERROR=1: a job's failure ends the search here
            except BaseException:  # Ctrl-C, a launcher's failure: running trials go back to the study, to be asked again
                for trial in running.values():
                    self.give_back(study, trial.number, trial.params, "interrupted")
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        for trial in study.get_trials(deepcopy=False):  # another command sharing the study may have given it back
            if NOT_COUNTED in trial.user_attrs:
                self.mark_retried(trial.number, trial.user_attrs[NOT_COUNTED])
        self.write_results(study, space, fixed)

    def run_trial(self, study: Any, trial: Any, fixed: list[str], space: SearchSpace) -> None:
        """Launch a trial's job (one per replicate), wait for it, tell the study how it ended."""
        batch = [fixed + space.overrides(trial.params) + ([run] if run else []) + self.job_settings(study, trial.number, i)
                 for i, run in enumerate(self.runs)]
        try:
            with self.lock:  # one job number per job, and Hydra's checks, in order
                self.validate_batch_is_legal(batch)
                first, self.job_idx = self.job_idx, self.job_idx + len(batch)
            returns = self.launcher.launch(batch, initial_job_idx=first)
        except BaseException:  # a launcher's failure: the trial goes back to the study, to be asked again
            self.give_back(study, trial.number, trial.params, "interrupted")
            raise
        self.tell(study, trial, returns)

    def ask(self, study: Any, space: SearchSpace) -> Any:
        """A new trial, owned by this command, whose values no other trial of the study has.

        Two commands that open a study at the same moment seed their samplers alike and would ask for the same
        values: such a trial is failed out of the count and the sampler reseeded (a few tries, then accepted).
        """
        with self.lock:
            return self.ask_unique(study, space)

    def ask_unique(self, study: Any, space: SearchSpace) -> Any:
        for attempt in range(5):
            trial = study.ask(space.distributions)
            trial.set_user_attr(OWNER, owner())
            twin = next((t.number for t in study.get_trials(deepcopy=False) if t.number != trial.number
                         and t.params == trial.params and NOT_COUNTED not in t.user_attrs), None)
            if twin is None or attempt == 4:
                return trial
            trial.set_user_attr(NOT_COUNTED, f"the values of trial {twin}")
            study.tell(trial, state=TrialState.FAIL)
            study.sampler.reseed_rng()

    def job_dir(self, number: int, replicate: int = 0) -> str:
        """A trial's job dir in the sweep dir: its number, and with replicates one subdir per run."""
        return str(number) if self.runs == [None] else f"{number}/{replicate}"

    def job_settings(self, study: Any, number: int, replicate: int = 0) -> list[str]:
        """Per job: its trial, the study it reports to (mlp_optuna.yaml's optuna_pruning callback), its dir.
        Runs of a trial with replicates report nothing: the trial is scored on their mean at the end."""
        trial = "null" if self.runs != [None] else number
        return [f"hydra.sweeper.trial={trial}", f"hydra.sweeper.storage={quoted(self.storage_url)}",
                f"hydra.sweeper.study_name={quoted(study.study_name)}", f"hydra.sweep.subdir={self.job_dir(number, replicate)}"]

    @staticmethod
    def counted(study: Any) -> int:
        """Trials toward n_trials: finished (complete, pruned, failed) or running; not those given back."""
        return sum(t.state != TrialState.WAITING and NOT_COUNTED not in t.user_attrs for t in study.get_trials(deepcopy=False))

    def give_back(self, study: Any, number: int, params: dict[str, Any], reason: str) -> None:
        """Fail a trial that did not run to its end, out of the count, and queue its values to be asked again.

        Two commands resuming one study find the same abandoned trial: the storage lets one of them fail it (a
        finished trial cannot be updated), and only that one queues it again."""
        try:
            trial_by_number(study, self.storage_handle, number).set_user_attr(NOT_COUNTED, reason)
            study.tell(number, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            return
        study.enqueue_trial(params, user_attrs={"retry_of": number})
        log.warning("trial %d %s: queued to run again", number, reason)
        self.mark_retried(number, reason)

    def mark_retried(self, number: int, reason: str) -> None:
        """A job dir of this sweep whose trial was given back: the summary shows it, not as a failure."""
        job_dir = self.sweep_dir / str(number)
        if job_dir.is_dir() and not (job_dir / JOB_RECORD).exists():
            record = {"status": "retried", "error": f"{reason}; its values are queued to run again"}
            (job_dir / JOB_RECORD).write_text(json.dumps(record, indent=2) + "\n")

    def objective_values(self, number: int, replicate: int, job: JobReturn) -> list[float]:
        """A finished job's objectives: what the task returned, or the named metrics of its metrics.json."""
        if self.objectives is None:
            value = job.return_value if job.status == JobStatus.COMPLETED else math.nan
            return [math.nan if value is None else float(value)]
        try:
            metrics = json.loads((self.sweep_dir / self.job_dir(number, replicate) / "metrics.json").read_text())
            return [float(metrics[name]) for name in self.objectives]
        except (OSError, ValueError, KeyError, TypeError):  # failed or pruned: no metrics.json
            return [math.nan] * len(self.objectives)

    def tell(self, study: Any, trial: Any, jobs: list[JobReturn]) -> None:
        """Complete with the jobs' objectives (the mean over replicates); pruned if its job was pruned; else failed
        (NaN: a failure the job recorded)."""
        runs = [self.objective_values(trial.number, i, job) for i, job in enumerate(jobs)]
        values = [statistics.fmean(column) for column in zip(*runs, strict=True)]
        with self.lock:
            frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
            if all(math.isfinite(v) for v in values):
                study.tell(trial, values if len(values) > 1 else values[0], skip_if_finished=True)
            elif "pruned_at_epoch" in frozen.user_attrs:
                study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            else:
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        for job in jobs:
            if job.status == JobStatus.FAILED:
                job.return_value  # noqa: B018 -- re-raises the job's exception (HYDRA_FULL_ERROR=1: stop at the first failure)

    # --- the answer ----------------------------------------------------------------------------------------

    def pareto_front(self, study: Any, space: SearchSpace, fixed: list[str]) -> list[str]:
        """The trials no other trial beats on every objective (Optuna's ``best_trials``), best first by the first
        objective: a table, ``pareto.yaml`` (each as a command) and ``optimization_results.yaml`` as Hydra writes it."""
        front = sorted(study.best_trials, key=lambda t: t.values[0], reverse=self.directions[0] == "maximize")
        keys = list(space.distributions)
        solutions = []
        for trial in front:
            overrides = fixed + space.overrides(trial.params)
            solutions.append({"trial": trial.number, "values": dict(zip(self.objectives, trial.values, strict=True)),
                              "params": trial.params, "overrides": overrides,
                              "command": shlex.join(["python", entry_point(), *overrides])})
        (self.sweep_dir / "pareto.yaml").write_text(yaml.safe_dump(solutions, sort_keys=False))
        (self.sweep_dir / "optimization_results.yaml").write_text(yaml.safe_dump(
            {"name": "optuna", "solutions": [{"params": t.params, "values": list(t.values)} for t in front]}))
        header = ["trial", *(f"{name} ({d})" for name, d in zip(self.objectives, self.directions, strict=True)), *keys]
        rows = [[str(t.number), *(objective_text(name, v) for name, v in zip(self.objectives, t.values, strict=True)),
                 *(str(space.overrides({k: t.params[k]})[0].partition("=")[2]) for k in keys)] for t in front]
        return [f"Pareto front: {len(front)} trials that no other trial beats on every objective "
                f"(pareto.yaml holds each as a command):", "",
                "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                *("| " + " | ".join(row) + " |" for row in rows), ""]

    def write_results(self, study: Any, space: SearchSpace, fixed: list[str]) -> None:
        trials = study.get_trials(deepcopy=False)
        states = {state: [t for t in trials if t.state == state and NOT_COUNTED not in t.user_attrs] for state in TrialState}
        given_back = sum(NOT_COUNTED in t.user_attrs for t in trials)
        lines = [f"## Optuna study `{study.study_name}` in `{self.storage_url}`", "",
                 f"{len(trials) - given_back} trials: {len(states[TrialState.COMPLETE])} complete, "
                 f"{len(states[TrialState.PRUNED])} pruned, {len(states[TrialState.FAIL])} failed"
                 + (f" ({given_back} more left unfinished by an interrupted command, and run again)" if given_back else ""), ""]
        complete = states[TrialState.COMPLETE]
        if complete and len(self.directions) > 1:
            lines += self.pareto_front(study, space, fixed)
        elif complete:
            best = study.best_trial
            overrides = fixed + space.overrides(best.params)
            replicated = ["-m", *overrides, self.replicates] if self.replicates else overrides  # as its trial ran
            command = shlex.join(["python", entry_point(), *replicated])
            (self.sweep_dir / "best_overrides.txt").write_text("\n".join(overrides) + "\n")
            record = {"study_name": study.study_name, "storage": self.storage_url, "trial": best.number,
                      "value": best.value, "params": best.params, "overrides": overrides, "command": command}
            (self.sweep_dir / "best.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
            (self.sweep_dir / "optimization_results.yaml").write_text(
                yaml.safe_dump({"name": "optuna", "best_params": best.params, "best_value": best.value}))
            lines += [f"Best trial: {best.number}, value {best.value:.4f}. Run it again: `{command}` "
                      "(best.yaml, best_overrides.txt)", ""]
        if len(complete) >= self.importance_min_trials:
            names = self.objectives or ["value"]
            try:
                # Optuna's default evaluator (PED-ANOVA in Optuna 5) ranks what makes a target low: a maximized one is negated
                sign = [-1.0 if d == "maximize" else 1.0 for d in self.directions]
                importances = [optuna.importance.get_param_importances(study, target=lambda t, i=i: sign[i] * t.values[i])
                               for i in range(len(names))]
                lines += ["Parameter importances (Optuna's default evaluator over the complete trials):", "",
                          "| parameter | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
                          *(f"| {param} | " + " | ".join(f"{imp[param]:.3f}" for imp in importances) + " |"
                            for param in importances[0]), ""]
            except (ValueError, RuntimeError) as err:
                lines += [f"Parameter importances unavailable: {err}", ""]
        else:
            lines += [f"Parameter importances: after {self.importance_min_trials} complete trials "
                      "(hydra.sweeper.importance_min_trials)", ""]
        report = "\n".join(lines)
        (self.sweep_dir / STUDY_REPORT).write_text(report)  # the summary prints it (mlplab.search.sweeps.SweepSummary)
