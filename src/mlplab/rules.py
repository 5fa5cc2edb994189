"""Every rule about a value a user can type, in one table: ``dotted key -> (test, what is allowed)``.

The same table is used twice, with the same words: ``mlplab.config.validate`` checks a composed config with it
before Hydra creates a run directory, and the classes the configs build (``MLP``, ``BatchAugment``,
``MNISTDataModule``, ``ClassifierModule``) check their arguments with :func:`check` when they are constructed,
so a notebook's ``MLP(784, 10, dropout=1.5)`` fails exactly like ``python train.py model.dropout=1.5``:
``model.dropout=1.5 must be a number in [0, 1)``.

Keys are config paths (``optimizer.lr``); ``*.num_folds`` matches the key wherever it is. A key absent from a
config (``optimizer.momentum`` under adam) is not checked. Rules between keys or against facts only the data
or the machine know (batch size vs the training split, devices vs what exists) are the functions at the end;
``mlplab.config`` applies them at compose time, and the objects that meet the same facts later use the same
functions for their message.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mlplab.choices import ACTIVATIONS, DATASETS, DIRECTIONS, EXPORT_FORMATS, LOADERS, OBJECTIVES, PRECISIONS, PRUNERS
from mlplab.errors import ConfigError

Rule = tuple[Callable[[Any], bool], str]


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): ``inf`` and ``nan`` make every run that uses them meaningless."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def number(test: Callable[[float], bool], allowed: str) -> Rule:
    return (lambda value: is_number(value) and test(value)), allowed


def integer(test: Callable[[int], bool], allowed: str) -> Rule:
    return (lambda value: is_integer(value) and test(value)), allowed


def one_of(choices: Iterable[Any]) -> Rule:
    choices = tuple(choices)
    return (lambda value: value in choices), "one of " + ", ".join(dict.fromkeys("null" if c is None else str(c) for c in choices))


def or_null(rule: Rule, meaning: str) -> Rule:
    test, allowed = rule
    return (lambda value: value is None or test(value)), f"{allowed}, or null {meaning}"


def list_of(rule: Rule, allowed: str, min_length: int = 0, exact_length: int | None = None) -> Rule:
    test = rule[0]

    def check_list(value: Any) -> bool:
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            return False
        return len(value) >= min_length and (exact_length is None or len(value) == exact_length) and all(map(test, value))

    return check_list, allowed


positive = number(lambda v: v > 0, "a number > 0")
non_negative = number(lambda v: v >= 0, "a number >= 0")
fraction = number(lambda v: 0 <= v < 1, "a number in [0, 1)")
probability = number(lambda v: 0 <= v <= 1, "a probability in [0, 1]")
count = integer(lambda v: v >= 1, "an integer >= 1")
non_negative_integer = integer(lambda v: v >= 0, "an integer >= 0")
boolean: Rule = (lambda value: isinstance(value, bool), "true or false")
text: Rule = (lambda value: isinstance(value, str) and value != "", "a non-empty string")
path: Rule = (lambda value: isinstance(value, str) and value != "", "a path")
optional_path = or_null(path, "for the default")
metric = one_of(("val/acc", "val/loss", "train/acc", "train/loss"))
min_or_max = one_of(("min", "max"))
seed = integer(lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)")
epochs_or_auto: Rule = (lambda v: v == "auto" or is_integer(v) and v >= 1, "auto or a number of epochs >= 1")
pruner: Rule = (lambda v: isinstance(v, Mapping) or v in PRUNERS,
                f"one of {', '.join(PRUNERS)} (hydra/sweeper/pruner=<name> for its settings)")
directions = list_of(one_of(DIRECTIONS), "", min_length=1)
direction: Rule = (lambda v: v in DIRECTIONS or directions[0](v),
                   f"{' or '.join(DIRECTIONS)}, or a list of them, one per objective ([maximize,minimize])")

# Keys without a default (``???``) that a chosen group needs on the command line.
REQUIRED: dict[str, str] = {
    "data.root": "a folder with one subfolder of pictures per class (data=image_folder data.root=<dir>)",
    "data.path": "a CSV file (data=csv data.path=<file>)",
}
RULES: dict[str, Rule] = {
    # top level (train.py, finetune.py)
    "seed": seed,
    "compile": boolean,
    "compile_options.dynamic": or_null(boolean, "to let torch decide"),
    "compile_options.mode": one_of((None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")),
    "float32_matmul_precision": one_of((None, "highest", "high", "medium")),
    "ckpt_path": or_null(path, "to start from scratch"),
    "num_threads": or_null(count, "for torch's default"),
    "output_dir": path,
    "task_name": text,
    "model": (lambda v: v is None, "null in finetune.py, which rebuilds the network from `pretrained`"),
    "regularization.l1": non_negative,
    "regularization.label_smoothing": fraction,
    # model
    "model.hidden_dims": list_of(count, "a list of layer widths >= 1"),
    "model.activation": one_of(ACTIVATIONS),
    "model.dropout": fraction,
    "model.batch_norm": boolean,
    # data
    "data.dataset": one_of(DATASETS),
    "data.data_dir": path,
    "data.loader": one_of(LOADERS),
    "data.batch_size": count,
    "data.eval_batch_size": count,
    "data.val_size": count,
    "data.split_seed": seed,
    "data.seed": seed,
    "data.num_workers": non_negative_integer,
    "data.download": boolean,
    "data.classes": or_null(list_of(non_negative_integer, "a list of labels"), "for every label"),
    # own data (data=image_folder, data=csv)
    "data.root": path,
    "data.path": path,
    "data.test_path": or_null(path, "for a seeded test split of data.path"),
    "data.test_fraction": number(lambda v: 0 < v < 1, "a number in (0, 1)"),
    "data.mean": or_null(number(lambda v: True, "a number"), "for the training split's"),
    "data.std": or_null(positive, "for the training split's"),
    "data.cache_dir": path,
    "data.invert": one_of(("auto", True, False)),
    "data.fit": boolean,
    "data.box": integer(lambda v: v >= 1, "an integer >= 1 (at most data.size)"),
    "data.size": count,
    "data.label_column": or_null(text, "for Kaggle's layout (column label)"),
    "data.augment.enabled": boolean,
    "data.augment.translate": number(lambda v: 0 <= v < 1, "a number in [0, 1) (a fraction of the image size)"),
    "data.augment.degrees": number(lambda v: 0 <= v <= 180, "a number of degrees in [0, 180]"),
    "data.augment.scale": fraction,
    "data.augment.hflip": probability,
    "data.augment.elastic_alpha": number(lambda v: v >= 0, "a number >= 0 (pixels; 0 = off)"),
    "data.augment.elastic_sigma": number(lambda v: v > 0, "a number > 0 (pixels)"),
    "data.augment.erasing": probability,
    "data.augment.erasing_scale": (lambda v: list_of(number(lambda f: 0 < f <= 1, ""), "", exact_length=2)[0](v) and v[0] <= v[1],
                                   "[low, high] area fractions with 0 < low <= high <= 1"),
    "*.samples_per_class": or_null(count, "for all"),
    "*.train_fraction": or_null(number(lambda v: 0 < v <= 1, "a number in (0, 1]"), "for all"),
    "*.num_folds": or_null(integer(lambda v: v >= 2, "an integer >= 2"), "for one hold-out split"),
    "*.fold": or_null(non_negative_integer, "without num_folds"),
    # optimizer (adam, adamw, sgd)
    "optimizer.lr": positive,
    "optimizer.weight_decay": non_negative,
    "optimizer.momentum": fraction,
    "optimizer.nesterov": boolean,
    "optimizer.betas": list_of(fraction, "two numbers in [0, 1)", exact_length=2),
    "optimizer.fused": or_null(boolean, "for torch's default"),
    # scheduler (Lightning's lr_scheduler config around a torch scheduler)
    "scheduler.interval": one_of(("step", "epoch")),
    "scheduler.monitor": metric,
    "scheduler.scheduler.T_max": or_null(count, "for the whole run"),
    "scheduler.scheduler.total_steps": or_null(count, "for the whole run"),
    "scheduler.scheduler.total_iters": or_null(count, "for the whole run"),
    "scheduler.scheduler.eta_min": non_negative,
    "scheduler.scheduler.max_lr": positive,
    "scheduler.scheduler.pct_start": number(lambda v: 0 < v < 1, "a number in (0, 1)"),
    "scheduler.scheduler.cycle_momentum": boolean,
    "scheduler.scheduler.step_size": count,
    "scheduler.scheduler.gamma": positive,
    "scheduler.scheduler.factor": number(lambda v: 0 < v < 1, "a number in (0, 1)"),
    "scheduler.scheduler.patience": non_negative_integer,
    "scheduler.scheduler.mode": min_or_max,
    # trainer
    "trainer.accelerator": one_of(("auto", "cpu", "gpu", "cuda", "mps")),
    "trainer.devices": (lambda v: v == "auto" or v == -1 or (is_integer(v) and v >= 1)
                        or list_of(non_negative_integer, "")[0](v) and len(v) >= 1,
                        "auto, -1 (all), a number >= 1 or a list of device indices"),
    "trainer.strategy": one_of(("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "fsdp")),
    "trainer.strategy.timeout.seconds": number(lambda v: v >= 1, "a number of seconds >= 1"),
    "trainer.strategy.find_unused_parameters": boolean,
    "trainer.num_nodes": count,
    "trainer.sync_batchnorm": boolean,
    "trainer.precision": one_of(PRECISIONS),
    "trainer.max_epochs": integer(lambda v: v >= 1 or v == -1, "an integer >= 1 (or -1: no limit)"),
    "trainer.deterministic": (lambda v: isinstance(v, bool) or v == "warn", "true, false or warn"),
    "trainer.log_every_n_steps": count,
    "trainer.enable_model_summary": boolean,
    "trainer.enable_progress_bar": boolean,
    "trainer.default_root_dir": path,
    "trainer.plugins": or_null((lambda v: isinstance(v, Sequence) and not isinstance(v, str), "a list"), "for none"),
    # callbacks
    "callbacks.model_checkpoint.dirpath": path,
    "callbacks.model_checkpoint.filename": text,
    "callbacks.model_checkpoint.auto_insert_metric_name": boolean,
    "callbacks.model_checkpoint.monitor": metric,
    "callbacks.model_checkpoint.mode": min_or_max,
    "callbacks.model_checkpoint.save_top_k": integer(lambda v: v >= -1, "an integer >= -1 (-1: every epoch)"),
    "callbacks.last_checkpoint.dirpath": path,
    "callbacks.last_checkpoint.filename": text,
    "callbacks.last_checkpoint.enable_version_counter": boolean,
    "callbacks.early_stopping.monitor": metric,
    "callbacks.early_stopping.mode": min_or_max,
    "callbacks.early_stopping.patience": non_negative_integer,
    "callbacks.early_stopping.min_delta": non_negative,
    "callbacks.lr_monitor.logging_interval": one_of(("step", "epoch", None)),
    "callbacks.progress_bar.refresh_rate": non_negative_integer,
    "callbacks.stop_on_divergence.check_every_n_steps": count,
    "callbacks.stop_on_divergence.max_loss_vs_chance": number(lambda v: v > 1, "a number > 1"),
    "callbacks.hparams.exclude": list_of(text, "a list of config keys"),
    "callbacks.error_analysis.splits": list_of(one_of(("val", "test")), "a list of val and/or test", 1),
    "callbacks.error_analysis.max_mistakes": non_negative_integer,
    "callbacks.temperature_scaling.fit": boolean,
    "callbacks.temperature_scaling.bins": count,
    "callbacks.training_samples.count": non_negative_integer,
    "callbacks.parameter_histograms.enabled": boolean,
    "callbacks.model_graph.enabled": boolean,
    # loggers
    "logger.tensorboard.save_dir": path,
    "logger.tensorboard.name": (lambda v: isinstance(v, str), "a string"),
    "logger.tensorboard.version": (lambda v: isinstance(v, str | int), "a string"),
    "logger.tensorboard.default_hp_metric": boolean,
    "logger.csv.save_dir": path,
    "logger.csv.name": (lambda v: isinstance(v, str), "a string"),
    "logger.csv.version": (lambda v: isinstance(v, str | int), "a string"),
    "logger.mlflow.tracking_uri": text,
    "logger.mlflow.artifact_location": or_null(path, "for MLflow's default"),
    "logger.mlflow.log_model": (lambda v: isinstance(v, bool) or v == "all", "true, false or all"),
    "logger.mlflow.task_name": text,
    "logger.mlflow.output_dir": path,
    "logger.wandb.project": text,
    "logger.wandb.offline": boolean,
    "logger.wandb.log_model": (lambda v: isinstance(v, bool) or v == "all", "true, false or all"),
    "logger.wandb.task_name": text,
    "logger.wandb.output_dir": path,
    # finetune.py
    "pretrained": (lambda v: isinstance(v, str) and v != "",
                   "a checkpoint written by train.py (required), e.g. pretrained=<run>/checkpoints/last.ckpt"),
    "finetune.freeze": (lambda v: v in ("none", "backbone", None) or (is_integer(v) and v >= 0),
                        "none, backbone or a number of hidden layers"),
    "finetune.unfreeze_at_epoch": or_null(count, "to keep them frozen"),
    "finetune.backbone_lr_scale": number(lambda v: v > 0, "a number > 0 (finetune.freeze stops layers)"),
    "finetune.reset_head": one_of(("auto", True, False)),
    # eval.py
    "split": one_of(("test", "val")),
    "data_dir": path,
    "top_confused": non_negative_integer,
    "ood": or_null(text, "for none (else fashion_mnist, kmnist, mnist or a folder of pictures)"),
    "thresholds": list_of(fraction, "a list of probabilities in [0, 1)", 1),
    # predict.py
    "inputs": (lambda v: isinstance(v, str) and v != "" or list_of(path, "")[0](v) and len(v) > 0,
               "a picture, a folder, a pattern or a list of them"),
    "top_k": count,
    "invert": one_of(("auto", True, False)),
    "fit": boolean,
    "box": or_null(integer(lambda v: 1 <= v <= 28, "an integer in [1, 28]"), "for the dataset's own"),
    # serve.py (predict.py's top_k, invert, fit, box too)
    "host": text,
    "port": integer(lambda v: 0 <= v <= 65535, "a port number in [0, 65535] (0: any free port)"),
    "reject_below": or_null(fraction, "to always answer"),
    "save_dir": path,
    "max_upload_bytes": integer(lambda v: v >= 1024, "a number of bytes >= 1024"),
    "max_pixels": integer(lambda v: v >= 28 * 28, "a number of pixels >= 784"),
    # export.py
    "format": one_of(EXPORT_FORMATS),
    "output": optional_path,
    "quantize": one_of((None, "int8")),
    # lr_find.py (the LR range test)
    "lr_find.min_lr": positive,
    "lr_find.max_lr": positive,
    "lr_find.num_training": integer(lambda v: v >= 20, "an integer >= 20 (steps; the first 10 are not used to suggest)"),
    "lr_find.mode": one_of(("exponential", "linear")),
    "lr_find.early_stop_threshold": or_null(positive, "to run every step"),
    # Optuna sweeper (hparams_search=mlp_optuna); its search space is checked against the rules above
    "hydra.sweeper.direction": direction,
    "hydra.sweeper.objectives": or_null(list_of(one_of(OBJECTIVES), f"a list of metrics from {', '.join(OBJECTIVES)} "
                                                "(each job's metrics.json), one per direction", min_length=1),
                                        "for what train.py returns (the monitored metric)"),
    "hydra.sweeper.replicates": or_null(text, "for one run per trial (e.g. 'seed=0,1,2' or 'data.fold=range(5)')"),
    "hydra.sweeper.study_name": or_null(text, "for a generated name"),
    "hydra.sweeper.storage": or_null(text, "to keep the study in memory"),
    "hydra.sweeper.n_trials": count,
    "hydra.sweeper.n_jobs": count,
    "hydra.sweeper.max_failure_rate": number(lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "hydra.sweeper.search_space": or_null((lambda v: isinstance(v, Mapping), "a mapping"), "(use params)"),
    "hydra.sweeper.custom_search_space": or_null(text, "for none"),
    "hydra.sweeper.sampler.seed": or_null(seed, "for random"),
    "hydra.sweeper.sampler.n_startup_trials": non_negative_integer,
    "hydra.sweeper.sampler.n_ei_candidates": count,
    "hydra.sweeper.sampler.prior_weight": positive,
    "hydra.sweeper.sampler.consider_prior": boolean,
    "hydra.sweeper.sampler.consider_magic_clip": boolean,
    "hydra.sweeper.sampler.consider_endpoints": boolean,
    "hydra.sweeper.sampler.multivariate": or_null(boolean, "for Optuna's default"),
    "hydra.sweeper.sampler.warn_independent_sampling": boolean,
    "hydra.sweeper.sampler.constant_liar": boolean,
    "hydra.sweeper.sampler.deterministic_objective": boolean,
    "hydra.sweeper.sampler.sigma0": or_null(positive, "for a sixth of the space's width"),
    "hydra.sweeper.sampler.qmc_type": one_of(("sobol", "halton")),
    "hydra.sweeper.sampler.scramble": boolean,
    "hydra.sweeper.sampler.population_size": integer(lambda v: v >= 2, "an integer >= 2"),
    "hydra.sweeper.sampler.mutation_prob": or_null(probability, "for 1/(keys searched)"),
    "hydra.sweeper.sampler.crossover_prob": probability,
    "hydra.sweeper.sampler.swapping_prob": probability,
    "hydra.sweeper.importance_min_trials": count,
    "hydra.sweeper.trial": or_null(non_negative_integer, "outside a search (the sweeper sets it per job)"),
    "hydra.sweeper.pruner": or_null(pruner, "for none"),
    "hydra.sweeper.pruner.n_startup_trials": non_negative_integer,
    "hydra.sweeper.pruner.n_warmup_steps": non_negative_integer,
    "hydra.sweeper.pruner.interval_steps": count,
    "hydra.sweeper.pruner.n_min_trials": count,
    "hydra.sweeper.pruner.min_resource": epochs_or_auto,
    "hydra.sweeper.pruner.max_resource": epochs_or_auto,
    "hydra.sweeper.pruner.reduction_factor": integer(lambda v: v >= 2, "an integer >= 2"),
    "hydra.sweeper.pruner.min_early_stopping_rate": non_negative_integer,
    # the pruning callback (hparams_search=mlp_optuna) reads the sweeper's settings
    "callbacks.optuna_pruning.monitor": metric,
    "callbacks.optuna_pruning.storage": or_null(text, "outside a search"),
    "callbacks.optuna_pruning.study_name": or_null(text, "outside a search"),
    "callbacks.optuna_pruning.trial": or_null(non_negative_integer, "outside a search"),
    "callbacks.optuna_pruning.pruner": or_null(pruner, "for none"),
}


def rule_for(key: str) -> Rule | None:
    """The rule of a dotted key, or of its last part where the table says ``*.<part>``."""
    return RULES.get(key) or RULES.get("*." + key.rsplit(".", 1)[-1])


def shown(value: Any) -> str:
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value)
    if isinstance(value, tuple):
        value = list(value)
    return repr(value) if isinstance(value, str) else "null" if value is None else str(value)


def problem(key: str, value: Any, allowed: str) -> str:
    return f"{key}={shown(value)} must be {allowed}"


def problems(values: Mapping[str, Any]) -> list[str]:
    """``key=value must be <allowed>`` for every value its rule refuses."""
    found = []
    for key, value in values.items():
        rule = rule_for(key)
        if rule is not None and not rule[0](value):
            found.append(problem(key, value, rule[1]))
    return found


def check(values: Mapping[str, Any]) -> None:
    """Raise one ConfigError naming every refused value: what constructors call on their arguments."""
    found = problems(values) + relation_problems(values)
    if found:
        raise ConfigError("; ".join(found))


def check_arguments(section: str, arguments: Mapping[str, Any]) -> None:
    """``check`` for a constructor's own arguments, by parameter name: ``MLP(dropout=1.5)`` is checked as
    ``model.dropout``, the key its config sets. Arguments without a rule (``in_features``, ``self``) pass."""
    check({f"{section}.{name}": value for name, value in arguments.items()})


# --- rules between keys, and against the data ------------------------------------------------------------------

def relation_problems(values: Mapping[str, Any], prefix: str = "data.") -> list[str]:
    """Rules between the data keys that the data module and the config both know before any file is read."""
    get = lambda key: values.get(prefix + key)  # noqa: E731
    found = []
    folds, fold = get("num_folds"), get("fold")
    if folds is None and fold is not None:
        found.append(problem(prefix + "fold", fold, f"null unless {prefix}num_folds is set"))
    elif rule_for("num_folds")[0](folds) and folds is not None and not (is_integer(fold) and 0 <= fold < folds):
        found.append(problem(prefix + "fold", fold, f"an integer in [0, {prefix}num_folds={folds}) "
                                                  f"(every fold: -m '{prefix}fold=range({folds})')"))
    if get("samples_per_class") is not None and get("train_fraction") is not None:
        found.append(f"{prefix}samples_per_class and {prefix}train_fraction must not both be set (choose one)")
    if prefix + "mean" in values and prefix + "std" in values and (get("mean") is None) != (get("std") is None):
        found.append(f"{prefix}mean={shown(get('mean'))} and {prefix}std={shown(get('std'))} must both be numbers, or both "
                     "null for the training split's statistics")
    box, size = get("box"), get("size")
    if is_integer(box) and is_integer(size) and box > size:
        found.append(problem(prefix + "box", box, f"at most {prefix}size={size}"))
    classes, dataset = get("classes"), get("dataset")
    if classes is not None and rule_for("data.classes")[0](classes) and dataset in DATASETS:
        labels = len(DATASETS[dataset].class_names)
        if len(set(classes)) != len(classes) or len(classes) < 2 or max(classes) >= labels:
            found.append(problem(prefix + "classes", classes, f"at least two distinct labels from 0 to {labels - 1} "
                                                              f"({dataset} has {labels} classes)"))
    return found


def prunes(pruner: Any) -> bool:
    """A sweeper's pruner (its name, or its config with ``_target_``) that can stop trials: not none, not NopPruner."""
    if pruner is None or pruner == "none":
        return False
    return not (isinstance(pruner, Mapping) and str(pruner.get("_target_", "")).endswith("NopPruner"))


