"""Sweeps that end with an answer: every job recorded, failed jobs kept apart, a results table in the sweep dir.

Two pieces, each a mechanism Hydra provides:

``recorded_sweep_job`` wraps the task of train.py and finetune.py (``mlplab.cli.run``). In a multirun it writes
``job.json`` into the job's dir (status, the monitored metric, wall time, the one-line reason of a failure); a
job an Optuna pruner stopped (``TrialPruned``) is ``pruned``, not failed. Hydra's launchers catch a job's
exception, but the sweepers then read ``return_value``, which re-raises it and abandons the jobs still to run;
so the wrapper logs the failure (traceback in the job's log), records it and returns NaN, and the sweeper goes
on. ``HYDRA_FULL_ERROR=1`` re-raises instead, to stop at the first failure. The same command again in the same
sweep dir continues the sweep: a job whose ``job.json`` says it finished with these overrides is skipped (its
recorded value returned), one a kill interrupted resumes from its ``last.ckpt``, the others run.

``SweepSummary`` is a Hydra callback (``hydra.callbacks`` in conf/train.yaml): ``on_multirun_end`` reads every
job's overrides, ``job.json`` and ``metrics.json``, writes ``summary.csv`` and ``summary.md`` (plus
``summary_replicates.csv`` when jobs repeat a configuration over ``seed`` or ``data.fold``, and an optimizing sweeper's ``study.md``), prints the
table, and exits with status 1 when a job failed: a ``SystemExit``, since Hydra turns a callback's exception
into a warning.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from mlplab.choices import OBJECTIVES
from mlplab.config import available_cores
from mlplab.errors import ConfigError, one_line, user_error_in, wants_traceback
from mlplab.run_dirs import continue_sweep_command, entry_point
from mlplab.run_record import read_record

log = logging.getLogger(__name__)

JOB_RECORD = "job.json"
NOT_FAILED = ("ok", "pruned", "retried")  # statuses that leave the exit status 0
STUDY_REPORT = "study.md"  # an optimizing sweeper's report, appended to summary.md
REPLICATE_KEYS = ("seed", "data.fold")  # jobs differing only in these repeat one configuration
TIME_KEY = "train_time_s"  # metrics.json: seconds of fitting
METRICS = ("val/acc", "val/loss", "test/acc", "test/loss")


class TrialPruned(Exception):
    """A search's pruner stopped this job after ``epoch`` epochs, when ``monitor`` was ``value``."""

    def __init__(self, epoch: int, monitor: str, value: float) -> None:
        super().__init__(f"pruned at epoch {epoch} ({monitor} {value:.4f})")
        self.epoch, self.monitor, self.value = epoch, monitor, value


def monitored_metric(cfg: DictConfig) -> tuple[str, str]:
    """(name, "max" | "min") of the metric the checkpoint callback selects on: the metric a sweep ranks by."""
    checkpoint = (cfg.get("callbacks") or {}).get("model_checkpoint")
    if checkpoint is not None and checkpoint.get("monitor"):
        return checkpoint.monitor, checkpoint.get("mode", "min")
    return "val/acc", "max"


