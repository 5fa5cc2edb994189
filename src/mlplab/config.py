"""Config validation: every value a user can type is checked once, right after Hydra composes the config.

Why one function rather than dataclass schemas in Hydra's ConfigStore: the config groups are plain YAML
that name the class they build (``_target_``); a parallel set of dataclasses would repeat every group and
still not express ranges ("0 <= dropout < 1") or facts only the data knows (``val_size`` below the size of
the training set). A table of rules checks both, and the entry points share it.

When it runs: ``ValidateBeforeRun`` (registered under ``hydra.callbacks`` in conf/train.yaml) calls
:func:`validate` from Hydra's ``on_run_start``, which comes *before* Hydra creates the run directory, so a
typo leaves nothing behind; for a multirun, :func:`validate_sweep` checks every swept value before the first
job starts. ``mlplab.pipeline.train`` calls :func:`validate` again first thing, which covers each multirun job
(swept groups, keys that depend on each other) and in-process callers. It costs a header read of one data file.

Every problem found is reported, on one line: ``key=value must be <what is allowed>``.
Unknown group options (``optimizer=adamx``) and keys (``optimizer.lrr=1``) fail inside Hydra's composition,
which reports them in several lines; :func:`refuse_unknown_overrides` reads the command line first and says
it in one, with what is allowed (or the closest existing key).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from difflib import get_close_matches
from pathlib import Path
from typing import Any, get_args

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_INT, _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS
from omegaconf import DictConfig, ListConfig, OmegaConf

from mlplab.data import DATASETS, LOADERS, raw_folder
from mlplab.errors import ConfigError, exit_with, reported_as_one_line
from mlplab.idx import read_header
from mlplab.models import ACTIVATIONS

ABSENT = object()
PRECISIONS = ("auto", *get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS), *get_args(_PRECISION_INPUT_INT))


def number(test: Callable[[float], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, int | float) and not isinstance(value, bool) and test(value)


def integer(test: Callable[[int], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, int) and not isinstance(value, bool) and test(value)


def one_of(choices: Sequence[Any]) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value in choices), "one of " + ", ".join(dict.fromkeys(map(str, choices)))


positive, non_negative = number(lambda v: v > 0), number(lambda v: v >= 0)
fraction = number(lambda v: 0 <= v < 1)
probability = number(lambda v: 0 <= v <= 1)
count = integer(lambda v: v >= 1)

# key -> (test, what is allowed). Keys absent from the composed config (optimizer.momentum under adam) are skipped.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "optimizer.lr": (positive, "a number > 0"),
    "optimizer.weight_decay": (non_negative, "a number >= 0"),
    "optimizer.momentum": (fraction, "a number in [0, 1)"),
    "optimizer.betas": (lambda v: isinstance(v, Sequence) and len(v) == 2 and all(map(fraction, v)), "two numbers in [0, 1)"),
    "model.hidden_dims": (lambda v: isinstance(v, Sequence) and all(map(count, v)), "a list of layer widths >= 1"),
    "model.dropout": (fraction, "a number in [0, 1)"),
    "model.activation": one_of(tuple(ACTIVATIONS)),
    "model.batch_norm": (lambda v: isinstance(v, bool), "true or false"),
    "data.dataset": one_of(tuple(DATASETS)),
    "data.loader": one_of(LOADERS),
    "data.batch_size": (count, "an integer >= 1"),
    "data.eval_batch_size": (count, "an integer >= 1"),
    "data.val_size": (count, "an integer >= 1"),
    "data.num_workers": (integer(lambda v: v >= 0), "an integer >= 0"),
    "data.augment.translate": (non_negative, "a number >= 0"),
    "data.augment.degrees": (non_negative, "a number >= 0"),
    "data.augment.scale": (fraction, "a number in [0, 1)"),
    "data.augment.hflip": (probability, "a probability in [0, 1]"),
    "data.augment.elastic_alpha": (non_negative, "a number >= 0 (pixels; 0 = off)"),
    "data.augment.elastic_sigma": (positive, "a number > 0 (pixels)"),
    "data.augment.erasing": (probability, "a probability in [0, 1]"),
    "data.augment.erasing_scale": (
        lambda v: isinstance(v, Sequence) and len(v) == 2 and all(map(number(lambda f: 0 < f <= 1), v)) and v[0] <= v[1],
        "[low, high] area fractions with 0 < low <= high <= 1",
    ),
    "regularization.l1": (non_negative, "a number >= 0"),
    "regularization.label_smoothing": (fraction, "a number in [0, 1)"),
    "trainer.max_epochs": (integer(lambda v: v >= 1 or v == -1), "an integer >= 1 (or -1: no limit)"),
    "trainer.precision": one_of(PRECISIONS),
    "trainer.num_nodes": (count, "an integer >= 1"),
    "callbacks.early_stopping.patience": (integer(lambda v: v >= 0), "an integer >= 0"),
    "seed": (integer(lambda v: v >= 0), "an integer >= 0"),
}
# Keys that may appear in any group (few-shot subsets, cross-validation folds): checked wherever they are.
ANYWHERE: dict[str, tuple[Callable[[Any], bool], str]] = {
    "samples_per_class": (lambda v: v is None or count(v), "an integer >= 1, or null for all"),
    "train_fraction": (lambda v: v is None or number(lambda f: 0 < f <= 1)(v), "a number in (0, 1], or null for all"),
    "num_folds": (lambda v: v is None or integer(lambda n: n >= 2)(v), "an integer >= 2, or null for one hold-out split"),
}


def validate(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every value out of range, of the wrong type or of an unknown name."""
    problems = [f"{key}={shown(value)} must be {allowed}" for key, value, allowed in violations(cfg)]
    if problems:
        raise ConfigError("; ".join(problems))


