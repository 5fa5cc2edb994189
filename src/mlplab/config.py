"""Config validation: every value a user can type is checked once, right after Hydra composes the config.

The rules themselves (type, range, finiteness, choices, relations between keys) are the one table in
``mlplab.rules``, which the classes the configs build use too. Here they are applied to a composed config, plus
what only the machine (devices, GPUs) and the data (the size of the training set, from its IDX header) can tell.

When: ``ValidateBeforeRun`` (``hydra.callbacks`` of every entry point's config) calls :func:`validate` from
Hydra's ``on_run_start``, *before* Hydra creates the run directory, so a typo leaves nothing behind; for a
multirun, :func:`validate_sweep` checks every swept value, key and option (and a search space) before the first
job, and ``mlplab.cli`` validates each job's own composition (swept groups, related keys) as the job starts.
In-process callers (a notebook) get the same rules from the constructors (``rules.check_arguments``).

Every problem found is reported, on one line: ``key=value must be <what is allowed>``. What Hydra itself refuses
(``optimizer=adamx``, ``optimizer.lrr=1``, ``hydra/launcher=jobli``, ``hydra.sweeper.n_trial=5``) too: Hydra
composes the config once, and only when it raises does ``mlplab.composition.refuse_composition`` say why in one line.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Iterator
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from mlplab.choices import DATASETS
from mlplab.composition import group_options, option_problem, parsed_override, unknown_key
from mlplab.data.idx import raw_folder, read_header
from mlplab.errors import ConfigError, DataError, reported_as_one_line
from mlplab.rules import REQUIRED, problem, problems, range_problems, relation_problems, search_problems, split_problems
from mlplab.run_dirs import refuse_used_dir, run_checkpoint

RUN_DIR_TASKS = ("serve",)  # entry points whose ckpt_path may name a run dir: its run_checkpoint


def validate(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every value out of range, of the wrong type or of an unknown name."""
    problems = violations(cfg)
    if problems:
        raise ConfigError("; ".join(problems))


def validate_sweep(cfg: DictConfig) -> None:
    """``validate`` for a multirun, before its first job: the shared values, and each value of each swept key.

    Hydra composes a multirun's config without its sweeps (``optimizer.lr=1e-3,-1``: ``lr`` holds the default),
    so each swept value is checked in a copy of that config, and each swept key and group option is looked up (Hydra
    would find them only after writing the sweep dir). Keys checked against each other (``data.fold`` against
    ``data.num_folds``) and the values inside swept groups are left to each job's own ``validate``.
    """
    if unknown := swept_name_problems(cfg):
        raise ConfigError(unknown[0])
    sweeps = value_sweeps(cfg)
    swept_paths = {key.removesuffix("num_folds") + "fold" for key in sweeps if key.endswith("num_folds")} | set(sweeps)
    about = lambda problem, key: problem.startswith(key + "=")  # noqa: E731
    problems = [p for p in violations(cfg) if not any(about(p, key) for key in swept_paths)]
    for key, values in sweeps.items():
        for value in values:
            trial = copy.deepcopy(cfg)
            OmegaConf.update(trial, key, value, force_add=True)
            problems += [f"{p} (in the sweep)" for p in violations(trial) if about(p, key)]
    if problems:
        raise ConfigError("; ".join(dict.fromkeys(problems)))


def value_sweeps(cfg: DictConfig) -> dict[str, list[Any]]:
    """``{key: values}`` of the command line's sweeps over values (``a.b=1,2``, ``range(3)``), not over groups."""
    groups = set(OmegaConf.select(cfg, "hydra.runtime.choices", default=None) or {})
    sweeps = {}
    for override in map(parsed_override, OmegaConf.select(cfg, "hydra.overrides.task", default=[])):
        if override.is_sweep_override() and override.key_or_group not in groups:
            try:
                sweeps[override.key_or_group] = list(override.sweep_iterator())
            except Exception:  # an interval for an optimizing sweeper: no list of values to check
                continue
    return sweeps