def job_threads(cfg: DictConfig, launcher: DictConfig | None) -> int | None:
    """CPU threads for this job: ``num_threads`` when set, else its share of the cores when jobs run side by side.

    Under the joblib launcher ``n_jobs`` jobs share the machine (-1: one per core), so each gets
    cores // n_jobs threads instead of torch's default of all of them; under submitit, ``cpus_per_task``.
    """
    if cfg.get("num_threads"):
        return int(cfg.num_threads)
    if launcher is None:
        return None
    if launcher.get("n_jobs") is not None:  # joblib
        cores, n_jobs = available_cores(), int(launcher.n_jobs)
        parallel = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
        return max(1, cores // parallel)
    if launcher.get("cpus_per_task"):  # submitit
        return int(launcher.cpus_per_task)
    return None


def check_direction(sweeper: DictConfig, monitor: str, mode: str) -> None:
    """An optimizing sweeper must push each objective the way it is better: the monitored metric the way the
    checkpoint callback ranks it, the others as ``mlplab.choices.OBJECTIVES`` says (time and size: minimize)."""
    direction = sweeper.get("direction")
    if direction is None:
        return  # the basic sweeper: no direction
    directions = [direction] if isinstance(direction, str) else list(direction)
    objectives = list(sweeper.get("objectives") or [monitor])
    for name, given in zip(objectives, directions, strict=False):
        expected = {"max": "maximize", "min": "minimize"}[mode] if name == monitor else OBJECTIVES.get(name)
        if expected is not None and given != expected:
            what = f"{monitor}, is best at its {mode} (callbacks.model_checkpoint.mode)" if name == monitor else f"{name}, is better {expected}d"
            shown_direction = given if len(directions) == 1 else "[" + ",".join(directions) + "]"
            raise ConfigError(f"hydra.sweeper.direction={shown_direction} but the objective, {what}; set "
                              f"hydra.sweeper.direction={expected}" + (f" for {name}" if len(directions) > 1 else ""))


def recorded_sweep_job(task: Callable[[DictConfig], float]) -> Callable[[DictConfig], float]:
    """Run ``task`` with the job's share of CPU threads; in a multirun, record its outcome and survive its failure."""

    @functools.wraps(task)
    def job(cfg: DictConfig) -> float:
        hydra_cfg = HydraConfig.get()
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        threads = job_threads(cfg, hydra_cfg.launcher if multirun else None)
        import torch  # in the job, after validation: Hydra loads this module at every start

        if threads:
            torch.set_num_threads(threads)
        if not multirun:
            return task(cfg)
        output_dir = Path(hydra_cfg.runtime.output_dir)
        overrides = list(hydra_cfg.overrides.task)
        earlier = finished_job(output_dir, overrides)
        if earlier is not None:
            log.info("job %s finished in an earlier command (%s: %s): skipped", hydra_cfg.job.num, JOB_RECORD, earlier["status"])
            return math.nan if earlier.get("value") is None or earlier["status"] != "ok" else float(earlier["value"])
        last = output_dir / "checkpoints" / "last.ckpt"
        if last.is_file() and not cfg.get("ckpt_path"):  # a kill interrupted this job: it continues where it stopped
            log.info("job %s continues from %s", hydra_cfg.job.num, last)
            with open_dict(cfg):
                cfg.ckpt_path = str(last)
        monitor, mode = monitored_metric(cfg)
        record: dict[str, Any] = {"status": "interrupted", "monitor": monitor, "mode": mode, "value": None,
                                  "error": None, "threads": torch.get_num_threads(), "overrides": overrides}
        start = time.perf_counter()
        try:
            value = float(task(cfg))
            record |= {"status": "ok", "value": value}
        except TrialPruned as pruned:  # the search stopped it on purpose: recorded, and the sweep goes on
            value = math.nan
            record |= {"status": "pruned", "value": pruned.value, "epoch": pruned.epoch}
            log.info("job %s", pruned)
        except Exception as err:  # any failure: the other jobs of the sweep still deserve to run
            value = math.nan
            record |= {"status": "failed", "error": one_line(err)}
            if user_error_in(err) is not None:
                log.error("error: %s", record["error"])
            else:
                log.exception("job failed; the sweep goes on")
            if wants_traceback():
                raise
        finally:
            record["wall_time_s"] = round(time.perf_counter() - start, 3)
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / JOB_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        return value

    return job


def finished_job(job_dir: Path, overrides: list[str]) -> dict[str, Any] | None:
    """The record of a job that already finished in ``job_dir`` (ok, or pruned by a search) with these overrides."""
    try:
        record = json.loads((job_dir / JOB_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("status") in ("ok", "pruned") and record.get("overrides") == overrides else None


@dataclass
class JobResult:
    """One job of a sweep as read back from its dir."""

    name: str  # the job's dir, relative to the sweep dir
    overrides: dict[str, str]
    status: str  # ok | pruned | retried (a search ran its trial again) | failed | interrupted (Ctrl-C, SIGTERM) | unfinished (no job.json: killed, or still running)
    error: str = ""
    value: float = math.nan  # the monitored metric
    metrics: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float | None = None
    trackers: dict[str, dict[str, Any]] = field(default_factory=dict)  # run.json: tracker name -> where its run is

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def tracker_runs(self) -> str:
        """``mlflow <run id> wandb <run id>``: each tracker's run of this job."""
        return " ".join(f"{name} {run.get('run_id', '')}" for name, run in self.trackers.items())


def read_job(job_dir: Path, sweep_dir: Path) -> tuple[JobResult, dict[str, Any]]:
    """A job's overrides (as Hydra saved them), its job.json record and, when it finished, its metrics.json."""
    overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
    pairs = dict(item.partition("=")[::2] for item in overrides)
    record_file, metrics_file = job_dir / JOB_RECORD, job_dir / "metrics.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() and record.get("status") == "ok" else {}
    if record.get("status") == "pruned":  # no best checkpoint tested: the last reported metric, and when
        metrics = {record["monitor"]: record["value"], "epochs": record["epoch"]}
    value = record.get("value")
    result = JobResult(
        name=job_dir.relative_to(sweep_dir).as_posix(),
        overrides={key.lstrip("+"): text for key, text in pairs.items()},
        status=record.get("status", "unfinished"),
        error=record.get("error") or ("" if record else f"no {JOB_RECORD}: killed, or still running"),
        value=math.nan if value is None else float(value),
        metrics=metrics,
        wall_time_s=record.get("wall_time_s"),
        trackers=read_record(job_dir).get("trackers") or {},
    )
    return result, record


def job_order(path: Path) -> tuple:
    """Job dirs in numeric order (2 before 10)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n-1) of the finite values; NaN where undefined."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


@dataclass
class ReplicateGroup:
    """One configuration's replicates (jobs that differ only in replicate keys): mean and sample std of each metric
    over the replicates that finished, and how it compares with the best configuration."""

    overrides: dict[str, str]  # without the replicate keys
    ok: int
    replicates: int
    stats: dict[str, tuple[float, float]]  # metric name -> (mean, std)
    values: dict[tuple, float]  # replicate (its replicate keys' values) -> the monitored metric, finished ones only
    test: str = ""  # against the best configuration: "paired t" | "Welch t" | "" (too few replicates, or the best)
    p_value: float = math.nan


def compare(best: ReplicateGroup, other: ReplicateGroup) -> tuple[str, float]:
    """Two-sided p-value of the difference in the monitored metric: a paired t-test over the replicates both ran
    (same seed, same fold: the pairing removes what the replicate itself contributes), else Welch's t-test."""
    from scipy import stats  # the `sweep` extra; only a sweep with replicates needs it

    shared = sorted(best.values.keys() & other.values.keys())
    if len(shared) >= 2 and len(shared) == len(best.values) == len(other.values):
        a, b = [best.values[k] for k in shared], [other.values[k] for k in shared]
        if any(x != y for x, y in zip(a, b, strict=True)):
            return "paired t", float(stats.ttest_rel(a, b).pvalue)
        return "paired t", 1.0
    if len(best.values) >= 2 and len(other.values) >= 2:
        return "Welch t", float(stats.ttest_ind(list(best.values.values()), list(other.values.values()), equal_var=False).pvalue)
    return "", math.nan


@dataclass
class Summary:
    """A sweep's jobs, best first by the monitored metric, and their configurations' means over replicates."""

    jobs: list[JobResult]
    monitor: str
    mode: str
    replicate_keys: Sequence[str] = REPLICATE_KEYS

    @property
    def failed(self) -> list[JobResult]:
        return [job for job in self.jobs if job.status not in NOT_FAILED]

    @property
    def pruned(self) -> list[JobResult]:
        return [job for job in self.jobs if job.status == "pruned"]

    @property
    def metric_names(self) -> list[str]:
        return [self.monitor] + [name for name in METRICS if name != self.monitor]

    @property
    def trackers(self) -> list[str]:
        """The trackers (mlflow, wandb) any job logged to, in order of appearance."""
        return list(dict.fromkeys(name for job in self.jobs for name in job.trackers))

    def override_keys(self) -> list[str]:
        return list(dict.fromkeys(key for job in self.jobs for key in job.overrides))

    def varying_keys(self) -> list[str]:
        """Override keys whose value is not the same in every job, in the order typed."""
        return [key for key in self.override_keys() if len({job.overrides.get(key) for job in self.jobs}) > 1]

    def common_overrides(self) -> list[str]:
        varying = self.varying_keys()
        return [f"{k}={v}" for k, v in (self.jobs[0].overrides.items() if self.jobs else []) if k not in varying]

    def rank(self, value: float) -> tuple:
        """Sort key: best value first, NaN last."""
        if math.isnan(value):
            return (1, 0.0)
        return (0, -value if self.mode == "max" else value)

    def swept_replicate_keys(self) -> list[str]:
        """The replicate keys (seed, data.fold) this sweep varies."""
        return [key for key in self.varying_keys() if key in self.replicate_keys]

    @functools.cached_property
    def replicates(self) -> list[ReplicateGroup]:
        """Jobs that differ only in replicate keys, grouped: one configuration each, best first by its mean, each
        compared with the best (p-value of the difference); computed once for the table and the CSV."""
        keys = self.swept_replicate_keys()
        if not keys:
            return []
        groups: dict[tuple, list[JobResult]] = {}
        for job in self.jobs:
            groups.setdefault(tuple((k, v) for k, v in job.overrides.items() if k not in keys), []).append(job)
        found = []
        for config, jobs in groups.items():
            ok = [job for job in jobs if job.ok]
            stats = {name: mean_std([job.metrics.get(name, math.nan) for job in ok]) for name in [*self.metric_names, TIME_KEY]}
            values = {tuple(job.overrides.get(k) for k in keys): job.value for job in ok}
            found.append(ReplicateGroup(dict(config), len(ok), len(jobs), stats, values))
        # a configuration that failed on some replicates ranks below every complete one
        found.sort(key=lambda group: (group.ok < group.replicates, self.rank(group.stats[self.monitor][0])))
        for other in found[1:]:
            other.test, other.p_value = compare(found[0], other)
        return found


def summarize(sweep_dir: Path, replicate_keys: Sequence[str] = REPLICATE_KEYS) -> Summary:
    """Read every job under ``sweep_dir``, ranked: ok jobs best first by the monitored metric, then the rest."""
    found = [read_job(f.parent.parent, sweep_dir) for f in sweep_dir.glob("**/.hydra/overrides.yaml")]
    found.sort(key=lambda pair: job_order(Path(pair[0].name)))
    records = [record for _, record in found if record.get("monitor")]
    monitor, mode = (records[0]["monitor"], records[0]["mode"]) if records else ("val/acc", "max")
    summary = Summary([job for job, _ in found], monitor, mode, tuple(replicate_keys))
    summary.jobs.sort(key=lambda job: (not job.ok, summary.rank(job.value)))
    return summary


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def mean_and_std(mean: float, std: float, digits: int = 4) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def describe(overrides: dict[str, str], keys: Sequence[str]) -> str:
    return " ".join(f"{key}={overrides[key]}" for key in keys if key in overrides) or "(no overrides)"


def job_status(job: JobResult, monitor: str) -> str:
    if job.status == "pruned":
        return f"pruned at epoch {job.metrics.get('epochs')} (last {monitor} {fmt(job.value)})"
    return "ok" if job.ok else f"{job.status}: {job.error}"


def render_markdown(summary: Summary) -> str:
    keys, names = summary.varying_keys(), summary.metric_names
    ok = [job for job in summary.jobs if job.ok]
    pruned = f"{len(summary.pruned)} pruned, " if summary.pruned else ""
    lines = [
        f"## Sweep results: {len(summary.jobs)} jobs, {len(ok)} ok, {pruned}{len(summary.failed)} failed "
        f"(best first by {summary.monitor}, {summary.mode})",
        "",
    ]
    if summary.common_overrides():
        lines += [f"Same in every job: `{' '.join(summary.common_overrides())}`", ""]
    rows = [
        [job.name, *(job.overrides.get(k, "") for k in keys), job_status(job, summary.monitor),
         *(job.metrics.get(name) for name in names), job.metrics.get("epochs"),
         "" if job.wall_time_s is None else f"{job.wall_time_s:.1f}", *([job.tracker_runs()] if summary.trackers else [])]
        for job in summary.jobs
    ]
    tracker_column = ["tracker run"] if summary.trackers else []
    lines += [markdown_table(["job", *keys, "status", *names, "epochs", "wall s", *tracker_column], rows), ""]
    if ok and not math.isnan(ok[0].value):
        best = ok[0]
        lines += [
            f"Best: job {best.name} ({describe(best.overrides, keys)}): {summary.monitor} {fmt(best.value)}, "
            f"checkpoint {best.metrics.get('best_ckpt')}",
            "",
        ]
    groups = summary.replicates
    if groups:
        replicate_keys = summary.swept_replicate_keys()
        config_keys = [k for k in keys if k not in replicate_keys]
        rows = [
            [*(group.overrides.get(k, "") for k in config_keys), f"{group.ok}/{group.replicates}",
             *(mean_and_std(*group.stats[name], digits=1 if name == TIME_KEY else 4) for name in group.stats),
             "best" if index == 0 else f"{group.p_value:.3g} ({group.test})" if group.test else ""]
            for index, group in enumerate(groups)
        ]
        names_shown = [*names, "train s"]
        lines += [
            f"## Replicates: mean ± std (sample, n-1) over {', '.join(replicate_keys)}, best first by {summary.monitor}",
            "",
            markdown_table([*config_keys, "ok", *names_shown, f"p vs best ({summary.monitor})"], rows),
            "",
            f"Best configuration: {describe(groups[0].overrides, config_keys)}. p vs best: two-sided p-value of a "
            f"paired t-test over the same {'/'.join(replicate_keys)} values (Welch's t-test when they differ), the "
            f"chance of a {summary.monitor} difference this large between equally good configurations; below 0.05, "
            "call the difference real.",
            "",
        ]
    return "\n".join(lines)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if cell is None else cell for cell in row] for row in rows])


