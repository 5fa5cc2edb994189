"""After a run: what TensorBoard serves, `eval.py` on its checkpoint, `predict.py` on pictures, `export.py`.

One tiny run (synthetic data, 2 epochs, histograms and graph switched on) is shared by every test here.
"""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from conftest import compose_config, refusal, run_script
from mlplab.checkpoint_reader import load_trained
from mlplab.data.datamodule import load_split
from mlplab.data.pictures import read_grayscale, to_model_input
from mlplab.errors import DataError, UserError
from mlplab.evaluation import evaluate
from mlplab.export import export
from mlplab.inspection import add_summary, experiment_summary
from mlplab.pipeline import train
from mlplab.prediction import predict


@pytest.fixture(scope="module")
def tiny_run(data_dir, tmp_path_factory) -> Path:
    """A finished `python train.py` run dir, with the optional histograms and model graph switched on."""
    run_dir = tmp_path_factory.mktemp("tiny_run")
    cfg = compose_config("train", ["debug=fast", "logger=tensorboard", "trainer.max_epochs=2", f"data.data_dir={data_dir}",
                                   "trainer.precision=auto",  # eval.py's: the same arithmetic, the same numbers
                                   "callbacks.parameter_histograms.enabled=true", "callbacks.model_graph.enabled=true"], run_dir)
    train(cfg)
    return run_dir


def run_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


# --- TensorBoard -------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body: dict | None = None):
    """GET, or POST a JSON body (the HParams plugin's requests)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def tensorboard(tiny_run):
    """`tensorboard --logdir <run dir>` on 127.0.0.1, serving once the run's data is loaded; always stopped."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tiny_run), "--host", "127.0.0.1",
         "--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}/data"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if "test/acc" in get_json(f"{base}/plugin/scalars/tags").get("tensorboard", {}):
                    break
            except OSError:
                pass  # not listening yet
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "TensorBoard did not serve the run's scalars in time"
            time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_tensorboard_serves_per_epoch_scalars(tensorboard):
    tags = get_json(f"{tensorboard}/plugin/scalars/tags")["tensorboard"]
    expected = {"train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc", "time/epoch_s",
                "time/samples_per_s", "lr-Adam"}
    assert expected <= tags.keys()


def test_tensorboard_serves_the_figures_histograms_and_graph(tensorboard):
    images = get_json(f"{tensorboard}/plugin/images/tags")["tensorboard"]
    assert {"test/confusion_matrix", "test/misclassified", "train/samples"} <= images.keys()
    histograms = get_json(f"{tensorboard}/plugin/histograms/tags")["tensorboard"]
    assert {"weights/net.head.weight", "gradients/net.head.weight"} <= histograms.keys()
    assert get_json(f"{tensorboard}/plugin/graphs/info")["tensorboard"]["run_graph"]


def test_hparams_tab_shows_the_run_with_its_final_metrics(tensorboard, tiny_run):
    experiment = get_json(f"{tensorboard}/plugin/hparams/experiment", {"experimentName": ""})
    hparams = {info["name"] for info in experiment["hparamInfos"]}
    assert {"optimizer.lr", "optimizer._target_", "net.hidden_dims", "net.dropout", "scheduler.scheduler._target_",
            "l1", "label_smoothing", "data.batch_size", "data.dataset", "data.seed", "trainer.max_epochs"} <= hparams
    assert "data.data_dir" not in hparams  # where the files live is not a hyperparameter
    # the columns the table opens with (5 of each): what users sweep and compare, then the final accuracies
    leading = [info["name"] for info in experiment["hparamInfos"]][:5]
    assert leading == ["data.batch_size", "net.dropout", "net.hidden_dims", "optimizer.lr", "trainer.max_epochs"]
    assert [info["name"]["tag"] for info in experiment["metricInfos"]][:4] == ["val/acc", "test/acc", "val/loss", "test/loss"]
    request = {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN", "STATUS_RUNNING"],
               "colParams": [], "startIndex": 0, "sliceSize": 10}
    [group] = get_json(f"{tensorboard}/plugin/hparams/session_groups", request)["sessionGroups"]
    [session] = group["sessions"]
    assert session["status"] == "STATUS_SUCCESS"
    assert group["hparams"]["optimizer.lr"] == pytest.approx(4e-3) and group["hparams"]["data.batch_size"] == 32
    values = {m["name"]["tag"]: m["value"] for m in session["metricValues"]}
    metrics = run_metrics(tiny_run)
    for tag in ("val/acc", "val/loss", "test/acc", "test/loss"):  # the best checkpoint's, as in metrics.json
        assert values[tag] == pytest.approx(metrics[tag], abs=1e-6), tag