def swept_name_problems(cfg: DictConfig) -> list[str]:
    """A swept option no group has (``optimizer=adam,adamx``), a swept key the config lacks (``trainer.max_epoch=1,2``)
    or a key only some swept options have (``optimizer=sgd,adam optimizer.momentum=0.9``): the options are the group's
    files in the config's folders (``hydra.runtime.config_sources``), the keys the composed config's."""
    sources = [source for source in OmegaConf.select(cfg, "hydra.runtime.config_sources", default=[]) if source.schema == "file"]
    folders = [Path(source.path) for source in sources]
    main = next((Path(source.path) for source in sources if source.provider == "main"), None)
    tree = OmegaConf.to_container(cfg, resolve=False)
    overrides = list(map(parsed_override, OmegaConf.select(cfg, "hydra.overrides.task", default=[])))
    is_group = lambda o: "/" in o.key_or_group or any((f / o.key_or_group).is_dir() for f in folders)  # noqa: E731
    found = []
    for override in overrides:
        if not override.is_sweep_override() or override.key_or_group.startswith("hydra"):
            continue
        options = group_options(folders, override.key_or_group)
        if options:
            chosen = [one for value in override.sweep_iterator() for one in (value if isinstance(value, list) else [value])]
            found += [f"{override.key_or_group}={option} is not an option; choose one of {', '.join(options)}"
                      for option in chosen if str(option) not in options]  # a list chooses several: logger=[a,b]
            choices = [o.input_line for o in overrides if is_group(o) and not o.is_sweep_override()]
            keys = [o for o in overrides if o.key_or_group.startswith(override.key_or_group + ".")
                    and not (o.is_sweep_override() or o.is_add() or o.is_force_add())]  # set in every job
            group, swept = f"{'+' * override.is_add()}{override.key_or_group}", list(override.sweep_string_iterator())
            found += [problem for key in keys if main and (problem := option_problem(main, cfg.hydra.job.config_name,
                                                                                       choices, group, swept, key))]
        elif not (override.is_add() or override.is_force_add()) and (unknown := unknown_key(tree, override)):
            found.append(unknown)
    return found


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def violations(cfg: DictConfig) -> list[str]:
    """Every problem of ``cfg`` against mlplab.rules: each value, the keys between them, the machine, the data."""
    values = dict(leaf_values(cfg))
    found = problems(values) + relation_problems(values) + range_problems(values) + device_problems(values) + data_problems(values)
    found += search_space_problems(cfg)
    if "hydra.sweeper.direction" in values:
        found += search_problems(values, OmegaConf.select(cfg, "hydra.sweeper.pruner", default=None))
    found += [problem(key, "???", f"given: {needed}") for key, needed in REQUIRED.items() if is_missing(cfg, key)]
    ckpt_path = values.get("ckpt_path")
    if isinstance(ckpt_path, str) and ckpt_path and not Path(ckpt_path).is_file():
        if values.get("task_name") not in RUN_DIR_TASKS:
            found.append(problem("ckpt_path", ckpt_path, "an existing checkpoint file (e.g. <run>/checkpoints/last.ckpt)"))
        elif run_checkpoint(ckpt_path) is None:
            found.append(problem("ckpt_path", ckpt_path, "an existing checkpoint file or a run dir holding one "
                                                         "(e.g. logs/train/runs/<run>)"))
    return list(dict.fromkeys(found))


def validate_arguments(cfg: DictConfig) -> None:
    """Keys a ``_target_`` does not take (``+optimizer.momentum=0.9`` with Adam, ``+model.foo=1``), where Hydra would
    raise a TypeError mid-run. Needs the targets imported: the task calls it (``mlplab.cli``), before building any."""
    if found := argument_problems(cfg):
        raise ConfigError("; ".join(found))


def argument_problems(node: Any, path: str = "") -> list[str]:
    """What :func:`validate_arguments` refuses, for ``node`` and every config node below it."""
    from hydra.utils import get_object

    if not isinstance(node, DictConfig):
        return []
    found = []
    if "_target_" in node and not OmegaConf.is_interpolation(node, "_target_"):
        try:
            parameters = inspect.signature(get_object(node._target_)).parameters
        except Exception:  # not importable (an extra not installed) or no signature: instantiate reports it
            parameters = None
        if parameters is not None and all(p.kind != p.VAR_KEYWORD for p in parameters.values()):
            taken = [name for name, p in parameters.items() if p.kind != p.VAR_POSITIONAL and name != "self"]
            for key in (k for k in node if not str(k).startswith("_") and k not in parameters):
                close = get_close_matches(str(key), taken, n=1)
                found.append(f"{path}{key} is not an argument of {node._target_}" +
                             (f"; did you mean {path}{close[0]}?" if close else f", which takes {', '.join(taken)}"))
    return found + [p for key in node if key != "hydra" and not OmegaConf.is_missing(node, key)
                    and not OmegaConf.is_interpolation(node, key) for p in argument_problems(node[key], f"{path}{key}.")]