def search_problems(values: Mapping[str, Any], pruner: Any) -> list[str]:
    """An Optuna search's directions against its objectives, and the pruner against what Optuna can prune."""
    direction, objectives = values.get("hydra.sweeper.direction"), values.get("hydra.sweeper.objectives")
    directions = [direction] if isinstance(direction, str) else list(direction or [])
    found = []
    if len(directions) > 1 and objectives is None:
        found.append(f"hydra.sweeper.direction={shown(directions)} must come with hydra.sweeper.objectives, one metric "
                     f"per direction (e.g. hydra.sweeper.objectives=[val/acc,train_time_s]; from {', '.join(OBJECTIVES)})")
    if isinstance(objectives, Sequence) and not isinstance(objectives, str) and len(objectives) != len(directions):
        found.append(problem("hydra.sweeper.objectives", objectives, f"one metric per direction "
                                                                     f"(hydra.sweeper.direction={shown(directions)})"))
    if len(directions) > 1 and prunes(pruner):
        found.append(f"hydra.sweeper.pruner must be none with several objectives (hydra.sweeper.direction="
                     f"{shown(directions)}): Optuna prunes single-objective studies only; add hydra/sweeper/pruner=none")
    if values.get("hydra.sweeper.replicates") and prunes(pruner):
        found.append(f"hydra.sweeper.pruner must be none when each trial is several runs (hydra.sweeper.replicates="
                     f"{shown(values['hydra.sweeper.replicates'])}): a trial is scored on their mean, at the end; "
                     "add hydra/sweeper/pruner=none")
    return found


