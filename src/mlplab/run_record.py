"""The reproducibility record of a run: ``run.json`` in every run dir, and where a checkpoint came from.

Six months later a run dir must answer: which command (and how to resume it), which code (git commit, and
``git_diff.patch`` when the tree was dirty), which packages, machine and data files (SHA-256 of each), and how it
ended (finished | interrupted | diverged | failed). ``recorded_run`` wraps an entry point's task: it writes the
record when the run starts (status ``running``: a killed run keeps that) and again when it ends.

Hashing MNIST every run would cost a noticeable fraction of a second: each digest is cached in
``$XDG_CACHE_HOME/mlplab/sha256.json`` (default ``~/.cache``) under the file's path, size and mtime.

Checkpoints carry the record's essentials (``mlplab.checkpoint_writer.RunOrigin``, plain values under ``mlplab_run``; read back by
``mlplab.checkpoint_reader``), so eval, predict, export and finetune name the run and commit a checkpoint came
from even after it was copied, and warn when their data differs from the data it was trained on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import shlex
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mlplab.data.idx import FILES, raw_folder
from mlplab.errors import TrainingDiverged, one_line, user_error_in
from mlplab.run_dirs import command_line_overrides, entry_point, entry_script, resume_command

log = logging.getLogger(__name__)

RUN_RECORD = "run.json"
DIFF_FILE = "git_diff.patch"
CHECKPOINT_KEY = "mlplab_run"
PACKAGES = ("torch", "lightning", "hydra-core", "torchmetrics", "torchvision")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def code_root() -> Path:
    """The checkout the code runs from: the entry point's folder, else the one above the ``mlplab`` package."""
    script = entry_script()
    return script.parent if script.suffix == ".py" and script.is_file() else Path(__file__).resolve().parents[2]


def git(repo: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def git_state(repo: Path) -> tuple[dict[str, Any], str]:
    """(commit, dirty flag and untracked files; the diff of tracked files against the commit). Untracked files that
    git does not ignore make the tree dirty too: a new config file changes what a run does."""
    commit = git(repo, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "note": f"{repo} is not a git checkout"}, ""
    diff = git(repo, "diff", "HEAD") or ""
    untracked = (git(repo, "ls-files", "--others", "--exclude-standard") or "").split()
    return {"commit": commit.strip(), "dirty": bool(diff or untracked), "untracked": untracked}, diff


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    import torch  # run.json is written inside the task, after validation, which imports no torch
    info: dict[str, Any] = {"host": platform.node(), "os": platform.platform(), "cpu": cpu_model(),
                            "cpu_count": os.cpu_count(), "gpus": []}
    if torch.cuda.is_available():
        driver = None
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            driver = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.split("\n")[0].strip() or None
        except (OSError, subprocess.TimeoutExpired):
            pass
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"], info["gpu_driver"] = torch.version.cuda, driver
    return info


def hash_cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlplab" / "sha256.json"


def sha256(path: Path, cache_file: Path | None = None) -> str:
    """SHA-256 of a file, read from the cache when the file's path, size and mtime are unchanged since it was hashed."""
    cache_file = cache_file or hash_cache_file()
    path = path.resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    cache = {k: v for k, v in cache.items() if not k.startswith(f"{path}|")} | {key: digest.hexdigest()}
    try:  # written whole, then renamed: parallel sweep jobs never see half a cache
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(cache, indent=1))
        os.replace(temporary, cache_file)
    except OSError as err:
        log.debug("could not cache the digest of %s: %s", path, err)
    return digest.hexdigest()


def data_file_hashes(dataset: str, data_dir: str | Path) -> dict[str, str]:
    """SHA-256 of the dataset's files that exist, keyed by their path under ``data_dir`` (``MNIST/raw/...``):
    the same keys whichever folder the data lives in."""
    folder = raw_folder(data_dir, dataset)
    files = [folder / name for name in FILES if (folder / name).is_file()]
    return {path.relative_to(data_dir).as_posix(): sha256(path) for path in files}


