"""Every config group option composes, and the objects it names can be built."""

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from conftest import CONF_DIR, compose_config, composes, refusal, run_script
from mlplab.composition import parsed_override
from mlplab.config import argument_problems, swept_name_problems
from mlplab.pipeline import build_datamodule, build_module, build_trainer


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_groups_have_the_documented_options():
    assert options("data") == ["csv", "fashion_mnist", "image_folder", "kmnist", "mnist"]
    assert options("optimizer") == ["adam", "adamw", "sgd"]
    assert options("scheduler") == ["cosine", "none", "onecycle", "plateau", "step"]
    assert options("logger") == ["csv", "many", "mlflow", "tensorboard", "wandb"]
    assert options("trainer") == ["cpu", "ddp", "default", "gpu"]


@pytest.mark.parametrize("dataset", ["fashion_mnist", "kmnist", "mnist"])  # own data: tests/test_own_data.py
def test_data_options_build(dataset, data_dir):
    cfg = compose_config("train", [f"data={dataset}", f"data.data_dir={data_dir}"])
    dm = build_datamodule(cfg)
    assert dm.hparams.dataset == dataset and dm.num_classes == 10


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_options_build(optimizer, scheduler, data_dir, tmp_path):
    cfg = compose_config("train", [f"optimizer={optimizer}", f"scheduler={scheduler}", f"data.data_dir={data_dir}"], tmp_path)
    module = build_module(cfg, build_datamodule(cfg))
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    module.trainer = trainer
    with pytest.MonkeyPatch.context() as mp:  # a run of 30 steps, without loading data to count them
        mp.setattr(type(trainer), "estimated_stepping_batches", property(lambda self: 30))
        built = module.configure_optimizers()
    opt = built["optimizer"] if isinstance(built, dict) else built
    assert type(opt).__name__.lower() == optimizer
    if scheduler == "none":
        assert isinstance(built, torch.optim.Optimizer)
    else:
        assert isinstance(built["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau)


def test_onecycle_spans_the_whole_run(data_dir, tmp_path):
    cfg = compose_config("train", ["scheduler=onecycle", f"data.data_dir={data_dir}"], tmp_path)
    module = build_module(cfg, build_datamodule(cfg))
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    module.trainer = trainer
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(trainer), "estimated_stepping_batches", property(lambda self: 30))
        scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert scheduler.total_steps == 30


@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_the_momentum_a_user_sets_is_the_one_the_optimizer_uses(scheduler, data_dir, tmp_path):
    """torch's OneCycleLR cycles SGD's momentum and Adam's beta1 unless told not to: the config's values would be ignored."""
    for optimizer, key, value in (("sgd", "momentum", 0.5), ("adam", "betas", [0.8, 0.99])):
        cfg = compose_config("train", [f"optimizer={optimizer}", f"optimizer.{key}={value}", f"scheduler={scheduler}",
                                       f"data.data_dir={data_dir}"], tmp_path)
        module = build_module(cfg, build_datamodule(cfg))
        module.trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(type(module.trainer), "estimated_stepping_batches", property(lambda self: 30))
            built = module.configure_optimizers()
        opt, schedule = (built["optimizer"], built["lr_scheduler"]["scheduler"]) if isinstance(built, dict) else (built, None)
        for _ in range(5):
            opt.step()
            if schedule is not None:
                schedule.step(*[1.0] * isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau))  # its metric
        assert all(list(group[key]) == value if key == "betas" else group[key] == value for group in opt.param_groups)


@pytest.mark.parametrize("logger", options("logger"))
@pytest.mark.parametrize("trainer", ["cpu", "default", "ddp"])
def test_trainer_callbacks_and_logger_options_build(trainer, logger, tmp_path, monkeypatch, tmp_path_factory):
    # one MLflow store for all of them (creating one costs seconds), not the repo's logs/mlflow.db
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.getbasetemp()}/mlflow.db")
    cfg = compose_config("train", [f"trainer={trainer}", f"logger={logger}", "trainer.accelerator=cpu"], tmp_path)
    callbacks = {name: instantiate(c) for name, c in cfg.callbacks.items()}
    assert callbacks["model_checkpoint"].dirpath == str(tmp_path / "checkpoints")
    assert callbacks["early_stopping"].monitor == "val/acc"
    built = build_trainer(cfg)  # a DDP trainer starts no process before fit
    assert built.max_epochs == 10
    expected = {"many": ["ten", "mlf"]}.get(logger, [logger[:3]])  # many: TensorBoard and MLflow
    assert [type(each).__name__.lower()[:3] for each in built.loggers] == expected
    assert (type(built.strategy).__name__, built.num_devices) == (("DDPStrategy", 2) if trainer == "ddp" else ("SingleDeviceStrategy", 1))


