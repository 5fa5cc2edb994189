"""Sweeps end with an answer: `python train.py -m ...` writes a results table, survives failing jobs,
cross-validates with data.fold, searches with Optuna, and runs jobs in parallel (joblib, submitit)."""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from conftest import ROOT, compose_config, run_script
from mlplab.data.datamodule import MNISTDataModule, load_split, split_folds
from mlplab.errors import ConfigError
from mlplab.search.sweeps import SweepSummary, available_cores, job_threads


def sweep(sweep_dir: Path, *args: str, data_dir: Path):
    """`python train.py -m debug=fast <args>`: one epoch of each job on the synthetic data (args win)."""
    result = run_script("train.py", "-m", "debug=fast", *args, f"hydra.sweep.dir={sweep_dir}", data_dir=data_dir)
    (sweep_dir / "output.txt").write_text(result.stdout + result.stderr)
    return result


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def job_files(sweep_dir: Path, name: str) -> dict[str, dict]:
    """{job dir name: contents of its <name> json file}"""
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob(f"*/{name}")}


# --- a 2x2 grid in which one L1 value is a typo (1e4 for 1e-4): its jobs diverge and fail, the sweep goes on ---


@pytest.fixture(scope="module")
def grid(data_dir, tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("grid")
    result = sweep(sweep_dir, "optimizer.lr=0.00001,0.003", "regularization.l1=0,1e4", data_dir=data_dir)
    return sweep_dir, result


def test_grid_ends_with_a_table_of_every_job_best_first(grid):
    sweep_dir, result = grid
    rows = read_csv(sweep_dir / "summary.csv")
    assert len(rows) == 4
    assert {(r["optimizer.lr"], r["regularization.l1"]) for r in rows} == {
        ("1e-05", "0"), ("1e-05", "10000.0"), ("0.003", "0"), ("0.003", "10000.0")  # as Hydra writes them
    }
    ok = [r for r in rows if r["status"] == "ok"]
    metrics = job_files(sweep_dir, "metrics.json")
    assert [float(r["val/acc"]) for r in ok] == sorted((m["val/acc"] for m in metrics.values()), reverse=True)
    best = ok[0]
    assert (best["optimizer.lr"], best["regularization.l1"]) == ("0.003", "0")  # 1e-5 barely moves in one epoch
    assert best["best_ckpt"] == metrics[best["job"]]["best_ckpt"] and Path(best["best_ckpt"]).is_file()
    assert all(Path(m["best_ckpt"]).parents[1] == sweep_dir / job for job, m in metrics.items())  # a dir of its own
    assert (sweep_dir / "multirun.yaml").is_file()
    assert float(best["test/acc"]) == metrics[best["job"]]["test/acc"]
    assert int(best["epochs"]) == 1 and float(best["wall_time_s"]) > 0
    output = result.stdout + result.stderr
    markdown = (sweep_dir / "summary.md").read_text()
    assert markdown in output  # printed as written
    assert f"Best: job {best['job']} (optimizer.lr=0.003 regularization.l1=0): val/acc" in markdown
    assert best["best_ckpt"] in markdown
    assert "Same in every job: `debug=fast`" in markdown


def test_failed_jobs_are_recorded_the_others_complete_and_the_exit_status_says_so(grid):
    sweep_dir, result = grid
    assert result.returncode == 1
    assert "2 of 4 jobs failed" in result.stderr and "Traceback" not in result.stderr
    rows = read_csv(sweep_dir / "summary.csv")
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed"]  # failures last, whatever their order
    for row in rows[2:]:
        assert row["regularization.l1"] == "10000.0" and row["error"].startswith("training diverged: the loss was")
        assert row["val/acc"] == "" and not (sweep_dir / row["job"] / "metrics.json").exists()
    assert len(job_files(sweep_dir, "metrics.json")) == 2
    assert "failed: training diverged" in (sweep_dir / "summary.md").read_text()


def test_a_job_whose_own_composition_is_invalid_is_recorded_as_failed_and_the_sweep_goes_on(data_dir, tmp_path):
    """`data.fold=2` fits 3 folds but not 2: only the job with data.num_folds=2 can tell, as it starts."""
    result = sweep(tmp_path, "data.num_folds=2,3", "data.fold=2", "+trainer.limit_train_batches=2", data_dir=data_dir)
    assert result.returncode == 1 and "1 of 2 jobs failed" in result.stderr and "Traceback" not in result.stderr
    rows = {r["data.num_folds"]: r for r in read_csv(tmp_path / "summary.csv")}
    assert rows["3"]["status"] == "ok"
    assert rows["2"]["status"] == "failed"
    assert rows["2"]["error"] == "data.fold=2 must be an integer in [0, data.num_folds=2) (every fold: -m 'data.fold=range(2)')"


# --- an interrupted grid continues: the same command in the same sweep dir skips the jobs that finished ---------


def test_a_killed_grid_sweep_continues_and_skips_its_finished_jobs(data_dir, tmp_path):
    args = ["-m", "debug=fast", "optimizer.lr=1e-3,2e-3,3e-3", f"hydra.sweep.dir={tmp_path}"]
    env = os.environ | {"DATA_DIR": str(data_dir), "PYTHONWARNINGS": "ignore"}
    killed = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / "1" / ".hydra").is_dir() and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    first = json.loads((tmp_path / "0" / "job.json").read_text())
    assert first["status"] == "ok" and not (tmp_path / "2").exists()  # job 0 done, job 1 cut off, job 2 never started
    metrics_time = (tmp_path / "0" / "metrics.json").stat().st_mtime_ns

    result = run_script("train.py", *args, data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "job 0 finished in an earlier command (job.json: ok): skipped" in result.stdout + result.stderr
    assert (tmp_path / "0" / "metrics.json").stat().st_mtime_ns == metrics_time  # not trained again
    assert json.loads((tmp_path / "0" / "job.json").read_text()) == first
    rows = read_csv(tmp_path / "summary.csv")
    assert sorted(r["optimizer.lr"] for r in rows) == ["0.001", "0.002", "0.003"] and all(r["status"] == "ok" for r in rows)

    other = run_script("train.py", "-m", "debug=fast", "optimizer.lr=1e-3,5e-3", f"hydra.sweep.dir={tmp_path}", data_dir=data_dir)
    assert other.returncode == 1 and "Traceback" not in other.stderr
    assert (f"hydra.sweep.dir={tmp_path} holds a sweep with other overrides; to continue it, repeat them: "
            f"python train.py -m debug=fast optimizer.lr=1e-3,2e-3,3e-3 hydra.sweep.dir={tmp_path}") in other.stdout + other.stderr


# --- k-fold cross-validation ---------------------------------------------------------------------------------


def test_folds_are_disjoint_stratified_seeded_and_cover_the_training_set(data_dir):
    _, labels = load_split(data_dir, "mnist", train=True)
    folds = [split_folds(labels, 3, fold, seed=0) for fold in range(3)]
    vals = [set(val.tolist()) for _, val in folds]
    assert all(len(v) == 200 for v in vals)
    assert not (vals[0] & vals[1] or vals[0] & vals[2] or vals[1] & vals[2])
    assert vals[0] | vals[1] | vals[2] == set(range(600))
    for train, val in folds:  # each fold validates once and trains on the other two
        assert set(train.tolist()) == set(range(600)) - set(val.tolist())
        per_class = torch.bincount(labels[val], minlength=10)
        assert per_class.max() - per_class.min() <= 1  # 60 images of each class: 20 in every fold
    assert torch.equal(folds[1][1], split_folds(labels, 3, 1, seed=0)[1])
    assert not torch.equal(folds[1][1], split_folds(labels, 3, 1, seed=1)[1])


def test_datamodule_validates_on_the_chosen_fold_and_tests_on_the_official_test_set(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), num_folds=3, fold=2)
    dm.setup("fit")
    images, labels = load_split(data_dir, "mnist", train=True)
    train_idx, val_idx = split_folds(labels, 3, 2, seed=0)
    assert torch.equal(dm.val_set[0], dm._normalize(images[val_idx]))
    assert torch.equal(dm.train_set[1], labels[train_idx])
    assert torch.equal(dm.test_set[1], load_split(data_dir, "mnist", train=False)[1])