class RunRecord:
    """``run.json`` of one run, rewritten whenever something is added to it."""

    def __init__(self, cfg: DictConfig, output_dir: Path, overrides: list[str]) -> None:
        self.path = Path(output_dir) / RUN_RECORD
        command = shlex.join(["python", entry_point(), *overrides])
        self.data: dict[str, Any] = {
            "task": cfg.get("task_name"),
            "run_dir": str(Path(output_dir).resolve()),
            "command": command,
            "resume_command": None,
            "status": "running",
            "error": None,
            "start_time": now(),
            "end_time": None,
            "duration_s": None,
            "git": None,
            "versions": package_versions(),
            "machine": machine(),
            "data_dir": None,
            "data_sha256": {},
            "checkpoint": None,
            "trackers": {},
            "previous_attempts": [],  # a resumed run's earlier records in this dir (interrupted, diverged, ...)
        }
        if earlier := read_record(output_dir):
            self.data["previous_attempts"] = earlier.pop("previous_attempts", []) + [earlier]
        last = ((cfg.get("callbacks") or {}).get("last_checkpoint") or {})
        self._resume = None  # (checkpoint, command): offered once the checkpoint exists
        if "ckpt_path" in cfg and last.get("dirpath"):
            checkpoint = Path(last.dirpath) / f"{last.get('filename') or 'last'}.ckpt"
            self._resume = checkpoint, resume_command(entry_point(), overrides, checkpoint, output_dir)
        repo = code_root()
        self.data["git"], diff = git_state(repo)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if diff:
            (self.path.parent / DIFF_FILE).write_text(diff)
            self.data["git"]["diff"] = DIFF_FILE
        self._start = time.perf_counter()
        add_to_record(self.path.parent, self.data)

    def finish(self, status: str, error: str | None = None) -> None:
        resume = self._resume[1] if self._resume and self._resume[0].is_file() else None  # no epoch ended: none
        add_to_record(self.path.parent, running_record(self.path.parent) or self.data, status=status, error=error,
                      end_time=now(), duration_s=round(time.perf_counter() - self._start, 3), resume_command=resume)


def read_record(run_dir: str | Path) -> dict[str, Any]:
    """A run dir's run.json; {} where there is none, or it is damaged."""
    try:
        data = json.loads((Path(run_dir) / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def running_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The run.json of the run in progress in ``run_dir`` (a run's context is its dir; the file is the one copy)."""
    data = read_record(run_dir)
    return data if data.get("status") == "running" else None


def add_to_record(run_dir: str | Path, record: dict[str, Any], **fields: Any) -> None:
    (Path(run_dir) / RUN_RECORD).write_text(json.dumps(record | fields, indent=2) + "\n")


def note_data(datamodule: Any, run_dir: str | Path) -> dict[str, str]:
    """Record (and return) the SHA-256 of the data files ``datamodule`` reads; {} for data other than MNIST-family."""
    hparams = getattr(datamodule, "hparams", {})
    if "dataset" not in hparams or "data_dir" not in hparams:
        return {}
    data_dir, record = str(Path(hparams["data_dir"]).resolve()), running_record(run_dir)
    if record is not None and record.get("data_dir") == data_dir and record.get("data_sha256"):
        return record["data_sha256"]  # hashed once per run: finetune and eval ask again for the same files
    try:
        hashes = data_file_hashes(hparams["dataset"], hparams["data_dir"])
    except (OSError, KeyError) as err:
        log.warning("could not hash the data files: %s", err)
        return {}
    if record is not None:
        add_to_record(run_dir, record, data_dir=data_dir, data_sha256=hashes)
    return hashes


def note_checkpoint(path: str | Path, origin: dict[str, Any] | None, run_dir: str | Path) -> None:
    """Record the checkpoint this run starts from, and the run that wrote it."""
    if (record := running_record(run_dir)) is not None:
        add_to_record(run_dir, record, checkpoint={"path": str(Path(str(path)).resolve()), "origin": origin})


def note_tracker(name: str, run: dict[str, Any], run_dir: str | Path) -> None:
    """Record where a tracker (mlflow, wandb) keeps this run, for run.json and the sweep summary."""
    if (record := running_record(run_dir)) is not None:
        add_to_record(run_dir, record, trackers=record["trackers"] | {name: run})


def exit_status(err: BaseException | None) -> str:
    if err is None:
        return "finished"
    if isinstance(err, (KeyboardInterrupt, SystemExit)):  # Lightning turns Ctrl-C and SIGTERM into SystemExit(1)
        return "interrupted"
    return "diverged" if isinstance(user_error_in(err), TrainingDiverged) else "failed"


def recorded_run(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Write ``run.json`` into the run dir before ``task`` starts, and its end time and exit status after."""

    @functools.wraps(task)
    def run(cfg: DictConfig) -> Any:
        output_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(cfg.output_dir)
        record = RunRecord(cfg, output_dir, command_line_overrides())
        try:
            result = task(cfg)
        except BaseException as err:
            record.finish(exit_status(err), None if isinstance(err, (KeyboardInterrupt, SystemExit)) else one_line(err))
            raise
        record.finish("finished")
        return result

    return run


def warn_if_data_changed(origin: dict[str, Any] | None, hashes: dict[str, str]) -> list[str]:
    """Warn about data files whose SHA-256 differs from the one the checkpoint's run read; returns their names."""
    trained_on = (origin or {}).get("data_sha256") or {}
    changed = sorted(name for name in hashes.keys() & trained_on.keys() if hashes[name] != trained_on[name])
    if changed:
        log.warning("the data differs from what the checkpoint was trained on: %s changed since run %s "
                    "(SHA-256 in its run.json); results are not comparable", ", ".join(changed), origin.get("run_dir"))
    return changed