def test_gpu_trainer_option_composes():
    cfg = compose_config("train", ["trainer=gpu"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == 1


def test_user_config_keys_exist():
    """The keys the README and later features rely on are spelled as documented."""
    cfg = compose_config("train", ["optimizer=sgd"])
    for key in (
        "data.batch_size", "data.val_size", "data.data_dir", "model.hidden_dims", "model.dropout",
        "model.activation", "optimizer.lr", "optimizer.weight_decay", "optimizer.momentum", "regularization.l1",
        "trainer.max_epochs", "trainer.precision", "trainer.deterministic", "callbacks.early_stopping.patience",
        "compile", "seed", "ckpt_path",
    ):
        node, *path = key.split(".")
        value = cfg[node]
        for part in path:
            assert part in value, key
            value = value[part]


def test_tutorial_experiment_is_the_original_recipe():
    cfg = compose_config("train", ["+experiment=tutorial"])
    assert cfg.data.batch_size == 64 and cfg.optimizer.lr == 1e-3 and cfg.optimizer._target_ == "torch.optim.Adam"
    assert not cfg.scheduler and cfg.data.augment.enabled is False  # scheduler=none: constant LR
    assert cfg.regularization.label_smoothing == 0 and cfg.trainer.precision == "32-true"
    assert list(cfg.model.hidden_dims) == [512, 256] and cfg.model.activation == "relu"


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads the CPU's flags from /proc/cpuinfo")
def test_auto_precision_is_bf16_exactly_where_the_cpu_computes_it_natively(tmp_path):
    native_bf16 = bool({"avx512_bf16", "amx_tile"} & set(Path("/proc/cpuinfo").read_text().split()))
    trainer = build_trainer(compose_config("train", ["trainer.accelerator=cpu", "logger=csv"], tmp_path))
    assert trainer.precision == ("bf16-mixed" if native_bf16 else "32-true")


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer=adamx", "optimizer=adamx is not an option; choose one of adam, adamw, sgd"),
        ("-m scheduler=none,cosinus", "scheduler=cosinus is not an option; choose one of cosine, none, onecycle, plateau, step"),
        ("+experiment=tutorialx", "experiment=tutorialx is not an option; choose one of fashion_mnist_long, mnist_long, tutorial"),
        ("-m +experiment=tutorial,tutorialx", "experiment=tutorialx is not an option; choose one of fashion_mnist_long, mnist_long, tutorial"),
        ("logger=[tensorboard,mlfow]", "logger=mlfow is not an option; choose one of csv, many, mlflow, tensorboard, wandb"),
    ],
)
def test_unknown_group_option_is_one_line_and_leaves_nothing(override, message, tmp_path, caplog, capsys):
    assert refusal("train.py", [*override.split(), "trainer.max_epochs=1"], tmp_path, caplog, capsys) == message


def test_a_sweep_names_only_options_and_keys_there_are():
    cfg = compose_config("train", with_hydra=True)  # a multirun's config: composed without its sweeps
    with open_dict(cfg):
        cfg.hydra.overrides.task = ["logger=[tensorboard,csv],[csv]", "trainer.max_epochs=1,2", "+experiment=tutorial,mnist_long"]
        assert swept_name_problems(cfg) == []
        cfg.hydra.overrides.task = ["optimizer=adam,adamw", "optimizer.betas=[0.9,0.99]", "++optimizer.fused=true"]
        assert swept_name_problems(cfg) == []  # a key every swept option has; ++ sets or adds
        cfg.hydra.overrides.task = ["logger=[tensorboard],[csvv]", "trainer.max_epoch=1,2"]
        assert swept_name_problems(cfg) == [
            "logger=csvv is not an option; choose one of csv, many, mlflow, tensorboard, wandb",
            "trainer.max_epoch is not a setting: trainer has _target_, default_root_dir, accelerator, devices, precision, "
            "max_epochs, deterministic, log_every_n_steps, enable_model_summary, enable_progress_bar, plugins; did you "
            "mean trainer.max_epochs?"]


def test_known_group_options_and_plugin_groups_compose(capsys):
    shown = composes("train.py", ["optimizer=sgd", "data=kmnist", "hydra/launcher=joblib", "logger=[tensorboard,mlflow]",
                                  "logger.mlflow.log_model=true"], capsys)
    assert "dataset: kmnist" in shown and "log_model: true" in shown and "JoblibLauncher" in shown


