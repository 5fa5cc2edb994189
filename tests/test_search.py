"""Optuna search: `python train.py -m hparams_search=mlp_optuna` on Optuna >= 4, with pruning, studies that
outlive a command (resumed, shared by parallel commands), the best trial as a command, and a search space
checked before any trial. Tiny networks, one or two epochs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from optuna.trial import TrialState

from conftest import ROOT, compose_config, run_script
from mlplab.errors import ConfigError
from mlplab.search.optuna_configs import PRUNERS, SAMPLERS
from mlplab.search.optuna_sweeper import NOT_COUNTED, OWNER, OptunaSearch, SearchSpace
from mlplab.search.studies import open_storage, trial_by_number
from test_sweeps import job_files, read_csv, sweep

SEARCH = ["hparams_search=mlp_optuna", "model.hidden_dims=choice([8],[16])", "hydra.sweeper.sampler.n_startup_trials=2",
          "hydra/sweeper/pruner=none", "data.batch_size=32"]  # a fixed batch: 512 is more than the 500 training images


def load(storage: str | Path, name: str = "mlp") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(storage)))


# --- pruning: a hopeless trial stops after its first epoch, recorded as pruned, and the sweep succeeds ----------


@pytest.fixture(scope="module")
def pruned_search(data_dir, tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("pruned")
    result = sweep(
        sweep_dir, *SEARCH, "hydra.sweeper.n_trials=4", "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1", "trainer.max_epochs=2", data_dir=data_dir,
    )
    return sweep_dir, result


def test_a_pruned_trial_is_recorded_as_pruned_not_failed(pruned_search):
    sweep_dir, result = pruned_search
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(sweep_dir / "optuna.journal")
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert len(study.trials) == 4 and pruned
    records = job_files(sweep_dir, "job.json")
    for trial in pruned:  # the job's record says when it stopped and what it last reported
        record = records[str(trial.number)]
        assert (record["status"], record["epoch"]) == ("pruned", trial.last_step)
        assert record["value"] == pytest.approx(trial.intermediate_values[trial.last_step])
        assert not (sweep_dir / str(trial.number) / "metrics.json").exists()  # stopped at once: no test pass
    rows = {r["job"]: r for r in read_csv(sweep_dir / "summary.csv")}
    assert {job for job, r in rows.items() if r["status"] == "pruned"} == {str(t.number) for t in pruned}
    assert all(r["status"] in ("ok", "pruned") for r in rows.values())
    summary = (sweep_dir / "summary.md").read_text()
    assert f"{len(pruned)} pruned, 0 failed" in summary and "pruned at epoch " in summary
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete and all(list(t.intermediate_values) == [1, 2] for t in complete)  # each epoch's validation


def test_the_best_trial_is_written_as_a_command_that_reproduces_it(pruned_search, data_dir, tmp_path):
    sweep_dir, _ = pruned_search
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    study = load(sweep_dir / "optuna.journal")
    assert (best["trial"], best["value"]) == (study.best_trial.number, study.best_value)
    overrides = (sweep_dir / "best_overrides.txt").read_text().split()
    assert overrides == best["overrides"] and best["command"].startswith("python ")
    assert f"model.hidden_dims={study.best_params['model.hidden_dims']}" in overrides
    result = run_script("train.py", *overrides, f"hydra.run.dir={tmp_path}", data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["val/acc"] == pytest.approx(best["value"], abs=1e-6)


# --- a killed search resumed by two commands working on the same study at once ----------------------------------


@pytest.fixture(scope="module")
def resumed(data_dir, tmp_path_factory):
    """Command A is killed while its second trial runs; B (A's sweep dir) and C (its own) then finish the study."""
    first, other = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("other")
    journal = first / "optuna.journal"
    args = [*SEARCH, "debug=fast", "hydra.sweeper.n_trials=4", f"hydra.sweeper.storage={journal}"]
    env = os.environ | {"DATA_DIR": str(data_dir), "PYTHONWARNINGS": "ignore"}

    def command(sweep_dir: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(ROOT / "train.py"), "-m", *args, f"hydra.sweep.dir={sweep_dir}"],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    killed = command(first)
    deadline = time.monotonic() + 120
    while not (first / "1" / ".hydra").is_dir() and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    before = load(journal).trials
    workers = [command(first), command(other)]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    return journal, first, other, before, [worker.returncode for worker in workers], outputs


def test_a_killed_search_resumes_and_its_finished_trials_count(resumed):
    journal, first, other, before, returncodes, outputs = resumed
    assert returncodes == [0, 0], "\n".join(o[-2000:] for o in outputs)
    [abandoned] = [t for t in before if t.state == TrialState.RUNNING]  # the trial the kill interrupted
    trials = load(journal).trials
    counted = [t for t in trials if NOT_COUNTED not in t.user_attrs]
    assert len(counted) == 4 and all(t.state == TrialState.COMPLETE for t in counted)
    assert {t.number for t in before if t.state == TrialState.COMPLETE} <= {t.number for t in counted}
    assert trials[abandoned.number].state == TrialState.FAIL  # failed out of the count, its values asked again:
    [retry] = [t for t in counted if t.user_attrs.get("retry_of") == abandoned.number]
    assert retry.params == abandoned.params
    record = json.loads((first / str(abandoned.number) / "job.json").read_text())
    assert record["status"] == "retried"


def test_two_commands_share_one_study_without_repeating_a_trial(resumed):
    journal, first, other, before, returncodes, outputs = resumed
    counted = [t for t in load(journal).trials if NOT_COUNTED not in t.user_attrs]
    started_before = {t.number for t in before}
    later = [t for t in counted if t.number not in started_before or t.user_attrs.get("retry_of") is not None]
    assert len({t.user_attrs[OWNER] for t in later}) == 2  # both commands ran trials
    params = [tuple(sorted(t.params.items())) for t in counted]
    assert len(set(params)) == len(params)  # no configuration ran twice
    ran = {int(p.parent.name) for d in (first, other) for p in d.glob("*/job.json")
           if json.loads(p.read_text())["status"] == "ok"}
    assert ran == {t.number for t in counted}  # one job dir per trial, named by its number
    assert "4 trials: 4 complete" in (first / "summary.md").read_text() + (other / "summary.md").read_text()


def test_two_commands_giving_back_one_abandoned_trial_queue_it_once(tmp_path):
    """Both commands resuming a killed search find its running trial: one fails and requeues it, the other lets be."""
    journal = str(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="mlp", storage=open_storage(journal), direction="maximize")
    abandoned = study.ask({"model.dropout": optuna.distributions.FloatDistribution(0.0, 0.4)})
    for _ in range(2):
        command = OptunaSearch(sampler=None, pruner=None, direction="maximize", study_name="mlp", storage=journal,
                                n_trials=2, n_jobs=1, params=None)
        command.sweep_dir, command.storage_handle = tmp_path, open_storage(journal)
        command.give_back(load(journal), abandoned.number, abandoned.params, "left running by a killed command")
    trials = load(journal).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs[NOT_COUNTED] == "left running by a killed command" and trials[1].user_attrs == {"retry_of": 0}


# --- the search space is checked before any trial -----------------------------------------------------------------


def test_a_bad_search_space_entry_is_refused_in_one_line_before_any_trial(data_dir, tmp_path):
    result = sweep(tmp_path, *SEARCH, "model.dropout=interval(0.5,0.1)", data_dir=data_dir)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = [line for line in (result.stdout + result.stderr).splitlines() if "error:" in line]
    assert "search space model.dropout=interval(0.5,0.1): " in line and "low" in line and "allowed: interval(" in line
    assert not list(tmp_path.glob("*/job.json")) and not (tmp_path / "optuna.journal").exists()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("model.dropout=interval(0.0,1.5)", "model.dropout=1.5 must be a number in [0, 1)"),
        ("optimizer.lr=tag(log,interval(0,0.1))", "optimizer.lr=tag(log,interval(0,0.1)): "),
        ("optimizer.lrr=interval(0.1,0.2)", "optimizer.lrr is not a setting: optimizer has .*did you mean optimizer.lr?"),
        ("data.batch_size=range(64,16)", "the range is empty"),
    ],
)
def test_search_space_entries_are_checked_against_the_config(entry, message):
    sweeper = OptunaSearch(sampler=None, pruner=None, direction="maximize", study_name=None, storage=None,
                            n_trials=1, n_jobs=1, params=None)
    sweeper.config = compose_config("train", ["hparams_search=mlp_optuna"], with_hydra=True)
    with pytest.raises(ConfigError, match=f"search space .*{message.replace('(', '.').replace(')', '.').replace('[', '.')}"):
        sweeper.search_space([entry])


