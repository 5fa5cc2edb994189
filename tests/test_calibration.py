"""How far a model's confidence can be trusted: the temperature a run fits and keeps, eval.py's calibration error,
reject table and out-of-distribution AUROC, predict.py's "not sure", and the int8 ONNX export.

One tiny run (synthetic data, 2 epochs) is shared by every test here.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from conftest import compose_config, make_dataset
from mlplab.calibration import TEMPERATURE_KEY, calibration_error, fit_temperature, reliability_bins
from mlplab.checkpoint_reader import load_trained
from mlplab.data.datamodule import load_split
from mlplab.errors import ConfigError, UserError
from mlplab.evaluation import evaluate
from mlplab.export import export
from mlplab.pipeline import train
from mlplab.prediction import NOT_SURE, class_probabilities, predict, unsure
from mlplab.rules import check


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory) -> dict:
    """metrics.json of a finished `python train.py debug=fast trainer.max_epochs=2` run."""
    run_dir = tmp_path_factory.mktemp("calibrated_run")
    train(compose_config("train", ["debug=fast", "trainer.max_epochs=2", f"data.data_dir={data_dir}",
                                   "trainer.precision=auto"], run_dir))  # eval.py's: the same arithmetic, the same numbers
    return json.loads((run_dir / "metrics.json").read_text())


def test_training_fits_a_temperature_and_each_kept_checkpoint_carries_its_own(run, data_dir):
    assert run["val/temperature"] > 0 and run["val/temperature"] != pytest.approx(1.0)
    assert 0 <= run["test/ece_scaled"] <= 1 and 0 <= run["test/ece"] <= 1
    best = load_trained(run["best_ckpt"])
    assert best.temperature == pytest.approx(run["val/temperature"], rel=1e-5)
    assert load_trained(Path(run["best_ckpt"]).with_name("last.ckpt")).temperature > 0

    pictures = load_split(data_dir, "mnist", train=False)[0][:50].float() / 255
    scaled, raw = class_probabilities(best, pictures), class_probabilities(replace(best, temperature=1.0), pictures)
    assert not torch.allclose(scaled, raw, atol=1e-3)  # the probabilities change...
    assert torch.equal(scaled.argmax(1), raw.argmax(1))  # ...the answers do not


def test_a_checkpoint_without_a_temperature_reads_as_uncalibrated(run, tmp_path):
    contents = torch.load(run["best_ckpt"], weights_only=True)
    del contents[TEMPERATURE_KEY]  # as written before calibration, or with callbacks.temperature_scaling=null
    torch.save(contents, tmp_path / "old.ckpt")
    assert load_trained(tmp_path / "old.ckpt").temperature == 1.0


def test_an_over_confident_model_is_cooled_and_its_calibration_error_falls():
    generator = torch.Generator().manual_seed(0)
    honest = torch.randn(4000, 10, generator=generator) * 2
    labels = torch.multinomial(honest.softmax(1), 1, generator=generator)[:, 0]  # right exactly as often as it says
    over_confident = 4 * honest
    temperature = fit_temperature(over_confident, labels)
    assert temperature == pytest.approx(4, rel=0.15)
    before = calibration_error(over_confident.softmax(1), labels)
    after = calibration_error((over_confident / temperature).softmax(1), labels)
    assert after < before / 3
    bins = reliability_bins((over_confident / temperature).softmax(1), labels)
    assert int(bins.count.sum()) == 4000
    filled = bins.count > 0  # torchmetrics' ECE is these bins' weighted gaps
    gaps = (bins.confidence[filled] - bins.accuracy[filled]).abs() * bins.count[filled] / 4000
    assert float(gaps.sum()) == pytest.approx(after, abs=1e-5)


def test_predict_answers_not_sure_under_reject_below_and_keeps_the_probabilities(run, data_dir, tmp_path):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for index, image in enumerate(load_split(data_dir, "mnist", train=False)[0][:4]):
        Image.fromarray(image.numpy()).save(pictures / f"digit{index}.png")
    for reject_below, expect_unsure in ((0.999999, True), (0.0, False)):
        out = tmp_path / str(reject_below)
        predict(compose_config("predict", [f"ckpt_path={run['best_ckpt']}", f"inputs={pictures}", "fit=false",
                                           f"reject_below={reject_below}"], out))
        with open(out / "predictions.csv") as file:
            rows = list(csv.DictReader(file))
        assert len(rows) == 4 and all(float(row["probability_1"]) > 0 for row in rows)
        assert all((row["answer"] == NOT_SURE) == expect_unsure for row in rows)
        assert all(row["answer"] == row["class_1"] for row in rows if not expect_unsure)

    probabilities = torch.tensor([[0.6, 0.4], [0.95, 0.05]])
    assert unsure(probabilities, 0.9).tolist() == [True, False]
    assert unsure(probabilities, None).tolist() == [False, False]
    with pytest.raises(ConfigError, match=r"reject_below=1 must be a number in \[0, 1\), or null to always answer"):
        check({"reject_below": 1})


def test_eval_reports_calibration_the_reject_table_and_how_well_confidence_spots_other_pictures(run, data_dir, tmp_path):
    noise = tmp_path / "noise" / "some_class"  # subfolders are searched too
    noise.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(20):
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(noise / f"{index}.png")
    report = evaluate(compose_config("eval", [f"ckpt_path={run['best_ckpt']}", f"data_dir={data_dir}",
                                              f"ood={tmp_path / 'noise'}"], tmp_path / "eval"))
    assert report["temperature"] == pytest.approx(run["val/temperature"], rel=1e-5)
    assert report["test/ece"] == pytest.approx(run["test/ece"], abs=1e-4)  # the numbers training logged
    assert report["test/ece_scaled"] == pytest.approx(run["test/ece_scaled"], abs=1e-4)
    assert sum(row["images"] for row in report["reliability"]["scaled"]) == 200
    coverage = [row["coverage"] for row in report["reject"]]
    assert [row["threshold"] for row in report["reject"]] == [0.5, 0.9, 0.99] and coverage == sorted(coverage, reverse=True)
    assert report["ood"]["images"] == 20 and 0 <= report["ood"]["auroc"] <= 1 and 0 <= report["ood"]["auroc_raw"] <= 1
    assert all(0 <= row["ood_accepted"] <= 1 for row in report["reject"])
    assert (tmp_path / "eval" / "reliability.png").stat().st_size > 1000
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["ood"] == report["ood"]


@pytest.mark.parametrize(("ood", "message"), [
    ("mnist", "ood=mnist is the data being evaluated (the model's own dataset): choose one of fashion_mnist, kmnist "
              "or a folder of pictures"),
    ("cifar10", "ood=cifar10 must be one of fashion_mnist, kmnist or a folder of pictures; no such dataset or folder"),
    ("kmnist", "kmnist data not found in"),
    ("empty", "holds no PNG/JPG/JPEG picture"),
])
def test_a_bad_ood_is_one_line_before_anything_runs(run, tmp_path, ood, message):
    only_mnist = make_dataset(tmp_path / "data", "MNIST")  # no KMNIST here
    (tmp_path / "empty").mkdir()
    ood = str(tmp_path / "empty") if ood == "empty" else ood
    with pytest.raises(UserError, match=re.escape(message)):
        evaluate(compose_config("eval", [f"ckpt_path={run['best_ckpt']}", f"data_dir={only_mnist}", f"ood={ood}"], tmp_path))


def test_int8_export_agrees_with_the_checkpoint_and_carries_its_temperature(run, data_dir, tmp_path):
    path = export(compose_config("export", [f"ckpt_path={run['best_ckpt']}", "format=onnx", "quantize=int8"], tmp_path))
    assert path.name == "model.int8.onnx"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["mlplab"])
    assert meta["temperature"] == pytest.approx(run["val/temperature"], rel=1e-5) and meta["quantized"].startswith("int8")
    images = load_split(data_dir, "mnist", train=False)[0].float() / 255
    int8 = torch.from_numpy(session.run(None, {"images": images.unsqueeze(1).numpy()})[0])
    float32 = class_probabilities(load_trained(run["best_ckpt"]), images)
    assert float((int8.argmax(1) == float32.argmax(1)).float().mean()) >= 0.9

    with pytest.raises(ConfigError, match="quantize=int8 needs format=onnx"):
        export(compose_config("export", [f"ckpt_path={run['best_ckpt']}", "quantize=int8"], tmp_path / "refused"))