def validate_sweep(cfg: DictConfig) -> None:
    """``validate`` for a multirun, before its first job: the shared values, and each value of each swept key.

    Hydra composes a multirun's config without its sweeps (``optimizer.lr=1e-3,-1``: ``lr`` holds the default),
    so each swept value is checked in a copy of that config. Keys checked against each other (``data.fold``
    against ``data.num_folds``) and swept config groups are left to each job's own ``validate``.
    """
    sweeps = value_sweeps(cfg)
    swept_paths = {key.removesuffix("num_folds") + "fold" for key in sweeps if key.endswith("num_folds")} | set(sweeps)
    problems = [f"{key}={shown(value)} must be {allowed}" for key, value, allowed in violations(cfg) if key not in swept_paths]
    for key, values in sweeps.items():
        for value in values:
            trial = copy.deepcopy(cfg)
            OmegaConf.update(trial, key, value, force_add=True)
            problems += [f"{key}={shown(bad)} must be {allowed} (in the sweep)" for k, bad, allowed in violations(trial) if k == key]
    if problems:
        raise ConfigError("; ".join(dict.fromkeys(problems)))


def value_sweeps(cfg: DictConfig) -> dict[str, list[Any]]:
    """``{key: values}`` of the command line's sweeps over values (``a.b=1,2``, ``range(3)``), not over groups."""
    groups = set(OmegaConf.select(cfg, "hydra.runtime.choices", default=None) or {})
    overrides = OverridesParser.create().parse_overrides(list(OmegaConf.select(cfg, "hydra.overrides.task", default=[])))
    sweeps = {}
    for override in overrides:
        if override.is_sweep_override() and override.key_or_group not in groups:
            try:
                sweeps[override.key_or_group] = list(override.sweep_iterator())
            except Exception:  # an interval for an optimizing sweeper: no list of values to check
                continue
    return sweeps


def violations(cfg: DictConfig) -> Iterator[tuple[str, Any, str]]:
    for key, (test, allowed) in RULES.items():
        value = OmegaConf.select(cfg, key, default=ABSENT)
        if value is not ABSENT and not test(value):
            yield key, value, allowed
    for path, node in nodes(cfg):
        for key, (test, allowed) in ANYWHERE.items():
            if key in node and not test(node[key]):
                yield path + key, node[key], allowed
        if "num_folds" in node and "fold" in node:
            folds, fold = node.num_folds, node.fold
            if folds is None and fold is not None:
                yield path + "fold", fold, f"null unless {path}num_folds is set"
            elif count(folds) and not integer(lambda v: 0 <= v < folds)(fold):
                yield path + "fold", fold, f"an integer in [0, {path}num_folds={folds}) (every fold: -m '{path}fold=range({folds})')"
    yield from val_size_violation(cfg)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        yield "ckpt_path", ckpt_path, "an existing checkpoint file (e.g. <run>/checkpoints/last.ckpt)"


def val_size_violation(cfg: DictConfig) -> Iterator[tuple[str, Any, str]]:
    """``data.val_size`` must leave training images: the size of the training set comes from its IDX header."""
    data = cfg.get("data") or {}
    val_size, dataset = data.get("val_size"), data.get("dataset")
    if not count(val_size) or dataset not in DATASETS or data.get("data_dir") is None or data.get("num_folds"):
        return
    labels = raw_folder(data.data_dir, dataset) / "train-labels-idx1-ubyte"
    if not labels.is_file():
        return  # downloaded later; the split checks again
    (num_train,) = read_header(labels)[:1]
    if val_size >= num_train:
        yield "data.val_size", val_size, f"smaller than the {num_train} training images of {dataset} (in {labels.parent})"