def test_the_search_space_keeps_hydras_syntax():
    sweeper = OptunaSearch(sampler=None, pruner=None, direction="maximize", study_name=None, storage=None,
                            n_trials=1, n_jobs=1, params=compose_config("train", ["hparams_search=mlp_optuna"], with_hydra=True).hydra.sweeper.params)
    sweeper.config = compose_config("train", ["hparams_search=mlp_optuna"], with_hydra=True)
    space, fixed = sweeper.search_space(["trainer.max_epochs=3", "data.batch_size=64", "data.val_size=range(100,400,100)"])
    d = space.distributions
    assert d["optimizer.lr"] == optuna.distributions.FloatDistribution(3e-4, 1e-2, log=True)
    assert d["model.dropout"] == optuna.distributions.FloatDistribution(0.0, 0.4)
    assert d["model.hidden_dims"].choices[:3] == ("[256]", "[512]", "[512,256]")
    assert "data.batch_size" not in d and fixed == ["trainer.max_epochs=3", "data.batch_size=64"]  # the command line wins
    assert d["data.val_size"] == optuna.distributions.IntDistribution(100, 300, step=100)
    assert space.overrides({"model.hidden_dims": "[512,256]", "optimizer.lr": 0.001}) == [
        "model.hidden_dims=[512,256]", "optimizer.lr=0.001"]


