"""Experiment trackers: a run lands in MLflow or W&B with its hyperparameters, metrics and artifacts, read back
through the tracker's own client (README: "Tracking experiments: MLflow, W&B")."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from wandb.proto.wandb_internal_pb2 import Record

from conftest import run_script

FAST = ["debug=fast", "trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def sweep_run(data_dir, tmp_path_factory) -> tuple[Path, str, subprocess.CompletedProcess]:
    """A 2-job sweep logging to TensorBoard, a fresh MLflow store and W&B offline, all at once."""
    base = tmp_path_factory.mktemp("trackers")
    uri = f"sqlite:///{base}/mlflow.db"
    result = run_script(
        "train.py", "-m", "optimizer.lr=1e-3,3e-3", *FAST, "logger=[tensorboard,mlflow,wandb]",
        f"logger.mlflow.tracking_uri={uri}", f"logger.mlflow.artifact_location={base}/artifacts",
        f"hydra.sweep.dir={base}/sweep", data_dir=data_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return base / "sweep", uri, result


@pytest.fixture
def sweep(sweep_run) -> tuple[Path, MlflowClient]:
    return sweep_run[0], MlflowClient(sweep_run[1])


def test_a_sweep_is_one_mlflow_experiment_with_one_run_per_job(sweep):
    sweep_dir, client = sweep
    experiment = client.get_experiment_by_name(str(sweep_dir))
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and {run.info.status for run in runs} == {"FINISHED"}
    assert sorted(run.data.params["optimizer.lr"] for run in runs) == ["0.001", "0.003"]
    assert sorted(run.info.run_name for run in runs) == ["0: optimizer.lr=0.001", "1: optimizer.lr=0.003"]
    assert {run.data.tags["run_dir"] for run in runs} == {str(sweep_dir / "0"), str(sweep_dir / "1")}


def test_each_run_has_the_hparams_names_per_epoch_and_test_metrics_and_artifacts(sweep, tmp_path):
    sweep_dir, client = sweep
    for run in client.search_runs([client.get_experiment_by_name(str(sweep_dir)).experiment_id]):
        run_id, job_dir = run.info.run_id, Path(run.data.tags["run_dir"])
        metrics = json.loads((job_dir / "metrics.json").read_text())
        params = run.data.params
        assert params["net.hidden_dims"] == "[32]" and params["data.batch_size"] == "32"  # HParams tab's names
        assert params["trainer.max_epochs"] == "2" and "data.data_dir" not in params
        assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [15, 31]  # one per epoch
        assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
        assert run.data.tags["best_ckpt"] == metrics["best_ckpt"]
        figures = {a.path for a in client.list_artifacts(run_id, "figures/test")}
        assert figures == {"figures/test/confusion_matrix.png", "figures/test/misclassified.png",
                           "figures/test/reliability.png"}
        copy = client.download_artifacts(run_id, "metrics.json", str(tmp_path))
        assert json.loads(Path(copy).read_text()) == metrics


def test_the_sweep_summary_names_each_jobs_tracker_run(sweep):
    sweep_dir, client = sweep
    summary = (sweep_dir / "summary.md").read_text()
    assert "| tracker run |" in summary
    for run in client.search_runs([client.get_experiment_by_name(str(sweep_dir)).experiment_id]):
        job_dir = Path(run.data.tags["run_dir"])
        assert json.loads((job_dir / "run.json").read_text())["trackers"]["mlflow"]["run_id"] == run.info.run_id
        assert f"| {job_dir.name} |" in summary and f"mlflow {run.info.run_id} wandb " in summary


def wandb_records(run_file: Path):
    """The records of an offline W&B run file, as wandb's own protobuf messages.

    wandb (0.31) has no public reader for offline runs: its Go core writes them, `wandb sync` uploads them. The
    file is a 7-byte W&B header, then LevelDB's log format (32 KiB blocks of chunks: crc32c, length, type).
    If wandb changes the format, the header check or the parse below fails loudly.
    """
    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B", "not a W&B run file (format changed?)"
    position, pending = 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            yield Record.FromString(pending)
            pending = b""
        elif kind not in (2, 3):
            raise AssertionError(f"unknown chunk type {kind} (W&B run file format changed?)")


def test_wandb_offline_run_holds_the_hparams_metrics_and_figures(sweep_run):
    sweep_dir, _, result = sweep_run
    job_dir = sweep_dir / "0"  # optimizer.lr=1e-3
    [run_dir] = job_dir.glob("wandb/offline-run-*")
    assert f"wandb sync {run_dir}" in result.stdout + result.stderr  # how to upload it later
    records = list(wandb_records(next(run_dir.glob("run-*.wandb"))))
    config = {item.key: json.loads(item.value_json) for r in records if r.HasField("config") for item in r.config.update}
    assert config["optimizer.lr"] == 0.001 and config["net.hidden_dims"] == "[32]"
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.HasField("history")]
    assert len([row for row in history if "train/loss" in row]) == 2  # one per epoch
    metrics = json.loads((job_dir / "metrics.json").read_text())
    assert [row["test/acc"] for row in history if "test/acc" in row] == [pytest.approx(metrics["test/acc"])]
    figures = {key.removesuffix("/_type") for row in history for key, value in row.items() if value == "images/separated"}
    assert figures == {"train/samples", "test/confusion_matrix", "test/misclassified", "test/reliability"}
    assert json.loads((run_dir / "files" / "metrics.json").read_text()) == metrics
    record = json.loads((job_dir / "run.json").read_text())
    assert record["trackers"]["wandb"]["group"] == str(sweep_dir)  # a sweep is one W&B group
    assert record["trackers"]["wandb"]["offline"] is True and record["trackers"]["wandb"]["dir"].startswith(str(run_dir))
