"""A checkpoint used with a config it does not fit: one line naming what differs, and the command that fits."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import compose_config
from mlplab.errors import ConfigError
from mlplab.evaluation import evaluate
from mlplab.pipeline import train

TINY = ["debug=fast", "scheduler=none", "model.hidden_dims=[8]"]


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("fit_run")
    train(compose_config("train", [*TINY, f"data.data_dir={data_dir}"], run_dir))
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(("changed", "message"), [
    (["model.hidden_dims=[16]"], "the checkpoint's model.hidden_dims=[8] vs this command's [16]"),
    (["model.activation=gelu", "model.batch_norm=false"],
     "the checkpoint's model.activation='relu' vs this command's 'gelu'; the checkpoint's model.batch_norm=True vs this command's False"),
    (["data=fashion_mnist"], "the checkpoint's data.dataset='mnist' vs this command's 'fashion_mnist'"),
    (["data.classes=[0,1,2]"], "the checkpoint's data.classes=null vs this command's [0, 1, 2]"),
])
def test_resuming_with_another_network_or_data_names_the_difference(changed, message, finished_run, data_dir, monkeypatch, tmp_path):
    overrides = [*TINY, *changed, f"ckpt_path={finished_run}", "trainer.max_epochs=2", f"data.data_dir={data_dir}"]
    monkeypatch.setattr(sys, "argv", ["train.py", *overrides])
    with pytest.raises(ConfigError) as err:
        train(compose_config("train", overrides, tmp_path))
    line = str(err.value)
    assert line.startswith(f"ckpt_path={finished_run} does not fit this config: {message}; run it with: python train.py ")
    resume = line.split("run it with: ")[1]
    assert f"ckpt_path={finished_run}" in resume and "trainer.max_epochs=2" in resume
    assert not set(changed) & set(resume.split()) and "\n" not in line


def test_eval_on_other_data_than_the_checkpoint_names_the_difference(finished_run, data_dir, monkeypatch, tmp_path):
    overrides = [f"ckpt_path={finished_run}", "data=kmnist", f"data.data_dir={data_dir}", "split=val"]
    monkeypatch.setattr(sys, "argv", ["eval.py", *overrides])
    with pytest.raises(ConfigError, match=r"the checkpoint's data.dataset='mnist' vs this command's 'kmnist'; run it with: "
                                          rf"python eval.py ckpt_path={finished_run} split=val$"):
        evaluate(compose_config("eval", overrides, tmp_path))