def test_a_job_finds_its_trial_by_number_in_the_storage(tmp_path):
    """mlplab.search.studies.trial_by_number relies on Trial(study, trial_id): if Optuna changes it, this fails."""
    storage = open_storage(str(tmp_path / "study.journal"))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    asked = [study.ask() for _ in range(2)]
    elsewhere = optuna.load_study(study_name="s", storage=open_storage(str(tmp_path / "study.journal")))
    trial = trial_by_number(elsewhere, open_storage(str(tmp_path / "study.journal")), asked[1].number)
    trial.report(0.5, step=1)
    assert study.trials[1].intermediate_values == {1: 0.5} and not study.trials[0].intermediate_values


@pytest.mark.parametrize(
    ("storage", "reason"),
    [
        ("sqlite:///{tmp}/no/such/folder/optuna.db", "OperationalError: (sqlite3.OperationalError) unable to open database file"),
        ("notadialect://host/db", "NoSuchModuleError: Can't load plugin: sqlalchemy.dialects:notadialect"),
        ("{tmp}/a_folder", "IsADirectoryError: "),
        ("{tmp}/a_file/optuna.journal", "FileExistsError: "),
    ],
)
def test_a_storage_that_cannot_be_opened_is_one_line_naming_it(tmp_path, storage, reason):
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("")
    storage = storage.format(tmp=tmp_path)
    with pytest.raises(ConfigError) as refused:
        open_storage(storage)
    message = str(refused.value)
    assert message.startswith(f"hydra.sweeper.storage={storage} cannot be opened ({reason}") and "\n" not in message
    assert message.endswith("use a journal file in a folder you can write, or an RDB URL whose database and driver "
                            "are there (sqlite:///optuna.db)")


