"""run.json: every run dir says which command, code, packages, machine and data made it, and how it ended
(README: "What a run dir records"). Interrupted and diverged runs: tests/test_reliability.py."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, run_script, synthetic_digits, write_idx
from mlplab.run_record import git_state, sha256

FAST = ["debug=fast"]


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A finished run on its own copy of the synthetic data (the tests below change that copy)."""
    base = tmp_path_factory.mktemp("record")
    data = base / "data"
    shutil.copytree(data_dir / "MNIST", data / "MNIST")
    result = run_script("train.py", *FAST, f"hydra.run.dir={base}/run", data_dir=data)
    assert result.returncode == 0, result.stderr[-3000:]
    return base / "run", data


def test_run_json_says_how_to_rerun_and_resume_and_how_it_ended(trained):
    run_dir, _ = trained
    record = json.loads((run_dir / "run.json").read_text())
    assert shlex.split(record["command"]) == ["python", "train.py", *FAST]  # quoted for a shell: paste it
    assert record["resume_command"].endswith(f"ckpt_path={run_dir}/checkpoints/last.ckpt hydra.run.dir={run_dir}")
    assert record["status"] == "finished" and record["error"] is None
    assert record["start_time"] <= record["end_time"] and record["duration_s"] > 0


def test_run_json_names_the_commit_packages_and_machine(trained):
    record = json.loads((trained[0] / "run.json").read_text())
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert record["git"]["commit"] == head and isinstance(record["git"]["dirty"], bool)
    assert (trained[0] / "git_diff.patch").is_file() == bool(record["git"].get("diff"))
    assert set(record["versions"]) == {"python", "torch", "lightning", "hydra-core", "torchmetrics", "torchvision"}
    assert all(record["versions"].values()) and record["machine"]["cpu"]


def test_data_hashes_match_the_files_read(trained):
    run_dir, data = trained
    record = json.loads((run_dir / "run.json").read_text())
    files = sorted((data / "MNIST" / "raw").iterdir())
    assert record["data_sha256"] == {
        f"MNIST/raw/{path.name}": hashlib.sha256(path.read_bytes()).hexdigest() for path in files
    }


def test_eval_names_the_run_and_warns_when_the_test_data_changed(trained, tmp_path):
    run_dir, data = trained
    images, _ = synthetic_digits(200, seed=99)  # other pictures, same shape: loads fine, no longer comparable
    write_idx(data / "MNIST" / "raw" / "t10k-images-idx3-ubyte", images)
    result = run_script("eval.py", f"ckpt_path={run_dir}/checkpoints/last.ckpt", f"hydra.run.dir={tmp_path}", data_dir=data)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert f"comes from run {run_dir} (commit " in output
    assert "the data differs from what the checkpoint was trained on: MNIST/raw/t10k-images-idx3-ubyte changed" in output
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["checkpoint"]["origin"]["run_dir"] == str(run_dir) and record["status"] == "finished"


def git_repo(path: Path) -> Path:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                       capture_output=True)

    path.mkdir()
    git("init", "-q")
    (path / "train.py").write_text("lr = 4e-3\n")
    git("add", "train.py")
    git("commit", "-qm", "first")
    return path


def test_a_dirty_tree_is_flagged_with_its_diff(tmp_path):
    repo = git_repo(tmp_path / "repo")
    state, diff = git_state(repo)
    assert state["dirty"] is False and diff == "" and len(state["commit"]) == 40
    (repo / "train.py").write_text("lr = 1e-2\n")
    state, diff = git_state(repo)
    assert state["dirty"] is True and "-lr = 4e-3" in diff and "+lr = 1e-2" in diff


def test_file_hashes_are_cached_by_path_size_and_mtime(tmp_path):
    data, cache = tmp_path / "train-images-idx3-ubyte", tmp_path / "cache" / "sha256.json"
    data.write_bytes(b"0123456789")
    assert sha256(data, cache) == hashlib.sha256(b"0123456789").hexdigest()
    [key] = json.loads(cache.read_text())
    cache.write_text(json.dumps({key: "read from the cache"}))
    assert sha256(data, cache) == "read from the cache"  # same path, size and mtime: not read again
    data.write_bytes(b"9876543210")  # changed in place: new mtime, new digest
    assert sha256(data, cache) == hashlib.sha256(b"9876543210").hexdigest()


def test_a_checkpoint_without_its_origin_reads_the_run_json_beside_it_and_a_damaged_one_is_no_origin(tmp_path):
    import torch

    from mlplab.checkpoint_reader import checkpoint_origin

    (tmp_path / "checkpoints").mkdir()
    torch.save({"state_dict": {}}, tmp_path / "checkpoints" / "old.ckpt")  # written before checkpoints carried it
    (tmp_path / "run.json").write_text(json.dumps({"run_dir": str(tmp_path), "git": {"commit": "abc", "dirty": False}}))
    origin = checkpoint_origin(tmp_path / "checkpoints" / "old.ckpt")
    assert origin["run_dir"] == str(tmp_path) and origin["git_commit"] == "abc"
    (tmp_path / "run.json").write_text('{"run_dir": ')  # a run killed while writing it
    assert checkpoint_origin(tmp_path / "checkpoints" / "old.ckpt") is None