def range_problems(values: Mapping[str, Any]) -> list[str]:
    """Keys that bound a range: the upper end above the lower one."""
    found = []
    for low, high in (("lr_find.min_lr", "lr_find.max_lr"),):
        if is_number(values.get(low)) and is_number(values.get(high)) and values[high] <= values[low]:
            found.append(problem(high, values[high], f"above {low}={shown(values[low])}"))
    return found


def split_problems(num_train: int, values: Mapping[str, Any], where: str) -> list[str]:
    """``data.val_size``, ``data.num_folds`` and ``data.batch_size`` against the ``num_train`` images of the
    official training set (read from its labels file's header at compose time, from the data at setup)."""
    val_size, folds, batch_size = values.get("data.val_size"), values.get("data.num_folds"), values.get("data.batch_size")
    found = []
    if folds is None and is_integer(val_size) and val_size >= num_train:
        found.append(problem("data.val_size", val_size, f"smaller than the {num_train} training images{where}"))
        return found
    if is_integer(folds) and folds > num_train:
        found.append(problem("data.num_folds", folds, f"at most the {num_train} training images{where}"))
        return found
    train_split = num_train - (num_train // folds if is_integer(folds) and folds >= 2 else val_size or 0)
    if is_integer(batch_size) and batch_size > train_split:
        held = f"{num_train // folds} in each of {folds} folds" if is_integer(folds) and folds >= 2 else f"data.val_size={val_size}"
        found.append(problem("data.batch_size", batch_size, f"at most the {train_split} images of the training split "
                                                            f"({num_train}{where} less {held})"))
    return found