@pytest.mark.parametrize(
    "config, overrides, message",
    [
        ("train", ["optimizer.lrr=1"],
         "optimizer.lrr is not a setting: optimizer has _target_, lr, weight_decay, betas, fused; did you mean optimizer.lr?"),
        ("train", ["-m", "optimizer.lr=1e-3,4e-3", "trainer.max_epoch=1,2"], "did you mean trainer.max_epochs?"),
        ("train", ["-m", "optimizer.lr=1e-3,4e-3", "trainer.max_epoch=1"], "did you mean trainer.max_epochs?"),
        ("train", ["max_epochs=3"], "did you mean trainer.max_epochs?"),
        ("train", ["optimzer=sgd"], "did you mean optimizer?"),
        ("train", ["optimizer=sgd", "optimizer.betas=[0.9,0.99]"], "optimizer.betas is a setting of optimizer=adam or "
         "optimizer=adamw only, not of optimizer=sgd (chosen); choose one of those"),
        ("train", ["optimizer.momentum=0.9"], "optimizer.momentum is a setting of optimizer=sgd only, not of optimizer=adam "
         "(chosen); choose optimizer=sgd"),
        ("train", ["data.root=pictures"], "data.root is a setting of data=image_folder only, not of data=mnist (chosen)"),
        ("train", ["model.hidden_dims.2=64"], "model.hidden_dims is a list of 2"),
        ("train", ["optimizer.lr=[1"], "optimizer.lr=[1 cannot be read: no viable alternative at input '[1' (Hydra's override grammar"),
        ("train", ["optimizer.lr=1e-3,2e-3"], "optimizer.lr=1e-3,2e-3 is a sweep: add -m (--multirun) for one job per value"),
        ("train", ["-m", "optimizer=sgd,adam", "optimizer.momentum=0.9"], "optimizer.momentum is a setting of optimizer=sgd "
         "only, not of optimizer=adam (the default a sweep shares); sweep just the options that have it and set it with "
         "++optimizer.momentum=0.9"),
        ("train", ["-m", "optimizer=sgd,adam,adamw", "optimizer.betas=[0.9,0.99]"],  # adam composes: refused before job 0
         "optimizer.betas is a setting of optimizer=adam or optimizer=adamw only, not of optimizer=sgd; sweep just the options"),
        ("train", ["-m", "scheduler=step,cosine", "scheduler.scheduler.step_size=2"],
         "not of scheduler=cosine nor of scheduler=onecycle (the default a sweep shares)"),
        ("eval", ["ckpt_path=x.ckpt", "splt=val"], "did you mean split?"),
        ("finetune", ["pretrained=x.ckpt", "finetune.freez=none"], "did you mean finetune.freeze?"),
    ],
)
def test_unknown_key_is_one_line_naming_the_keys_there_are(config, overrides, message, tmp_path, caplog, capsys):
    assert message in refusal(f"{config}.py", overrides, tmp_path, caplog, capsys)


def test_existing_and_added_keys_compose(capsys):
    shown = composes("train.py", [
        "optimizer=sgd", "optimizer.momentum=0.9", "model.hidden_dims=[128]", "model.hidden_dims.0=64",
        "+trainer.limit_train_batches=3", "~callbacks.early_stopping", "+experiment=tutorial", "data.batch_size=32",
        "hydra.run.dir=/tmp/x"], capsys)
    assert "limit_train_batches: 3" in shown and "  early_stopping:" not in shown and "- 64" in shown
    assert "split: val" in composes("eval.py", ["ckpt_path=x.ckpt", "split=val", "data=fashion_mnist", "data.val_size=10"], capsys)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["hydra/launcher=jobli"], "hydra/launcher=jobli is not an option; choose one of basic, joblib, slurm, submitit_local, submitit_slurm"),
        (["hparams_search=mlp_optuna", "hydra/sweeper/pruner=medain"],
         "hydra/sweeper/pruner=medain is not an option; choose one of hyperband, median, none, successive_halving"),
        (["hparams_search=mlp_optuna", "hydra.sweeper.n_trial=3"], "hydra.sweeper.n_trial is not a setting: hydra.sweeper "
         "has _target_, sampler, pruner, direction, objectives, replicates, study_name, storage, n_trials, n_jobs, params, importance_min_trials, "
         "trial; did you mean hydra.sweeper.n_trials?"),
        (["hparams_search=mlp_optuna", "hydra.sweeper.sampler.seed=abc"],
         "hydra.sweeper.sampler.seed=abc: Value 'abc' of type 'str' could not be converted to Integer"),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=two"],
         "hydra.launcher.n_jobs=two: Value 'two' of type 'str' could not be converted to Integer"),
        (["hydra.job.chdir=maybe"], "hydra.job.chdir=maybe: Value 'maybe' is not a valid bool (type str)"),
        (["hydra.job.env_set.OMP=1"], "hydra.job.env_set has no keys; to add a new key: +hydra.job.env_set.OMP=1"),
        (["hparams_search=mlp_optuna", "hydra.sweeper.params.optimizer.lr=interval(1e-4,1e-2)"],
         "hydra.sweeper.params.optimizer.lr=interval(1e-4,1e-2) cannot be swept: give the search space on the command "
         "line as optimizer.lr=interval(1e-4,1e-2), or under hydra.sweeper.params in a conf/hparams_search file"),
        (["hparams_search=mlp_optuna", "hydra.sweeper.params.optimizer.lr='tag(log,interval(1e-4,1e-2))'"],
         "give the search space on the command line as optimizer.lr=tag(log,interval(1e-4,1e-2))"),
        (["-m", "hydra.job.chdir=true,false"], "hydra.job.chdir=true,false cannot be swept: Hydra's own settings take one value"),
    ],
)
def test_a_bad_hydra_setting_is_one_line_where_hydra_prints_a_paragraph(overrides, message, tmp_path, caplog, capsys):
    assert message in refusal("train.py", overrides, tmp_path, caplog, capsys)