def nodes(cfg: DictConfig, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Every mapping in the user's config (Hydra's own settings excluded), with its dotted path."""
    yield path, cfg
    for key, child in cfg.items_ex(resolve=False):
        if isinstance(child, DictConfig) and not (path == "" and key == "hydra"):
            yield from nodes(child, f"{path}{key}.")


def shown(value: Any) -> str:
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value)
    return repr(value) if isinstance(value, str) else str(value)


class ValidateBeforeRun(Callback):
    """Hydra callback: validate the composed config before Hydra creates the run directory.

    A bad value ends the command with one line and exit status 1, and leaves no empty run directory. For a
    multirun, the shared values and every swept value are checked before the first job starts; each job is
    validated again when it starts (by the pipeline), which covers swept groups and keys that depend on each other.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        reported_as_one_line(validate)(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        reported_as_one_line(validate_sweep)(config)


def refuse_unknown_overrides(config_dir: str | Path, config_name: str, overrides: Sequence[str]) -> None:
    """Overrides naming no ``conf/<group>/<option>.yaml`` (``optimizer=adamx``) or no existing key
    (``optimizer.lrr=1``): one line saying what is allowed, exit 1. Hydra would say either in several lines.

    Called by the entry points before ``hydra.main`` composes anything. Groups that live outside ``conf/``
    (``hydra/launcher=joblib`` comes from a plugin), ``hydra.*`` keys and keys added with ``+`` are left to Hydra.
    """
    parsed = []
    for text in overrides:
        if text.startswith("-") or "=" not in text:
            continue
        try:
            parsed.append(OverridesParser.create().parse_override(text))
        except Exception:  # a syntax error: Hydra says where
            continue
    config_dir = Path(config_dir).resolve()
    parsed = [o for o in parsed if not o.key_or_group.startswith("hydra")]
    is_group = lambda o: (config_dir / o.key_or_group).is_dir()  # noqa: E731
    for override in parsed:
        if is_group(override) and not override.is_delete():
            options = sorted(p.stem for p in (config_dir / override.key_or_group).glob("*.yaml"))
            for option in swept_values(override):
                if option is not None and str(option) not in options:
                    exit_with(ConfigError(f"{override.key_or_group}={option} is not an option; choose one of {', '.join(options)}"))
    keys = [o for o in parsed if not (is_group(o) or o.is_add() or o.is_force_add() or o.is_delete())]
    if keys:
        refuse_unknown_keys(config_dir, config_name, [o for o in parsed if is_group(o)], keys)


def swept_values(override: Any) -> list[Any]:
    return list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]


def refuse_unknown_keys(config_dir: Path, config_name: str, groups: list[Any], keys: list[Any]) -> None:
    """Compose the config the groups choose (the first option of a swept group), then look up every key."""
    from hydra import compose, initialize_config_dir

    choices = [f"{'+' if o.is_add() else ''}{o.key_or_group}={swept_values(o)[0]}" for o in groups if o.value() is not None]
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=choices)
    except Exception:  # whatever stops this composition stops Hydra's too, which reports it
        return
    for override in keys:
        key, node = override.key_or_group, cfg
        for depth, part in enumerate(key.split(".")):
            # _get_node: the child as stored, so `???` values and ${hydra:...} interpolations need no resolving
            if isinstance(node, DictConfig) and part in node.keys():
                node = node._get_node(part)
            elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
                node = node._get_node(int(part))
            else:
                parent = ".".join(key.split(".")[:depth])
                if isinstance(node, DictConfig):
                    known = f"{parent or 'the top level'} has {', '.join(map(str, node.keys()))}"
                elif isinstance(node, ListConfig):
                    known = f"{parent} is a list of {len(node)}"
                else:
                    known = f"{parent} is a single value"
                close = get_close_matches(key, list(dotted_keys(cfg)), n=1)
                hint = f"did you mean {close[0]}?" if close else f"to add a new key: +{override.input_line}"
                exit_with(ConfigError(f"{key} is not a setting: {known}; {hint}"))


def dotted_keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, DictConfig):
        for key in node.keys():
            yield f"{prefix}{key}"
            yield from dotted_keys(node._get_node(key), f"{prefix}{key}.")