@pytest.mark.parametrize(
    ("num_folds", "fold", "message"),
    [
        (3, None, r"data.fold=null must be an integer in \[0, data.num_folds=3\)"),
        (3, 3, r"data.fold=3 must be an integer in \[0, data.num_folds=3\)"),
        (1, 0, r"data.num_folds=1 must be an integer >= 2"),
        (None, 1, r"data.fold=1 must be null unless data.num_folds is set"),
    ],
)
def test_fold_settings_are_checked_before_any_work(num_folds, fold, message):
    with pytest.raises(ConfigError, match=message):
        MNISTDataModule(num_folds=num_folds, fold=fold)


def test_cross_validation_with_the_joblib_launcher_aggregates_folds(data_dir, tmp_path):
    """3 folds as 3 jobs, 2 at a time in joblib workers, each held to its share of the cores."""
    result = sweep(
        tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "data.num_folds=3", "data.fold=range(3)",
        data_dir=data_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = job_files(tmp_path, "job.json")
    assert len(records) == 3 and all(r["status"] == "ok" for r in records.values())
    assert {r["threads"] for r in records.values()} == {max(1, available_cores() // 2)}
    metrics = list(job_files(tmp_path, "metrics.json").values())
    [row] = read_csv(tmp_path / "summary_replicates.csv")
    assert (row["ok"], row["replicates"]) == ("3", "3")
    for name in ("val/acc", "test/acc", "val/loss"):
        values = [m[name] for m in metrics]
        assert float(row[f"{name} mean"]) == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert float(row[f"{name} std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
    assert "## Replicates: mean ± std (sample, n-1) over data.fold" in (tmp_path / "summary.md").read_text()


# --- replicates: jobs that differ only in seed (or fold) are one configuration, compared by a significance test ---


def finished_job(sweep_dir: Path, number: int, overrides: list[str], val_acc: float) -> None:
    """A job dir as a finished sweep job leaves it: Hydra's overrides.yaml, job.json, metrics.json."""
    job_dir = sweep_dir / str(number)
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job_dir / "job.json").write_text(json.dumps({"status": "ok", "monitor": "val/acc", "mode": "max", "value": val_acc}))
    (job_dir / "metrics.json").write_text(json.dumps({"val/acc": val_acc, "test/acc": val_acc - 0.001, "val/loss": 0.1,
                                                      "test/loss": 0.1, "train_time_s": 10.0 + number, "epochs": 3}))


def test_replicates_are_averaged_and_each_configuration_is_tested_against_the_best(tmp_path):
    from scipy import stats

    accs = {"0": [0.990, 0.991, 0.992], "0.2": [0.985, 0.987, 0.986], "0.1": [0.9895, 0.9915, 0.9905]}
    number = 0
    for dropout, values in accs.items():
        for seed, value in enumerate(values):
            finished_job(tmp_path, number, [f"model.dropout={dropout}", f"seed={seed}"], value)
            number += 1
    finished_job(tmp_path, number, ["model.dropout=0.3", "seed=0"], 0.980)  # one replicate: no test possible
    SweepSummary(replicate_keys=["seed", "data.fold"]).on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    rows = read_csv(tmp_path / "summary_replicates.csv")
    assert [r["model.dropout"] for r in rows] == ["0", "0.1", "0.2", "0.3"]  # best first by mean val/acc
    assert [r["replicates"] for r in rows] == ["3", "3", "3", "1"]
    assert float(rows[0]["val/acc mean"]) == pytest.approx(0.991) and float(rows[0]["val/acc std"]) == pytest.approx(0.001)
    assert float(rows[0]["train_time_s mean"]) == pytest.approx(11.0)
    assert rows[1]["test_vs_best"] == "paired t"  # same seeds: paired
    assert float(rows[1]["p_vs_best"]) == pytest.approx(stats.ttest_rel(accs["0"], accs["0.1"]).pvalue)
    assert float(rows[2]["p_vs_best"]) == pytest.approx(stats.ttest_rel(accs["0"], accs["0.2"]).pvalue)
    assert float(rows[2]["p_vs_best"]) < 0.05 < float(rows[1]["p_vs_best"])  # 0.5 points apart is real; 0.05 is not
    assert rows[3]["test_vs_best"] == "" and rows[3]["p_vs_best"] == ""
    markdown = (tmp_path / "summary.md").read_text()
    assert "## Replicates: mean ± std (sample, n-1) over seed, best first by val/acc" in markdown
    assert "| 0 | 3/3 | 0.9910 ± 0.0010 |" in markdown and "Best configuration: model.dropout=0." in markdown


def test_replicates_without_shared_seeds_use_welchs_test(tmp_path):
    from scipy import stats

    for number, (dropout, seed, value) in enumerate([(0, 0, 0.99), (0, 1, 0.992), (0.2, 2, 0.985), (0.2, 3, 0.984), (0.2, 4, 0.987)]):
        finished_job(tmp_path, number, [f"model.dropout={dropout}", f"seed={seed}"], value)
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    best, other = read_csv(tmp_path / "summary_replicates.csv")
    assert other["test_vs_best"] == "Welch t"
    assert float(other["p_vs_best"]) == pytest.approx(stats.ttest_ind([0.99, 0.992], [0.985, 0.984, 0.987], equal_var=False).pvalue)


# --- Optuna and submitit --------------------------------------------------------------------------------------


def test_optuna_search_runs_its_trials_as_submitit_local_jobs(data_dir, tmp_path):
    result = sweep(
        tmp_path, "hparams_search=mlp_optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
        "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1", data_dir=data_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = job_files(tmp_path, "job.json")
    assert len(records) == 2 and {r["threads"] for r in records.values()} == {1}
    assert list(tmp_path.glob(".submitit/*/*_log.out"))  # the jobs really ran through submitit
    rows = read_csv(tmp_path / "summary.csv")
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert all(r["optimizer.lr"] and r["model.hidden_dims"].startswith("[") for r in rows)  # sampled per trial
    optuna_best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert optuna_best["best_value"] == pytest.approx(float(rows[0]["val/acc"]))
    import optuna  # the submitit jobs reported every validation to their trials through the study's journal

    from mlplab.search.studies import open_storage

    trials = optuna.load_study(study_name="mlp", storage=open_storage(str(tmp_path / "optuna.journal"))).trials
    assert [len(t.intermediate_values) for t in trials] == [1, 1]


# --- launcher configs -----------------------------------------------------------------------------------------


def test_slurm_launcher_preset_composes():
    launcher = compose_config("train", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], with_hydra=True).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.cpus_per_task) == ("gpu", 1, 4)


def test_optuna_search_composes_with_a_seeded_sampler():
    sweeper = compose_config("train", ["hparams_search=mlp_optuna", "seed=3"], with_hydra=True).hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.sampler.seed == 3
    assert {"optimizer.lr", "optimizer.weight_decay", "model.dropout", "model.hidden_dims"} == set(sweeper.params)
    # batch size is held fixed: with pruning on by default, a smaller batch would win the cut by its extra steps
    assert sweeper.pruner._target_ == "optuna.pruners.MedianPruner" and "data.batch_size" not in sweeper.params


def test_optuna_direction_must_match_the_monitored_metric_before_any_job(caplog):
    SweepSummary().on_multirun_start(compose_config("train", ["hparams_search=mlp_optuna"], with_hydra=True))
    SweepSummary().on_multirun_start(compose_config("train", [], with_hydra=True))  # the basic sweeper has no direction
    with pytest.raises(SystemExit):
        SweepSummary().on_multirun_start(compose_config("train", ["hparams_search=mlp_optuna", "hydra.sweeper.direction=minimize"], with_hydra=True))
    assert "hydra.sweeper.direction=minimize but the objective, val/acc, is best at its max" in caplog.text


def test_parallel_jobs_get_their_share_of_the_cores():
    cfg = OmegaConf.create({"num_threads": None})
    cores = available_cores()
    assert job_threads(cfg, None) is None  # a single run keeps torch's default
    assert job_threads(cfg, OmegaConf.create({"n_jobs": 2})) == max(1, cores // 2)
    assert job_threads(cfg, OmegaConf.create({"n_jobs": -1})) == 1
    assert job_threads(cfg, OmegaConf.create({"cpus_per_task": 3})) == 3
    assert job_threads(OmegaConf.create({"num_threads": 5}), OmegaConf.create({"n_jobs": 2})) == 5