def write_summary(summary: Summary, sweep_dir: Path) -> str:
    """Write summary.md, summary.csv (every override key, every metric) and summary_replicates.csv; return the markdown."""
    keys, names = summary.override_keys(), summary.metric_names
    extra = ("epochs", "train_time_s", "best_ckpt")
    write_csv(
        sweep_dir / "summary.csv",
        ["job", *keys, "status", "error", *names, *extra, "wall_time_s", *(f"{t}_run_id" for t in summary.trackers)],
        [[job.name, *(job.overrides.get(k) for k in keys), job.status, job.error,
          *(job.metrics.get(n) for n in names), *(job.metrics.get(e) for e in extra), job.wall_time_s,
          *(job.trackers.get(t, {}).get("run_id") for t in summary.trackers)]
         for job in summary.jobs],
    )
    groups = summary.replicates
    if groups:
        replicate_keys = summary.swept_replicate_keys()
        config_keys = [k for k in keys if k not in replicate_keys]
        stat_names = [*names, TIME_KEY]
        write_csv(
            sweep_dir / "summary_replicates.csv",
            [*config_keys, "ok", "replicates", *(f"{name} {stat}" for name in stat_names for stat in ("mean", "std")),
             "test_vs_best", "p_vs_best"],
            [[*(group.overrides.get(k) for k in config_keys), group.ok, group.replicates,
              *(x for pair in group.stats.values() for x in pair), group.test, group.p_value if group.test else None]
             for group in groups],
        )
    markdown = render_markdown(summary)
    study = sweep_dir / STUDY_REPORT
    if study.is_file():
        markdown += "\n" + study.read_text()
    (sweep_dir / "summary.md").write_text(markdown)
    return markdown


class SweepSummary(Callback):
    """At the end of a multirun: the results table in the sweep dir and on the console; exit 1 if a job failed.

    At its start: an optimizing sweeper's direction checked against the monitored metric, before any job runs.
    ``replicate_keys``: overrides whose jobs repeat one configuration (seeds, folds), averaged in the summary.
    """

    def __init__(self, replicate_keys: Sequence[str] = REPLICATE_KEYS) -> None:
        self.replicate_keys = tuple(replicate_keys)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_direction(config.hydra.sweeper, *monitored_metric(config))
        except ConfigError as err:
            log.error("error: %s", err)
            raise SystemExit(1) from err
        log.info("if this sweep stops, continue it (finished jobs are skipped): %s", continue_sweep_command(
            entry_point(), list(config.hydra.overrides.hydra), list(config.hydra.overrides.task), config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = summarize(sweep_dir, self.replicate_keys)
        markdown = write_summary(summary, sweep_dir)
        print(f"\n{markdown}\nwritten to {sweep_dir / 'summary.md'} and summary.csv", flush=True)
        if summary.failed:
            print(f"{len(summary.failed)} of {len(summary.jobs)} jobs failed (see the table)", file=sys.stderr, flush=True)
            raise SystemExit(1)