def test_the_study_report_counts_pruned_trials_and_gives_importances_once_enough_completed(tmp_path):
    sweeper = OptunaSearch(sampler=None, pruner=None, direction="maximize", study_name=None, storage=None,
                            n_trials=5, n_jobs=1, params=None, importance_min_trials=4)
    sweeper.sweep_dir, sweeper.storage_url = tmp_path, "(in memory)"
    space = SearchSpace()
    space.distributions = {"optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
                           "model.dropout": optuna.distributions.FloatDistribution(0.0, 0.4)}
    study = optuna.create_study(study_name="mlp", direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    for complete in (3, 1):
        for _ in range(complete):
            trial = study.ask(space.distributions)
            study.tell(trial, 1 - trial.params["model.dropout"])
        trial = study.ask(space.distributions)
        trial.report(0.1, step=1)
        study.tell(trial, state=TrialState.PRUNED)
        sweeper.write_results(study, space, ["trainer.max_epochs=1"])
        report = (tmp_path / "study.md").read_text()
        if complete == 3:
            assert "4 trials: 3 complete, 1 pruned, 0 failed" in report and "after 4 complete trials" in report
    assert "6 trials: 4 complete, 2 pruned, 0 failed" in report
    rows = [line.strip("| ").split(" | ") for line in report.splitlines() if line.startswith(("| model.", "| optimizer."))]
    assert {name for name, _ in rows} == set(space.distributions)
    assert sum(float(value) for _, value in rows) == pytest.approx(1.0, abs=0.01)  # Optuna's normalized importances
    assert (tmp_path / "best_overrides.txt").read_text().startswith("trainer.max_epochs=1\noptimizer.lr=")


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_searches_the_default_space_and_its_seed_repeats_it(name, tmp_path):
    """`hydra/sweeper/sampler=<name>` with the search config as it is: the sampler is built with the run's seed,
    proposes values inside the space (the categorical hidden_dims too), and the same seed proposes the same."""
    def proposals(study_dir: Path) -> list[dict]:
        cfg = compose_config("train", ["hparams_search=mlp_optuna", f"hydra/sweeper/sampler={name}", "seed=3",
                                       f"hydra.sweep.dir={study_dir}"], with_hydra=True)
        sweeper = instantiate(cfg.hydra.sweeper, _target_="mlplab.search.optuna_sweeper.OptunaSearch")
        sweeper.config, sweeper.sweep_dir = cfg, study_dir
        space, _ = sweeper.search_space([])
        study = sweeper.open_study()
        trials = []
        for value in (0.5, 0.7, 0.6, 0.8, 0.4, 0.9):  # past the start-up trials of gp and tpe
            trial = sweeper.ask(study, space)
            study.tell(trial, value)
            trials.append(trial.params)
        return trials

    first = proposals(tmp_path / "a")
    assert first == proposals(tmp_path / "b")
    assert len({str(params) for params in first}) == len(first)
    for params in first:
        assert 3e-4 <= params["optimizer.lr"] <= 1e-2 and 0 <= params["model.dropout"] <= 0.4
        assert params["model.hidden_dims"] in ("[256]", "[512]", "[512,256]", "[1024,512]", "[1024,1024]", "[512,256,128]", "[1024,512,256]")


@pytest.mark.parametrize("name", list(PRUNERS))
def test_a_pruner_named_in_short_is_the_one_its_config_group_builds(name):
    """`hydra.sweeper.pruner=<name>` and `hydra/sweeper/pruner=<name>` must prune alike: one set of defaults."""
    from mlplab.search.studies import build_pruner

    cfg = compose_config("train", ["hparams_search=mlp_optuna", f"hydra/sweeper/pruner={name}"], with_hydra=True)
    from_group, from_name = instantiate(cfg.hydra.sweeper.pruner), build_pruner(name)
    assert type(from_group) is type(from_name) and vars(from_group) == vars(from_name)


# --- several objectives: the Pareto front of accuracy against size --------------------------------------------


def test_a_search_with_two_objectives_ends_with_its_pareto_front(data_dir, tmp_path):
    result = sweep(tmp_path, *SEARCH, "model.hidden_dims=choice([8],[16],[64])", "hydra.sweeper.n_trials=4",
                   "hydra.sweeper.direction=[maximize,minimize]", "hydra.sweeper.objectives=[val/acc,parameters]",
                   data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(tmp_path / "optuna.journal")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    metrics = job_files(tmp_path, "metrics.json")
    for trial in study.trials:  # each objective read from the job's metrics.json
        assert trial.values == [metrics[str(trial.number)]["val/acc"], metrics[str(trial.number)]["parameters"]]
    front = {t.number for t in study.best_trials}
    for trial in study.trials:  # on the front exactly when no other trial is at least as good on both and better on one
        beaten = any(o.values[0] >= trial.values[0] and o.values[1] <= trial.values[1] and o.values != trial.values
                     for o in study.trials)
        assert (trial.number in front) == (not beaten)
    pareto = yaml.safe_load((tmp_path / "pareto.yaml").read_text())
    assert [p["trial"] for p in pareto] == sorted(front, key=lambda n: -study.trials[n].values[0])
    assert pareto[0]["command"].startswith("python train.py ") and "model.hidden_dims=" in pareto[0]["command"]
    summary = (tmp_path / "summary.md").read_text()
    assert f"Pareto front: {len(front)} trials that no other trial beats on every objective" in summary
    assert "| trial | val/acc (maximize) | parameters (minimize) |" in summary
    assert not (tmp_path / "best.yaml").exists()  # no single best trial with two objectives


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hydra.sweeper.direction=[maximize,minimize]", "hydra.sweeper.objectives=[val/acc,train_time_s]",
          "hydra/sweeper/pruner=median"],
         "error: hydra.sweeper.pruner must be none with several objectives (hydra.sweeper.direction=['maximize', "
         "'minimize']): Optuna prunes single-objective studies only; add hydra/sweeper/pruner=none"),
        (["hydra.sweeper.direction=[maximize,minimize]"], "must come with hydra.sweeper.objectives, one metric per direction"),
        (["hydra.sweeper.direction=[maximize,maximize]", "hydra.sweeper.objectives=[val/acc,train_time_s]",
          "hydra/sweeper/pruner=none"],
         "error: hydra.sweeper.direction=[maximize,maximize] but the objective, train_time_s, is better minimized; "
         "set hydra.sweeper.direction=minimize for train_time_s"),
        (["hydra.sweeper.replicates='seed=0,1'", "hydra/sweeper/pruner=median"],
         "hydra.sweeper.pruner must be none when each trial is several runs"),
    ],
)
def test_settings_a_search_cannot_honour_are_refused_in_one_line_before_any_trial(data_dir, tmp_path, overrides, message):
    result = sweep(tmp_path, "hparams_search=mlp_optuna", *overrides, data_dir=data_dir)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output and message in output
    assert len([line for line in output.splitlines() if "error:" in line]) == 1
    assert not list(tmp_path.glob("*/job.json"))