def is_missing(cfg: DictConfig, key: str) -> bool:
    """``key`` is in the config without a value (``???``): a chosen group needs it on the command line."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node.keys() and OmegaConf.is_missing(node, leaf)


def leaf_values(cfg: DictConfig, path: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every setting a user can type: Hydra's own only under ``hydra.sweeper``.
    Values that cannot be resolved yet (``${hydra:runtime.output_dir}`` before the run starts) are left out."""
    for key in cfg.keys():
        dotted = f"{path}{key}"
        if path == "" and key == "hydra":
            sweeper = OmegaConf.select(cfg, "hydra.sweeper", default=None)
            if isinstance(sweeper, DictConfig):
                yield from ((k, v) for k, v in leaf_values(sweeper, "hydra.sweeper.") if not k.startswith("hydra.sweeper.params."))
            continue
        if OmegaConf.is_missing(cfg, key) or OmegaConf.is_interpolation(cfg, key):
            continue  # unset, or another key's value: checked there
        try:
            value = cfg[key]
        except Exception:  # an interpolation Hydra resolves later
            continue
        if isinstance(value, DictConfig):
            yield from leaf_values(value, dotted + ".")
        elif key != "_target_":
            yield dotted, OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value


def device_problems(values: dict[str, Any]) -> list[str]:
    """The trainer's accelerator, devices and sync_batchnorm against this machine, before any process starts."""
    accelerator, devices = values.get("trainer.accelerator"), values.get("trainer.devices")
    if accelerator is None:
        return []
    requested = len(devices) if isinstance(devices, list) else devices if isinstance(devices, int) and devices > 0 else 0
    if accelerator not in ("gpu", "cuda") and requested <= 1 and values.get("trainer.sync_batchnorm") is not True:
        return []
    import torch  # counting GPUs needs it: only for a command that asks for GPUs or several devices

    gpus, cores = torch.cuda.device_count(), available_cores()
    here = f"this machine has {cores} CPU core{'s' * (cores != 1)} and {gpus or 'no'} GPU{'s' * (gpus != 1)}"
    if accelerator in ("gpu", "cuda") and gpus == 0:
        return [f"trainer.accelerator={accelerator} (trainer=gpu) needs a GPU, but {here}: use trainer=cpu, or "
                "trainer=default (a GPU when there is one, else the CPU)"]
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus > 0)
    if values.get("trainer.sync_batchnorm") is True and not on_gpu:
        return [f"trainer.sync_batchnorm=true must be false on CPU processes: torch's SyncBatchNorm runs on GPUs only ({here})"]
    available, unit = (gpus, "GPUs") if on_gpu else (cores, "CPU processes, one per core")
    if requested > available or (on_gpu and isinstance(devices, list) and max(devices, default=0) >= gpus):
        return [problem("trainer.devices", devices, f"at most {available} {unit} here ({here})")]
    return []


def data_problems(values: dict[str, Any]) -> list[str]:
    """The split sizes against the training set, whose size comes from its IDX header (8 bytes)."""
    dataset, data_dir = values.get("data.dataset"), values.get("data.data_dir")
    if dataset not in DATASETS or not isinstance(data_dir, str):
        return []
    labels = raw_folder(data_dir, dataset) / "train-labels-idx1-ubyte"
    if not labels.is_file():
        return []  # downloaded later; the data module checks again
    try:
        (num_train,) = read_header(labels)[:1]
    except DataError:
        return []  # the data module names the broken file
    return split_problems(num_train, values, f" of {dataset} (in {labels.parent})")


def search_space_problems(cfg: DictConfig) -> list[str]:
    """An optimizing sweeper's search space (``hydra.sweeper.params``): each choice, and both ends of each interval."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)
    if not isinstance(params, DictConfig):
        return []
    found = []
    for key, expression in OmegaConf.to_container(params, resolve=False).items():
        try:
            override = parsed_override(f"{key}={expression}")
        except Exception:
            found.append(f"hydra.sweeper.params.{key}={expression!r} must be choice(...), range(...) or interval(low, high)")
            continue
        sweep = override.value()
        ends = [sweep.start, sweep.end] if hasattr(sweep, "end") else None  # an IntervalSweep
        values = ends if ends is not None else list(override.sweep_iterator()) if override.is_sweep_override() else [sweep]
        for value in values:
            found += [f"hydra.sweeper.params.{p} (in the search space)" for p in problems({key: value})]
    return list(dict.fromkeys(found))


class ValidateBeforeRun(Callback):
    """Hydra callback: validate the composed config before Hydra creates the run directory.

    A bad value ends the command with one line and exit status 1, and leaves no empty run directory. For a
    multirun, the shared values and every swept value, key and option are checked before the first job starts; each
    job's own composition (swept groups, keys that depend on each other) is validated as it starts (by ``mlplab.cli``).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        reported_as_one_line(validate)(config)
        reported_as_one_line(refuse_used_dir)(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        reported_as_one_line(validate_sweep)(config)
        reported_as_one_line(refuse_used_dir)(config, "hydra.sweep.dir")