def test_hydra_settings_hydra_takes_compose(capsys):
    shown = composes("train.py", [
        "hparams_search=mlp_optuna", "hydra/sweeper/pruner=hyperband", "hydra.sweeper.pruner.reduction_factor=2",
        "hydra.sweeper.n_trials=3", "hydra.sweeper.storage=sqlite:///x.db", "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2", "+hydra.job.env_set.OMP_NUM_THREADS=1", "+hydra.sweeper.params.seed='choice(1,2)'",
    ], capsys)
    assert "reduction_factor: 2" in shown and "OMP_NUM_THREADS: '1'" in shown


def test_a_hydra_option_of_ones_own_config_dir_counts(tmp_path, caplog, capsys):
    """`--config-dir mine hydra/launcher=cluster` with mine/hydra/launcher/cluster.yaml: an option like the others."""
    (tmp_path / "hydra" / "launcher").mkdir(parents=True)
    (tmp_path / "hydra" / "launcher" / "cluster.yaml").write_text("# @package hydra.launcher\n_target_: x.Launcher\n")
    assert "x.Launcher" in composes("train.py", ["--config-dir", str(tmp_path), "hydra/launcher=cluster"], capsys)
    assert "choose one of basic, cluster, joblib" in refusal("train.py", ["--config-dir", str(tmp_path), "hydra/launcher=clustr"], tmp_path, caplog, capsys)


SHIPPED_OPTIONS = [f"{group}={option}" for group in ("data", "optimizer", "scheduler", "logger", "trainer", "callbacks",
                                                     "hparams_search") for option in options(group)]


@pytest.mark.parametrize("entry", ["train", "finetune", "eval", "predict", "export", "serve", "lr_find"])
def test_every_shipped_config_gives_its_targets_only_arguments_they_take(entry):
    chosen = [*SHIPPED_OPTIONS, *(f"+experiment={option}" for option in options("experiment"))] if entry == "train" else []
    for overrides in [[], *([option] for option in chosen)]:
        assert argument_problems(compose_config(entry, overrides)) == [], overrides


def test_a_key_its_target_does_not_take_is_one_line_before_the_run(data_dir, tmp_path):
    for number, (override, message) in enumerate([
        ("+optimizer.momentum=0.9", "optimizer.momentum is not an argument of torch.optim.Adam, which takes params, lr"),
        ("+callbacks.early_stopping.patiense=3", "callbacks.early_stopping.patiense is not an argument of "
         "lightning.pytorch.callbacks.EarlyStopping; did you mean callbacks.early_stopping.patience?"),
    ]):
        result = run_script("train.py", "debug=fast", override, f"hydra.run.dir={tmp_path / str(number)}", data_dir=data_dir)
        assert result.returncode == 1 and message in result.stderr + result.stdout
        assert "Traceback" not in result.stderr and not (tmp_path / str(number) / "checkpoints").exists()


def test_the_private_library_names_mlplab_relies_on_are_still_there():
    """Each private use is isolated in one function; this fails loudly when a library moves or changes one."""
    assert parsed_override("optimizer.lr=1e-3,2e-3").key_or_group == "optimizer.lr"  # Hydra's OverridesParser
    assert list(parsed_override("optimizer.lr=1e-3,2e-3").sweep_iterator()) == [1e-3, 2e-3]
    assert callable(torch.cpu._is_avx512_bf16_supported) and callable(torch.cpu._is_amx_tile_supported)  # fastest_precision
