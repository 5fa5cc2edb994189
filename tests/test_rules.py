"""Every key a user can type has one rule, checked when the config is composed and by the object it builds."""

from __future__ import annotations

import lightning as L
import pytest
from omegaconf import OmegaConf, open_dict

from conftest import CONF_DIR, compose_config
from mlplab.config import validate, validate_sweep
from mlplab.data.augment import BatchAugment
from mlplab.data.datamodule import MNISTDataModule
from mlplab.errors import ConfigError
from mlplab.models import MLP
from mlplab.pipeline import build_datamodule, build_module
from mlplab.rules import rule_for
from mlplab.search.optuna_configs import PRUNERS, SAMPLERS

ENTRY_POINTS = {
    "train": [[f"{group}={option}"] for group in ("optimizer", "scheduler", "trainer", "logger")
              for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))]
             + [["hparams_search=mlp_optuna", f"hydra/sweeper/pruner={pruner}"] for pruner in PRUNERS]
             + [["hparams_search=mlp_optuna", f"hydra/sweeper/sampler={sampler}"] for sampler in SAMPLERS]
             + [["debug=fast"], ["data=fashion_mnist"], ["data=kmnist"], ["data=image_folder", "data.root=x"], ["data=csv", "data.path=x"]],
    "finetune": [[]], "eval": [[], ["data=mnist"]], "predict": [[]], "export": [[]], "lr_find": [[]], "serve": [[]],
}


def typed_keys(node: dict, path: str = "") -> list[str]:
    """Every dotted key of a config as stored (``OmegaConf.to_container(resolve=False)``): no value is resolved."""
    keys = []
    for key, child in node.items():
        if isinstance(child, dict):
            keys += typed_keys(child, f"{path}{key}.")
        elif key != "_target_":
            keys.append(f"{path}{key}")
    return keys


def test_every_key_of_every_entry_point_has_a_rule():
    without_rule = set()
    for name, choices in ENTRY_POINTS.items():
        for overrides in choices:
            cfg = compose_config(name, overrides, with_hydra=True)
            keys = typed_keys(OmegaConf.to_container(cfg, resolve=False))
            keys = [k for k in keys if not k.startswith("hydra.") or (k.startswith("hydra.sweeper.")
                    and not k.startswith("hydra.sweeper.params.") and "optuna" in str(cfg.hydra.sweeper.get("_target_")))]
            without_rule |= {key for key in keys if rule_for(key) is None}
    assert not without_rule