def test_a_closed_writer_still_gets_the_hparams_session(tmp_path):
    """finetune.py tests the pretrained model before fitting, which closes Lightning's writer."""
    writer = SummaryWriter(tmp_path)
    writer.close()
    add_summary(writer, experiment_summary({"optimizer.lr": 0.001}))
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert events.PluginTagToContent("hparams")  # TensorBoard finds the experiment beside the closed file


# --- eval.py ----------------------------------------------------------------------------------------------

def test_eval_reports_the_test_metrics_of_the_run(tiny_run, data_dir, tmp_path):
    metrics = run_metrics(tiny_run)
    result = run_script("eval.py", f"ckpt_path={metrics['best_ckpt']}", f"hydra.run.dir={tmp_path}", data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "precision  recall" in output and "most confused (true -> predicted)" in output
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert report["test/loss"] == pytest.approx(metrics["test/loss"], abs=1e-6)
    assert report["images"] == 200 and report["dataset"] == "mnist"
    with open(tmp_path / "per_class.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["class"] for row in rows] == [str(d) for d in range(10)]
    assert sum(int(row["support"]) for row in rows) == 200
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000 and (tmp_path / "misclassified.png").is_file()


def test_eval_on_the_validation_split_reproduces_the_best_checkpoints_val_metrics(tiny_run, data_dir, tmp_path):
    metrics = run_metrics(tiny_run)
    cfg = compose_config("eval", [f"ckpt_path={metrics['best_ckpt']}", "split=val", f"data_dir={data_dir}"], tmp_path)
    report = evaluate(cfg)
    assert report["images"] == 100  # the run's own held-out split (data.val_size=100 came with the checkpoint)
    assert report["val/acc"] == pytest.approx(metrics["val/acc"], abs=1e-6)
    assert sum(pair["count"] for pair in report["most_confused"]) <= 100 * (1 - report["val/acc"]) + 1e-6


def test_eval_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="missing.ckpt: no such file; pass a checkpoint written by train.py"):
        evaluate(compose_config("eval", [f"ckpt_path={tmp_path}/missing.ckpt"], tmp_path))


# --- predict.py ----------------------------------------------------------------------------------------------

def test_predict_classifies_pictures_of_any_size_and_polarity(tiny_run, data_dir, tmp_path):
    """Test images blown up 4x as stored (light on dark) and 3x inverted (dark on light), saved as PNG."""
    images = load_split(data_dir, "mnist", train=False)[0][:3]
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for index, image in enumerate(images):
        for name, pixels, side in ((f"digit{index}.png", image, 112), (f"digit{index}_inverted.png", 255 - image, 84)):
            Image.fromarray(pixels.numpy()).resize((side, side), Image.Resampling.NEAREST).save(pictures / name)
    ckpt = run_metrics(tiny_run)["best_ckpt"]
    predict(compose_config("predict", [f"ckpt_path={ckpt}", f"inputs={pictures}", "fit=false", "top_k=2"], tmp_path))
    with open(tmp_path / "predictions.csv") as file:
        rows = {Path(row["file"]).name: row for row in csv.DictReader(file)}
    assert len(rows) == 6 and set(next(iter(rows.values()))) == {"file", "class_1", "probability_1", "class_2", "probability_2"}

    trained = load_trained(ckpt)
    with torch.no_grad():
        logits = trained.module(((images.float() / 255 - trained.info.mean) / trained.info.std).unsqueeze(1))
    expected = (logits / trained.temperature).softmax(1)  # calibrated: the temperature the run fitted on validation
    for index in range(len(images)):
        for name in (f"digit{index}.png", f"digit{index}_inverted.png"):
            assert rows[name]["class_1"] == str(int(expected[index].argmax())), name
            assert float(rows[name]["probability_1"]) == pytest.approx(float(expected[index].max()), abs=2e-4), name
    assert (tmp_path / "model_inputs.png").is_file()


def test_a_dark_digit_on_white_paper_becomes_a_centred_light_digit_on_black(tmp_path):
    paper = Image.new("L", (300, 200), 230)  # a photo-like page: light grey, the stroke far off-centre
    paper.paste(40, (220, 20, 240, 120))  # a dark bar 20 wide, 100 high, near the top-right corner
    paper.save(tmp_path / "bar.jpg")
    picture = to_model_input(read_grayscale(tmp_path / "bar.jpg"), invert="auto", fit=True, box=20)
    assert picture.shape == (28, 28)
    assert picture.max() > 0.8 and picture[0].max() < 0.05  # light ink, black border
    ink_rows = (picture > 0.5).any(1).nonzero()[:, 0]
    assert ink_rows[-1] - ink_rows[0] + 1 == 20  # the longer side fills the 20-pixel box
    mass = picture.sum()
    centre = [(picture.sum(axis) * torch.arange(28)).sum() / mass for axis in (1, 0)]
    assert all(abs(float(c) - 13.5) <= 1 for c in centre)  # centred by mass, as MNIST digits are


def test_predict_names_an_unreadable_picture(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match="notes.png is not a readable image"):
        read_grayscale(tmp_path / "notes.png")


# --- export.py ----------------------------------------------------------------------------------------------

LOAD_WITHOUT_MLPLAB = """
import sys
sys.modules["mlplab"] = None  # importing mlplab now fails: the files must stand alone
import json, onnxruntime, torch
images = torch.load(sys.argv[1])
extra = {"mlplab.json": ""}
exported = torch.export.load(sys.argv[2], extra_files=extra).module()(images)
assert json.loads(extra["mlplab.json"])["class_names"] == [str(d) for d in range(10)]  # the labels travel along
torchscript = torch.jit.load(sys.argv[3])(images)
session = onnxruntime.InferenceSession(sys.argv[4], providers=["CPUExecutionProvider"])
onnx = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])
torch.save({"export": exported.detach(), "torchscript": torchscript.detach(), "onnx": onnx}, sys.argv[5])
"""


def test_exported_files_give_the_checkpoints_logits_without_mlplab(tiny_run, data_dir, tmp_path):
    ckpt = run_metrics(tiny_run)["best_ckpt"]
    files = [export(compose_config("export", [f"ckpt_path={ckpt}", *fmt], tmp_path / "_".join(fmt or ["default"])))
             for fmt in ([], ["format=torchscript"], ["format=onnx"])]  # the default: format=export, model.pt2
    assert files[0].name == "model.pt2"

    images = (load_split(data_dir, "mnist", train=False)[0][:50].float() / 255).unsqueeze(1)  # what the files take: [N, 1, 28, 28] in [0, 1]
    torch.save(images, tmp_path / "images.pt")
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_MLPLAB, str(tmp_path / "images.pt"),
         *map(str, files), str(tmp_path / "logits.pt")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    logits = torch.load(tmp_path / "logits.pt")
    trained = load_trained(ckpt)
    with torch.no_grad():
        expected = trained.module((images - trained.info.mean) / trained.info.std) / trained.temperature  # built in
    for fmt in ("export", "torchscript", "onnx"):
        assert torch.allclose(logits[fmt], expected, atol=1e-4, rtol=1e-4), fmt


def test_export_refuses_an_unknown_format(tiny_run, tmp_path, caplog, capsys):
    refused = refusal("export.py", [f"ckpt_path={run_metrics(tiny_run)['best_ckpt']}", "format=keras"], tmp_path, caplog, capsys)
    assert refused.startswith("format='keras' must be one of export, onnx, torchscript")