def test_a_trial_with_replicates_is_scored_on_their_mean(data_dir, tmp_path):
    result = sweep(tmp_path, *SEARCH, "hydra.sweeper.n_trials=2", "hydra.sweeper.replicates='seed=0,1'", data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    for trial in load(tmp_path / "optuna.journal").trials:
        runs = [json.loads((tmp_path / str(trial.number) / str(i) / "metrics.json").read_text()) for i in (0, 1)]
        assert trial.value == pytest.approx((runs[0]["val/acc"] + runs[1]["val/acc"]) / 2)
        assert not trial.intermediate_values  # the runs of a replicated trial do not report to it
    rows = read_csv(tmp_path / "summary_replicates.csv")
    assert len(rows) == 2 and {r["replicates"] for r in rows} == {"2"}
    assert yaml.safe_load((tmp_path / "best.yaml").read_text())["command"].endswith(" seed=0,1")  # -m: both runs again


# --- parallel trials: a trial that ends frees its worker for the next one ----------------------------------------


def test_with_two_workers_a_finished_trial_frees_its_slot_without_waiting_for_the_other(tmp_path):
    """Trial 0 runs long, trial 1 short: trial 2 must start on trial 1's worker while trial 0 still runs."""
    events: list[tuple[str, int]] = []
    release = threading.Event()

    class Launcher:  # runs a "job" in the calling thread, as a joblib or submitit launch call waits for its jobs
        def launch(self, batch, initial_job_idx):
            number = int(next(o for o in batch[0] if o.startswith("hydra.sweeper.trial=")).partition("=")[2])
            events.append(("start", number))
            if number == 0:
                release.wait(timeout=60)  # the long trial: runs until trial 2 has started
            if number == 2:
                release.set()
            events.append(("end", number))
            return [JobReturn(status=JobStatus.COMPLETED, _return_value=0.5 + number / 10)]

    cfg = compose_config("train", ["hparams_search=mlp_optuna", "hydra/launcher=joblib", "hydra/sweeper/pruner=none",
                                   f"hydra.sweep.dir={tmp_path}"], with_hydra=True)
    search = instantiate(cfg.hydra.sweeper, _target_="mlplab.search.optuna_sweeper.OptunaSearch", n_trials=3, n_jobs=2)
    search.config, search.sweep_dir, search.launcher = cfg, tmp_path, Launcher()
    search.validate_batch_is_legal = lambda batch: None
    search.sweep([])
    assert events.index(("start", 2)) < events.index(("end", 0))
    assert [t.state for t in load(tmp_path / "optuna.journal").trials] == [TrialState.COMPLETE] * 3