@pytest.mark.parametrize(("overrides", "message"), [
    (["optimizer.lr=inf"], "optimizer.lr=inf must be a number > 0"),
    (["optimizer.lr=nan"], "optimizer.lr=nan must be a number > 0"),
    (["data.batch_size=100000000", "data.val_size=100"],
     "data.batch_size=100000000 must be at most the 500 images of the training split"),
    (["scheduler=cosine", "scheduler.scheduler.T_max=-3"], "scheduler.scheduler.T_max=-3 must be an integer >= 1"),
    (["data.classes=[3,12]"], "data.classes=[3, 12] must be at least two distinct labels from 0 to 9 (mnist has 10 classes)"),
    (["+data.num_folds=601", "+data.fold=0"], "data.num_folds=601 must be at most the 600 training images"),
    (["trainer.devices=64"], "trainer.devices=64 must be at most"),
    (["trainer=gpu"], "needs a GPU, but this machine has"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0 must be an integer >= 1"),
    (["callbacks.model_checkpoint.monitor=val/accuracy"], "callbacks.model_checkpoint.monitor='val/accuracy' must be one of val/acc"),
    (["seed=-1"], "seed=-1 must be an integer in [0, 2**32)"),
])
def test_meaningless_values_are_refused_before_the_run(overrides, message, data_dir):
    with pytest.raises(ConfigError) as err:
        validate(compose_config("train", ["debug=fast", *overrides, f"data.data_dir={data_dir}"]))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_devices_are_counted_against_this_machine(data_dir, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with pytest.raises(ConfigError, match=r"trainer.devices=64 must be at most 2 CPU processes, one per core here "
                                          r"\(this machine has 2 CPU cores and no GPUs\)"):
        validate(compose_config("train", ["debug=fast", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=64",
                                f"data.data_dir={data_dir}"]))
    validate(compose_config("train", ["debug=fast", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"data.data_dir={data_dir}"]))



def test_synchronized_batch_norm_is_refused_on_cpu_processes(data_dir):
    """The default network has batch norm; torch's SyncBatchNorm would fail in every worker after they start."""
    with pytest.raises(ConfigError, match=r"^trainer.sync_batchnorm=true must be false on CPU processes: torch's "
                                          r"SyncBatchNorm runs on GPUs only \(this machine has"):
        validate(compose_config("train", ["debug=fast", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                                          "trainer.sync_batchnorm=true", f"data.data_dir={data_dir}"]))

def test_the_search_space_of_a_sweep_is_checked(data_dir):
    cfg = compose_config("train", ["debug=fast", f"data.data_dir={data_dir}"])
    with open_dict(cfg):
        cfg.hydra = {"sweeper": {"n_trials": 0, "params": {"model.dropout": "interval(0.0, 1.5)", "data.batch_size": "choice(32, 0)"}},
                     "overrides": {"task": []}, "runtime": {"choices": {}}}
    with pytest.raises(ConfigError) as err:
        validate_sweep(cfg)
    assert str(err.value) == ("hydra.sweeper.n_trials=0 must be an integer >= 1; hydra.sweeper.params.model.dropout=1.5 must be "
                              "a number in [0, 1) (in the search space); hydra.sweeper.params.data.batch_size=0 must be an "
                              "integer >= 1 (in the search space)")


@pytest.mark.parametrize(("build", "message"), [
    (lambda: MLP(784, 10, dropout=1.5), "model.dropout=1.5 must be a number in [0, 1)"),
    (lambda: BatchAugment(scale=float("inf")), "data.augment.scale=inf must be a number in [0, 1)"),
    (lambda: MNISTDataModule(batch_size=0, classes=[1, 1]), "data.batch_size=0 must be an integer >= 1"),
])
def test_objects_built_outside_hydra_get_the_same_rule_and_words(build, message, data_dir):
    with pytest.raises(ConfigError) as err:
        build()
    assert message in str(err.value)
    key = message.split("=")[0]
    value = message.split("=")[1].split(" must")[0]
    composed = compose_config("train", ["debug=fast", f"{key}={value}", f"data.data_dir={data_dir}"])
    assert repr(OmegaConf.select(composed, key)) == value  # the override is the same number (inf: a float, not 'inf')
    with pytest.raises(ConfigError) as from_config:
        validate(composed)
    assert message in str(from_config.value)  # the same line for `python train.py model.dropout=1.5`


def test_a_one_cycle_schedule_too_short_to_warm_up_is_refused(data_dir, tmp_path):
    """1 epoch of 5 batches at pct_start=0.2 is one warm-up step: torch's OneCycleLR would divide by zero."""
    cfg = compose_config("train", ["debug=fast", "data.batch_size=100", "scheduler=onecycle", f"data.data_dir={data_dir}"], tmp_path)
    module = build_module(cfg, build_datamodule(cfg))
    module.trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(module.trainer), "estimated_stepping_batches", property(lambda self: 5))
        with pytest.raises(ConfigError, match=r"scheduler.scheduler.pct_start=0.2 must be other than 1/5: one warm-up step of the 5 steps of this run"):
            module.configure_optimizers()


def test_the_bottom_layer_lists_what_each_implementation_offers():
    """mlplab.choices holds the names as plain literals; each list must be what the code behind it implements."""
    from typing import get_args

    import torchvision.datasets
    from lightning.fabric.plugins.precision import precision as lightning_precision  # private: no public list

    from mlplab import choices
    from mlplab.data.datamodule import MNISTDataModule
    from mlplab.export import EXPORTERS
    from mlplab.models import ACTIVATIONS

    assert list(choices.ACTIVATIONS) == list(ACTIVATIONS)
    assert list(choices.SAMPLERS) == list(SAMPLERS) and list(choices.PRUNERS) == list(PRUNERS)
    assert list(choices.EXPORT_FORMATS) == list(EXPORTERS)
    aliases = (lightning_precision._PRECISION_INPUT_STR, lightning_precision._PRECISION_INPUT_STR_ALIAS,
               lightning_precision._PRECISION_INPUT_INT)
    assert set(choices.PRECISIONS) == {"auto", *(value for alias in aliases for value in get_args(alias))}
    for info in choices.DATASETS.values():
        assert issubclass(getattr(torchvision.datasets, info.folder), torchvision.datasets.MNIST)
        assert len(info.class_names) == 10
    for loader in choices.LOADERS:
        assert MNISTDataModule(loader=loader).hparams.loader == loader


def test_validation_imports_nothing_heavy():
    """The rules, the config checks and the entry points' wrapper load no torch, Lightning, torchvision,
    torchmetrics, pyarrow, PIL or Optuna: a typo is answered before they load."""
    import subprocess
    import sys

    heavy = ("torch", "lightning", "torchvision", "torchmetrics", "pyarrow", "PIL", "optuna")
    code = ("import sys, mlplab.rules, mlplab.config, mlplab.cli, hydra_plugins.mlplab_optuna_sweeper.sweeper; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
