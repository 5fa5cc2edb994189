"""The LR range test: `python lr_find.py` on the recipe train.py would run (README: "Finding a learning rate")."""

from __future__ import annotations

import json
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_config, run_script
from mlplab.config import validate
from mlplab.errors import ConfigError


def test_lr_find_plots_the_loss_against_the_lr_and_suggests_one(data_dir, tmp_path):
    result = run_script("lr_find.py", "debug=fast", "logger=tensorboard", "data.batch_size=16",
                        "lr_find.num_training=30", f"hydra.run.dir={tmp_path}", data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads((tmp_path / "lr_find.json").read_text())
    suggestion, peak = found["suggested_lr"], found["one_cycle_peak"]
    assert math.isfinite(suggestion) and 1e-6 <= suggestion <= 1.0 and math.isfinite(peak) and peak > 0
    assert len(found["lr"]) == len(found["loss"]) >= 20 and found["lr"] == sorted(found["lr"])
    output = result.stdout + result.stderr
    assert f"the loss falls fastest at {suggestion:.3g}" in output and f"one-cycle peak {peak:.3g}" in output
    assert (tmp_path / "lr_find.png").stat().st_size > 10_000
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert "lr_find/loss_vs_lr" in events.Tags()["images"]
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "finished"


def test_lr_find_refuses_an_empty_range():
    cfg = compose_config("train", ["+lr_find.min_lr=0.1", "+lr_find.max_lr=0.01", "+lr_find.num_training=5"])
    with pytest.raises(ConfigError) as refused:
        validate(cfg)
    assert "lr_find.num_training=5 must be an integer >= 20" in str(refused.value)
    assert "lr_find.max_lr=0.01 must be above lr_find.min_lr=0.1" in str(refused.value)
