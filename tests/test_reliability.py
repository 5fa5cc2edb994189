"""Bad input gets one clear line before any work; runs survive interruption and resume exactly; nothing is lost.

Every fault here is listed, with what the user sees, in docs/reliability.md.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from conftest import ROOT, compose_config, in_process, make_dataset, run_script
from mlplab.checkpoint_writer import AtomicCheckpointIO, RandomState
from mlplab.cli import run
from mlplab.config import ValidateBeforeRun, validate, validate_sweep
from mlplab.data.datamodule import MNISTDataModule, load_split
from mlplab.errors import ConfigError, DataError, TrainingDiverged
from mlplab.faults import StopOnDivergence
from mlplab.pipeline import train


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if "error:" in line]


# --- 1. config validation -------------------------------------------------------------------------------------

BAD_VALUES = [
    (["optimizer.lr=-0.001"], "optimizer.lr=-0.001 must be a number > 0"),
    (["optimizer.lr=fast"], "optimizer.lr='fast' must be a number > 0"),
    (["optimizer=sgd", "optimizer.momentum=1.5"], "optimizer.momentum=1.5 must be a number in [0, 1)"),
    (["optimizer.weight_decay=-0.01"], "optimizer.weight_decay=-0.01 must be a number >= 0"),
    (["model.dropout=1"], "model.dropout=1 must be a number in [0, 1)"),
    (["model.hidden_dims=[512,0]"], "model.hidden_dims=[512, 0] must be a list of layer widths >= 1"),
    (["model.activation=swish"], "model.activation='swish' must be one of relu, gelu, silu, tanh, leaky_relu"),
    (["data.batch_size=0"], "data.batch_size=0 must be an integer >= 1"),
    (["data.batch_size=32.5"], "data.batch_size=32.5 must be an integer >= 1"),
    (["data.val_size=600"], "data.val_size=600 must be smaller than the 600 training images of mnist"),
    (["data.dataset=cifar10"], "data.dataset='cifar10' must be one of mnist, fashion_mnist, kmnist"),
    (["data.augment.scale=1.5"], "data.augment.scale=1.5 must be a number in [0, 1)"),
    (["regularization.l1=-1e-5"], "regularization.l1=-1e-05 must be a number >= 0"),
    (["regularization.label_smoothing=1"], "regularization.label_smoothing=1 must be a number in [0, 1)"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 must be an integer >= 1 (or -1: no limit)"),
    (["trainer.precision=bf15"], "trainer.precision='bf15' must be one of auto, "),
    (["callbacks.early_stopping.patience=-1"], "callbacks.early_stopping.patience=-1 must be an integer >= 0"),
    (["ckpt_path=/no/such/last.ckpt"], "ckpt_path='/no/such/last.ckpt' must be an existing checkpoint file"),
    (["+data.samples_per_class=0"], "data.samples_per_class=0 must be an integer >= 1, or null for all"),
    (["+data.num_folds=5", "+data.fold=5"], "data.fold=5 must be an integer in [0, data.num_folds=5)"),
    (["+data.num_folds=1", "+data.fold=0"], "data.num_folds=1 must be an integer >= 2, or null for one hold-out split"),
    (["+data.num_folds=null", "+data.fold=2"], "data.fold=2 must be null unless data.num_folds is set"),
    (["+data.train_fraction=0"], "data.train_fraction=0 must be a number in (0, 1], or null for all"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_value_is_refused_with_key_value_and_what_is_allowed(overrides, message, data_dir):
    cfg = compose_config("train", [*overrides, f"data.data_dir={data_dir}"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_problem_is_reported_at_once(data_dir):
    cfg = compose_config("train", ["optimizer.lr=0", "model.dropout=-0.1", f"data.data_dir={data_dir}"])
    with pytest.raises(ConfigError, match=r"model.dropout=-0.1 must be .*; optimizer.lr=0 must be"):
        validate(cfg)


SHIPPED = [  # an option, and a key of the composed config that shows it was applied
    ("optimizer=sgd", "optimizer._target_", "torch.optim.SGD"),
    ("optimizer=adamw", "optimizer._target_", "torch.optim.AdamW"),
    ("scheduler=plateau", "scheduler.scheduler._target_", "torch.optim.lr_scheduler.ReduceLROnPlateau"),
    ("data=kmnist", "data.dataset", "kmnist"),
    ("+experiment=tutorial", "model.hidden_dims", [512, 256]),
    ("trainer=ddp", "trainer.strategy._target_", "lightning.pytorch.strategies.DDPStrategy"),
    ("callbacks.early_stopping=null", "callbacks.early_stopping", None),
]


@pytest.mark.parametrize(("group", "key", "expected"), SHIPPED, ids=[group for group, _, _ in SHIPPED])
def test_shipped_configs_are_valid(group, key, expected, data_dir):
    cfg = compose_config("train", [group, "data.val_size=100", "data.batch_size=32", f"data.data_dir={data_dir}"])
    validate(cfg)  # raises ConfigError on any value a rule refuses
    assert OmegaConf.select(cfg, key) == expected  # the option was applied, not only accepted


def with_command_line(cfg, overrides: list[str], choices: dict[str, str]):
    """The config as Hydra hands it to a multirun callback: sweeps on the command line, defaults in the values."""
    with open_dict(cfg):
        cfg.hydra = {"overrides": {"task": overrides}, "runtime": {"choices": choices}}
    return cfg


def test_every_swept_value_is_checked_before_the_first_job(data_dir):
    overrides = ["optimizer.lr=1e-3,-1", "model.dropout=0,0.2", "optimizer=adam,sgd", "data.val_size=100", "data.batch_size=32"]
    cfg = with_command_line(compose_config("train", ["data.val_size=100", "data.batch_size=32", f"data.data_dir={data_dir}"]), overrides, {"optimizer": "adam"})
    with pytest.raises(ConfigError) as err:
        validate_sweep(cfg)
    assert str(err.value) == "optimizer.lr=-1 must be a number > 0 (in the sweep)"


def test_a_cross_validation_sweep_is_valid(data_dir):
    overrides = ["data.val_size=100", "data.batch_size=32", "+data.num_folds=3", "+data.fold=range(3)"]
    cfg = compose_config("train", ["data.val_size=100", "data.batch_size=32", "+data.num_folds=3", "+data.fold=null", f"data.data_dir={data_dir}"])
    validate_sweep(with_command_line(cfg, overrides, {"optimizer": "adam"}))
    cfg = compose_config("train", ["+data.num_folds=3", "+data.fold=null", f"data.data_dir={data_dir}"])
    with pytest.raises(ConfigError, match=r"data.fold=null must be an integer in \[0, data.num_folds=3\)"):
        validate(cfg)  # one job must name its fold


def test_validation_before_the_run_exits_with_one_line_or_the_traceback_on_request(data_dir, monkeypatch, capsys):
    cfg = compose_config("train", ["optimizer.lr=-1", f"data.data_dir={data_dir}"])
    with pytest.raises(SystemExit) as stop:
        ValidateBeforeRun().on_run_start(cfg)
    assert stop.value.code == 1
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError):
        ValidateBeforeRun().on_run_start(cfg)


def test_bad_value_on_the_command_line_is_one_line_and_leaves_no_run_dir(data_dir, tmp_path):
    result = run_script("train.py", "optimizer.lr=-1", "model.dropout=2", "data.val_size=100", f"hydra.run.dir={tmp_path}/run", data_dir=data_dir)
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert line.endswith("error: model.dropout=2 must be a number in [0, 1); optimizer.lr=-1 must be a number > 0"), line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_unknown_group_option_is_one_line_listing_the_valid_ones_and_leaves_nothing(tmp_path, caplog):
    """`python train.py optimizer=adamx` exits 1 with one line, before Hydra creates the run dir."""
    with in_process("train.py", ["optimizer=adamx", f"hydra.run.dir={tmp_path}/run"]), pytest.raises(SystemExit) as stopped:
        run("mlplab.pipeline:train", config_name="train", sweep_objective=True)  # what train.py does
    assert stopped.value.code == 1 and not (tmp_path / "run").exists()
    assert [r.getMessage() for r in caplog.records] == ["error: optimizer=adamx is not an option; choose one of adam, adamw, sgd"]


# --- 2. data problems -------------------------------------------------------------------------------------------

def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "wrong magic":
        path.write_bytes(b"\x00\x00\x09" + data[3:])
    elif how == "gzipped":
        path.write_bytes(gzip.compress(data))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "label out of range":
        path.write_bytes(data[:8] + bytes([3, 12]) + data[10:])
    elif how == "one label missing":
        count = int.from_bytes(data[4:8], "big") - 1
        path.write_bytes(data[:4] + count.to_bytes(4, "big") + data[8:-1])


CORRUPTIONS = [
    ("train-images-idx3-ubyte", "truncated", "is truncated: its header announces 600 x 28 x 28 values"),
    ("train-images-idx3-ubyte", "wrong magic", "is not an IDX file of bytes (magic number 0x00000903"),
    ("t10k-labels-idx1-ubyte", "gzipped", "is gzip-compressed: gunzip it"),
    ("train-labels-idx1-ubyte", "empty", "is not an IDX file of bytes (magic number 0xempty"),
    ("train-labels-idx1-ubyte", "label out of range", "has label 12 at index 1, outside 0..9"),
    ("train-labels-idx1-ubyte", "one label missing", "holds 600 images but"),
]


@pytest.mark.parametrize(("name", "how", "message"), CORRUPTIONS, ids=[how for _, how, _ in CORRUPTIONS])
def test_corrupted_idx_file_is_named_with_what_is_wrong(name, how, message, tmp_path):
    raw = make_dataset(tmp_path) / "MNIST" / "raw"
    corrupt(raw / name, how)
    with pytest.raises(DataError) as err:
        load_split(tmp_path, "mnist", train=name.startswith("train"))
    assert str(raw / name) in str(err.value) or how == "one label missing"
    assert message in str(err.value) and "\n" not in str(err.value)


# --- 3. interrupt and resume ------------------------------------------------------------------------------------

RESUMABLE = ["debug=fast", "trainer.max_epochs=3", "data.batch_size=16", "model.hidden_dims=[128]", "model.dropout=0.2",
             "seed=3", "trainer.deterministic=true"]


def start_train(run_dir: Path, data_dir: Path, *extra: str) -> subprocess.Popen:
    """`python train.py` in the background, with SIGINT delivered as in a terminal even if pytest ignores it."""
    # one thread each: three runs share the machine's cores (every run uses the same count: results compare)
    env = os.environ | {"DATA_DIR": str(data_dir), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *RESUMABLE, f"hydra.run.dir={run_dir}", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def interrupt_after_first_checkpoint(procs: dict[signal.Signals, tuple[subprocess.Popen, Path]]) -> None:
    waiting = dict(procs)
    deadline = time.monotonic() + 300
    while waiting and time.monotonic() < deadline:
        for sig, (proc, run_dir) in list(waiting.items()):
            if (run_dir / "checkpoints" / "last.ckpt").is_file() or proc.poll() is not None:
                proc.send_signal(sig)
                del waiting[sig]
        time.sleep(0.01)


@pytest.fixture(scope="module")
def interrupted(data_dir, tmp_path_factory) -> dict:
    """Three identical runs: one left alone, one stopped by Ctrl-C and one by SIGTERM after their first epoch;
    the SIGTERM one is then resumed from its last.ckpt."""
    base = tmp_path_factory.mktemp("resume")
    reference = start_train(base / "alone", data_dir)
    signals = (signal.SIGINT, signal.SIGTERM)
    procs = {sig: (start_train(base / sig.name, data_dir), base / sig.name) for sig in signals}
    interrupt_after_first_checkpoint(procs)
    outputs = {sig: proc.communicate(timeout=300)[0] for sig, (proc, _) in procs.items()}
    runs = {
        sig: {"output": outputs[sig], "code": proc.returncode, "finished": (base / sig.name / "metrics.json").exists()}
        for sig, (proc, _) in procs.items()
    }
    resumed = start_train(base / "SIGTERM", data_dir, f"ckpt_path={base}/SIGTERM/checkpoints/last.ckpt")
    resumed_output = resumed.communicate(timeout=300)[0]
    reference_output = reference.communicate(timeout=300)[0]
    assert reference.returncode == 0, reference_output[-3000:]
    assert resumed.returncode == 0, resumed_output[-3000:]
    return {"base": base, "runs": runs}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_keeps_the_last_epoch_and_says_how_to_resume(interrupted, sig):
    run = interrupted["runs"][sig]
    assert run["code"] == 1 and not run["finished"], run["output"][-3000:]  # it really stopped before the end
    name = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C (SIGINT)"
    lines = [line for line in run["output"].splitlines() if f"interrupted by {name} at epoch" in line]
    run_dir = interrupted["base"] / sig.name
    assert len(lines) == 1, run["output"][-3000:]
    assert f"ckpt_path={run_dir}/checkpoints/last.ckpt hydra.run.dir={run_dir}" in lines[0]
    assert "Traceback" not in run["output"]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] >= 0


def test_run_json_records_the_interruption_and_the_resumed_run_keeps_that_record(interrupted):
    base = interrupted["base"]
    ctrl_c, resumed = (json.loads((base / name / "run.json").read_text()) for name in ("SIGINT", "SIGTERM"))
    assert ctrl_c["status"] == "interrupted" and ctrl_c["end_time"] is not None
    assert f"ckpt_path={base}/SIGINT/checkpoints/last.ckpt" in ctrl_c["resume_command"]
    assert resumed["status"] == "finished" and [a["status"] for a in resumed["previous_attempts"]] == ["interrupted"]


def test_resumed_run_ends_exactly_like_the_run_left_alone(interrupted):
    base = interrupted["base"]
    alone = json.loads((base / "alone" / "metrics.json").read_text())
    resumed = json.loads((base / "SIGTERM" / "metrics.json").read_text())
    for key in ("val/acc", "val/loss", "test/acc", "test/loss", "epochs"):
        assert resumed[key] == alone[key], key
    assert Path(resumed["best_ckpt"]).name == Path(alone["best_ckpt"]).name
    weights = [torch.load(base / run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for run in ("alone", "SIGTERM")]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name


def test_last_ckpt_holds_every_finished_epoch_even_when_the_best_does_not_change(data_dir, tmp_path):
    """An LR too small to move val/acc: the best checkpoint stays at epoch 0, last.ckpt must follow every epoch.
    (No batch norm: its running statistics would move val/acc at any LR.)"""
    cfg = compose_config("train", ["debug=fast", f"data.data_dir={data_dir}", "trainer.max_epochs=3", "optimizer.lr=1e-12",
                                   "scheduler=none", "model.batch_norm=false"], output_dir=tmp_path)
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert Path(metrics["best_ckpt"]).name.startswith("epoch00-")  # val/acc never improved after epoch 0
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 3 * math.ceil(500 / 32)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [Path(metrics["best_ckpt"]).name, "last.ckpt"]


def test_random_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    saved = RandomState().state_dict()
    torch.save(saved, tmp_path / "state.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()  # move every generator on
    RandomState().load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


# --- 4. divergence ----------------------------------------------------------------------------------------------

def test_diverging_run_stops_with_one_line_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    """SGD at 0.05 for epoch 0, then a step schedule multiplies the learning rate by 1e8: the loss blows up."""
    result = run_script(
        "train.py", "debug=fast", "trainer.max_epochs=3", "optimizer=sgd", "scheduler=step", "scheduler.scheduler.step_size=1",
        "scheduler.scheduler.gamma=1e8", f"hydra.run.dir={tmp_path}", data_dir=data_dir,
    )
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert re.search(r"error: training diverged: the loss was .+ at epoch 1, batch \d+ \(step \d+\)", line), line
    assert "last.ckpt keeps the end of epoch 0" in line and "Traceback" not in result.stderr
    kept = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert kept["epoch"] == 0 and all(t.isfinite().all() for t in kept["state_dict"].values())
    assert not (tmp_path / "metrics.json").exists()
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize("world_size", [1, 2], ids=["one CPU process: checked each step", "GPU or DDP: recorded on the device"])
def test_divergence_is_reported_at_the_first_bad_step(world_size):
    trainer = SimpleNamespace(world_size=world_size, current_epoch=3, global_step=40, optimizers=[], checkpoint_callbacks=[],
                              strategy=SimpleNamespace(reduce=lambda tensor, reduce_op: tensor))
    guard = StopOnDivergence(check_every_n_steps=100)
    guard.on_train_start(trainer, SimpleNamespace(hparams={"net": {"num_classes": 10}}))
    guard.on_train_epoch_start(trainer, None)
    with pytest.raises(TrainingDiverged, match=r"the loss was nan at epoch 3, batch 2 \(step 42\)") as err:
        for batch_idx, loss in enumerate([2.3, 2.1, math.nan, 1e9]):
            guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, batch_idx)
        guard.on_train_epoch_end(trainer, None)  # the host reads the device-side record
    assert "no epoch finished, so no checkpoint was kept" in str(err.value)


# --- 5. checkpoints ---------------------------------------------------------------------------------------------

def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "weight": torch.ones(3)}, path)

    def crash_midway(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "weight": torch.zeros(3)}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


# --- 6. distributed ---------------------------------------------------------------------------------------------

def test_ddp_on_two_cpu_processes_shards_data_and_writes_one_set_of_results(data_dir, tmp_path):
    result = run_script(
        "train.py", "debug=fast", "trainer.max_epochs=1", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        f"hydra.run.dir={tmp_path}", data_dir=data_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(tmp_path.glob("**/metrics.json"))) == 1
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted([Path(metrics["best_ckpt"]).name, "last.ckpt"])
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == math.ceil(500 / 2 / 32)  # each rank took its half of the 500 training images
    # test/acc was synchronized over both ranks' halves of the test set: it is the accuracy on all of it
    from mlplab.classifier import ClassifierModule

    module = ClassifierModule.load_from_checkpoint(metrics["best_ckpt"], map_location="cpu", weights_only=True).eval()
    dm = MNISTDataModule(data_dir=str(data_dir), val_size=100)
    dm.setup("test")
    images, labels = dm.test_set
    with torch.no_grad():
        accuracy = (module(images).argmax(1) == labels).float().mean().item()
    assert metrics["test/acc"] == pytest.approx(accuracy, abs=1e-6)
