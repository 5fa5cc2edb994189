"""Run and sweep directories: every run gets one of its own, and no run writes into another's.

Hydra's default name, ``${now:%Y-%m-%d_%H-%M-%S}``, is shared by every run started in the same second (a shell
loop of seeds wrote into one directory). ``${unique_dir:<parent>}`` (``hydra.run.dir``, ``hydra.sweep.dir``) names
``<parent>/<YYYY-MM-DD_HH-MM-SS>_<6 hex digits>`` and creates it with an exclusive ``mkdir`` (atomic on NFS too),
drawing another suffix when taken. The resolver caches its value (``use_cache``), which Hydra copies into every
job of a sweep, so a run or a sweep resolves its directory once.

A directory given by hand (``hydra.run.dir=X``) that holds another run (``.hydra/``, ``metrics.json``) is refused
in one line, unless the command resumes that run (``ckpt_path`` inside X: ``resume_command``), continues the
Optuna study kept in that sweep dir, or continues that sweep itself: the same overrides again
(``continue_sweep_command``), whose finished jobs are then skipped (``mlplab.search.sweeps.recorded_sweep_job``).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mlplab.errors import ConfigError

RESOLVER = "unique_dir"
RUN_RECORDS = (".hydra", "metrics.json", "multirun.yaml")  # what a finished (or started) run leaves behind


def new_unique_dir(parent: str) -> str:
    """Create ``<parent>/<time>_<random suffix>`` (never an existing one) and return its path.

    Under ``srun`` with several tasks (a multi-node run: README, "Multi-node and cluster runs") every task composes
    the config itself; they share ``<parent>/slurm-<job id>.<step id>``, which only that job step uses."""
    root = Path(parent)
    root.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        shared = root / f"slurm-{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '0')}"
        shared.mkdir(exist_ok=True)
        return str(shared)
    while True:
        path = root / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{secrets.token_hex(3)}"
        try:
            path.mkdir()
            return str(path)
        except FileExistsError:  # another run took this name first: draw again
            continue


if not OmegaConf.has_resolver(RESOLVER):
    OmegaConf.register_new_resolver(RESOLVER, new_unique_dir, use_cache=True)


def refuse_used_dir(config: DictConfig, key: str) -> None:
    """ConfigError when ``config.<key>`` (``hydra.run.dir`` or ``hydra.sweep.dir``) was set by hand to a
    directory holding another run, unless ``ckpt_path`` resumes a run inside it."""
    raw: Any = OmegaConf.to_container(config, resolve=False)
    for part in key.split("."):
        raw = raw.get(part) if isinstance(raw, dict) else None
    if raw is None or f"${{{RESOLVER}:" in str(raw):
        return  # a new directory of its own
    if any(os.environ.get(rank, "0") != "0" for rank in ("LOCAL_RANK", "RANK", "SLURM_PROCID")):
        return  # a DDP worker (Lightning's, srun's or torchrun's), in the directory its rank 0 has just begun
    directory = Path(str(OmegaConf.select(config, key)))
    found = [name for name in RUN_RECORDS if (directory / name).exists()]
    if not found:
        return
    ckpt_path = OmegaConf.select(config, "ckpt_path", default=None, throw_on_missing=False)
    if ckpt_path and directory.resolve() in Path(str(ckpt_path)).resolve().parents:
        return  # the documented resume: the run continues in its own directory
    if key == "hydra.sweep.dir" and continues_search(config, directory):
        return  # an Optuna study kept in this sweep dir: new trials get job dirs of their own (their trial numbers)
    earlier = sweep_overrides(directory) if key == "hydra.sweep.dir" else None
    if earlier is not None and earlier[1] == list(OmegaConf.select(config, "hydra.overrides.task", default=[])):
        return  # the same sweep again: it continues, finished jobs are skipped
    if earlier is not None:
        raise ConfigError(f"{key}={directory} holds a sweep with other overrides; to continue it, repeat them: "
                          f"{continue_sweep_command(entry_point(), *earlier, directory)}")
    resume = f", or to resume that run: ckpt_path={directory}/checkpoints/last.ckpt {key}={directory}" if key == "hydra.run.dir" else ""
    raise ConfigError(f"{key}={directory} already holds another run ({', '.join(found)}); leave {key} out for a new "
                      f"directory of its own{resume}")


def continues_search(config: DictConfig, directory: Path) -> bool:
    """An optimizing sweeper whose study storage (a journal file or sqlite database) lies inside ``directory``;
    with no storage given, the sweeper keeps its study in ``<sweep dir>/optuna.journal``."""
    sweeper = OmegaConf.select(config, "hydra.sweeper", default=None)
    if not isinstance(sweeper, DictConfig) or "params" not in sweeper:
        return False
    storage = str(sweeper.get("storage") or directory / "optuna.journal")
    study_file = Path(storage.removeprefix("sqlite:///"))
    return study_file.is_file() and directory.resolve() in study_file.resolve().parents


def sweep_overrides(directory: Path) -> tuple[list[str], list[str]] | None:
    """(Hydra's overrides, the task's overrides) of the sweep whose ``multirun.yaml`` (Hydra writes it when a
    multirun starts) is in ``directory``; None when there is none."""
    try:
        overrides = yaml.safe_load((directory / "multirun.yaml").read_text())["hydra"]["overrides"]
        return list(overrides["hydra"]), list(overrides["task"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None


def continue_sweep_command(entry_point: str, hydra_overrides: list[str], overrides: list[str], sweep_dir: str | Path) -> str:
    """The command that continues a sweep in its own dir (its launcher and sweeper settings, its overrides):
    its jobs that finished are skipped, the others run."""
    settings = [o for o in hydra_overrides if not o.startswith(("hydra.sweep.dir=", "hydra.mode="))]  # -m says the mode
    return shlex.join(["python", entry_point, "-m", *settings, *overrides, f"hydra.sweep.dir={sweep_dir}"])


def resume_command(entry_point: str, overrides: list[str], checkpoint: str | Path, run_dir: str | Path) -> str:
    """The command that continues a run from ``checkpoint`` in its own run dir, ready to paste."""
    kept = [arg for arg in overrides if not arg.startswith(("ckpt_path=", "hydra.run.dir="))]
    return shlex.join(["python", entry_point, *kept, f"ckpt_path={checkpoint}", f"hydra.run.dir={run_dir}"])


def entry_script() -> Path:
    """The script this process runs (``train.py``): with :func:`typed_arguments`, the one place the package reads the
    command line."""
    return Path(sys.argv[0]).resolve()


def run_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint that stands for a run dir: the one its ``metrics.json`` reports (``best_ckpt``, the best on
    validation, the one tested), found in the dir's own ``checkpoints/`` so a moved run still works; else
    ``checkpoints/last.ckpt`` (a run stopped before its end). None: no checkpoint there."""
    checkpoints = Path(run_dir) / "checkpoints"
    metrics = Path(run_dir) / "metrics.json"
    try:
        best = json.loads(metrics.read_text()).get("best_ckpt") if metrics.is_file() else None
    except (OSError, ValueError, AttributeError):  # a damaged metrics.json: fall back to last.ckpt
        best = None
    for candidate in ([checkpoints / Path(best).name] if isinstance(best, str) and best else []) + [checkpoints / "last.ckpt"]:
        if candidate.is_file():
            return candidate
    return None


def entry_point() -> str:
    script = entry_script()
    return script.name if script.suffix == ".py" else "train.py"


def typed_arguments() -> list[str]:
    """The arguments as typed: a multirun's sweeps (``optimizer.lr=1e-3,3e-3``), which Hydra records only as each
    job's own values."""
    return sys.argv[1:]


def command_line_overrides() -> list[str]:
    """This run's overrides: Hydra's record of them (one job's values in a multirun), else the command line."""
    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return typed_arguments()
