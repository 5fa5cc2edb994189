"""`python train.py ...` end to end, as a user runs it: fit, validate, test, run dir, resume, multirun."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import REAL_DATA_DIR, compose_config, requires_real_mnist, run_script
from mlplab.classifier import ClassifierModule
from mlplab.data.datamodule import MNISTDataModule
from mlplab.errors import ConfigError, UserError
from mlplab.pipeline import monitored_value, train

FAST = ["debug=fast", "logger=tensorboard", "model.hidden_dims=[512,256]"]  # in seconds, the default logger, a real-sized network


def train_py(*args: str, data_dir: Path | str) -> subprocess.CompletedProcess:
    return run_script("train.py", *args, data_dir=data_dir)


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory) -> Path:
    """The run dir of `python train.py` on the synthetic data; its console output is kept as output.txt."""
    run_dir = tmp_path_factory.mktemp("run")
    result = train_py(*FAST, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir / "output.txt").write_text(result.stdout + result.stderr)
    return run_dir


def test_run_prints_final_metrics_and_run_dir(finished_run):
    output = (finished_run / "output.txt").read_text()
    assert "test/acc" in output and "val/acc" in output
    assert f"run dir: {finished_run}" in output
    assert "litlogger" not in output  # Lightning's advert for its cloud logger is filtered out


def test_run_dir_holds_config_checkpoints_events_and_metrics(finished_run):
    assert (finished_run / ".hydra" / "config.yaml").is_file() and (finished_run / "train.log").is_file()  # job: train
    assert (finished_run / "checkpoints" / "last.ckpt").is_file()
    assert list((finished_run / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert {"val/acc", "val/loss", "test/acc", "test/loss", "best_ckpt", "epochs", "train_time_s"} <= metrics.keys()
    assert metrics["epochs"] == 2
    assert metrics["test/acc"] > 0.4  # learnable: chance is 0.1; seeds 0-3 measured 0.48-0.60 on the 200 test images
    assert Path(metrics["best_ckpt"]).parent == finished_run / "checkpoints"


def test_checkpoint_loads_with_weights_only_and_rebuilds_the_model(finished_run, data_dir):
    metrics = json.loads((finished_run / "metrics.json").read_text())
    raw = torch.load(metrics["best_ckpt"], weights_only=True, map_location="cpu")
    assert raw["hyper_parameters"]["net"]["hidden_dims"] == [512, 256]
    module = ClassifierModule.load_from_checkpoint(metrics["best_ckpt"], map_location="cpu", weights_only=True)
    dm = MNISTDataModule(data_dir=str(data_dir), val_size=100)
    dm.setup("test")
    images, labels = dm.test_set
    module.eval()
    with torch.no_grad():  # debug=fast trains in 32-true: the same arithmetic, the same predictions
        accuracy = (module(images).argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(metrics["test/acc"], abs=1e-6)  # test ran on the best checkpoint


def test_resume_from_last_checkpoint_continues_training(finished_run, data_dir, tmp_path, caplog, capfd):
    caplog.set_level(logging.INFO)
    last = f"ckpt_path={finished_run}/checkpoints/last.ckpt"
    train(compose_config("train", [*FAST, "trainer.max_epochs=3", "scheduler=none", last, f"data.data_dir={data_dir}"], tmp_path))
    assert "Restoring states from the checkpoint" in caplog.text + capfd.readouterr().err  # Lightning's own line
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs"] == 3


def test_resume_cannot_stretch_a_whole_run_schedule(finished_run, data_dir, tmp_path):
    last = f"ckpt_path={finished_run}/checkpoints/last.ckpt"
    with pytest.raises(ConfigError, match="OneCycleLR schedule over"):  # reported as one line like every ConfigError
        train(compose_config("train", [*FAST, "trainer.max_epochs=3", last, f"data.data_dir={data_dir}"], tmp_path))


def test_tutorial_overrides_reach_the_objects(data_dir, tmp_path):
    """The README's second command: SGD with momentum, dropout and an L1 penalty."""
    train(compose_config("train", ["optimizer=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.9", "model.dropout=0.2",
                                   "regularization.l1=1e-5", *FAST, f"data.data_dir={data_dir}"], tmp_path))
    hparams = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["optimizer"]["_target_"] == "torch.optim.SGD" and hparams["optimizer"]["momentum"] == 0.9
    assert hparams["net"]["dropout"] == 0.2 and hparams["l1"] == 1e-5


def test_missing_data_is_one_line_naming_the_folder_the_files_and_data_dir(tmp_path):
    result = train_py("data.download=false", f"hydra.run.dir={tmp_path}/run", data_dir=tmp_path / "empty")
    assert result.returncode == 1
    [line] = [line for line in (result.stdout + result.stderr).splitlines() if "error:" in line]
    assert line.endswith(
        f"error: mnist data not found in {tmp_path}/empty/MNIST/raw: missing all four IDX files (train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, uncompressed); data.download=false. Put them there, or point "
        "DATA_DIR (or data.data_dir) at a folder holding MNIST/raw."), line
    assert "Traceback" not in result.stderr


@pytest.mark.real_data
@requires_real_mnist
def test_one_epoch_of_the_default_recipe_on_real_mnist(tmp_path):
    result = train_py("trainer.max_epochs=1", f"hydra.run.dir={tmp_path}", data_dir=REAL_DATA_DIR)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test/acc"] >= 0.96


def test_a_run_returns_the_metric_it_monitors_and_never_another(data_dir, tmp_path):
    """What a sweep optimizes: with `callbacks.model_checkpoint.monitor=train/loss mode=min` the run returns the
    best checkpoint's training loss, not validation accuracy; a monitored metric with no value is one clear error."""
    value = train(compose_config("train", [*FAST, "trainer.max_epochs=2", "callbacks.model_checkpoint.monitor=train/loss",
                                           "callbacks.model_checkpoint.mode=min", f"data.data_dir={data_dir}"], tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    best = torch.load(metrics["best_ckpt"], weights_only=False)["callbacks"]
    scores = [state["best_model_score"] for key, state in best.items() if key.startswith("ModelCheckpoint") and "train/loss" in key]
    assert value != metrics["val/acc"] and value == pytest.approx(float(scores[0]))

    class NeverLogged:
        monitor, best_model_score = "train/loss", None

    with pytest.raises(UserError, match=r"monitor=train/loss has no value at the end of the run.*val/acc"):
        monitored_value(NeverLogged(), {"val/acc": 0.9, "val/loss": 0.3})
