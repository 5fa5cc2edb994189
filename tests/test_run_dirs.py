"""Every run and every sweep job gets a directory of its own, even when many start in the same second."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, compose_config
from mlplab.config import ValidateBeforeRun
from mlplab.errors import ConfigError
from mlplab.run_dirs import refuse_used_dir

TINY = ["debug=fast", "scheduler=none", "model.hidden_dims=[8]", "data.batch_size=100", "num_threads=1"]


def test_runs_and_sweeps_started_together_never_share_a_directory(data_dir, tmp_path):
    """`for s in 1 2 3 4; do python train.py seed=$s & done` and two `-m` sweeps at once, from one folder."""
    args = " ".join(f"'{a}'" for a in TINY)
    script = (
        f"for s in 1 2 3 4; do {sys.executable} {ROOT}/train.py seed=$s {args} & done; "
        f"for s in 5,6 7,8; do {sys.executable} {ROOT}/train.py -m seed=$s {args} & done; wait"
    )
    env = os.environ | {"DATA_DIR": str(data_dir), "PYTHONWARNINGS": "ignore"}
    subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, check=True, timeout=600, capture_output=True)

    runs = sorted((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 4
    seeds = [yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["seed"] for run in runs]
    assert sorted(seeds) == [1, 2, 3, 4]
    results = [json.loads((run / "metrics.json").read_text()) for run in runs]
    assert len({r["val/loss"] for r in results}) == 4  # each seed's own result, none overwritten
    assert all(Path(r["best_ckpt"]).parent.parent == run for r, run in zip(results, runs, strict=True))

    sweeps = sorted((tmp_path / "logs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 2
    jobs = {sweep.name: sorted(p.parent.name for p in sweep.glob("*/metrics.json")) for sweep in sweeps}
    assert list(jobs.values()) == [["0", "1"], ["0", "1"]]
    swept = sorted(yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["seed"] for sweep in sweeps
                   for job in sweep.iterdir() if job.is_dir() and (job / ".hydra").is_dir())
    assert swept == [5, 6, 7, 8]


def test_a_directory_holding_another_run_is_refused_unless_resumed(data_dir, tmp_path, caplog):
    """`python train.py hydra.run.dir=<another run's dir>`: Hydra's callback refuses it before anything is written."""
    finished = tmp_path / "finished"
    (finished / ".hydra").mkdir(parents=True)
    (finished / "metrics.json").write_text("{}")
    before = sorted(p.name for p in finished.iterdir())
    with pytest.raises(SystemExit) as stopped:
        ValidateBeforeRun().on_run_start(compose_config("train", [*TINY, f"hydra.run.dir={finished}", f"data.data_dir={data_dir}"],
                                                        with_hydra=True))
    assert stopped.value.code == 1
    [line] = [r.getMessage() for r in caplog.records]
    assert line == (f"error: hydra.run.dir={finished} already holds another run (.hydra, metrics.json); leave "
                    f"hydra.run.dir out for a new directory of its own, or to resume that run: "
                    f"ckpt_path={finished}/checkpoints/last.ckpt hydra.run.dir={finished}")
    assert sorted(p.name for p in finished.iterdir()) == before  # nothing overwritten


def test_the_resume_command_may_use_its_own_run_dir_and_a_used_sweep_dir_is_refused(tmp_path, caplog):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    refuse_used_dir(compose_config("train", [f"hydra.run.dir={run}", f"ckpt_path={run}/checkpoints/last.ckpt"], with_hydra=True), "hydra.run.dir")
    refuse_used_dir(compose_config("train", [], with_hydra=True), "hydra.run.dir")  # a new directory of its own: nothing to check
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("{}")
    with pytest.raises(ConfigError, match=rf"hydra.sweep.dir={sweep} already holds another run \(multirun.yaml\)"):
        refuse_used_dir(compose_config("train", [f"hydra.sweep.dir={sweep}"], with_hydra=True), "hydra.sweep.dir")
