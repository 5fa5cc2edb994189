"""`python serve.py ckpt_path=<checkpoint or run dir>`: a page to draw or upload a digit, its JSON endpoint, saving
pictures under their right label for `finetune.py data=image_folder`, bad requests answered in one line while the
server goes on, and the page itself driven in a headless Chromium (skipped where none is installed)."""

from __future__ import annotations

import base64
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import uvicorn
from PIL import Image

from conftest import ROOT, compose_config, run_script
from mlplab.checkpoint_reader import load_trained
from mlplab.data.datamodule import load_split
from mlplab.data.image_folder import ImageFolderDataModule
from mlplab.data.pictures import prepare_picture
from mlplab.finetune import finetune
from mlplab.pipeline import train
from mlplab.prediction import class_probabilities
from mlplab.run_dirs import run_checkpoint
from mlplab.serving import PictureClassifier, SampleFolder, bound_socket, build_app, class_folders, finetune_command

MNIST_NAMES = tuple(str(d) for d in range(10))


@pytest.fixture(scope="module")
def tiny_run(data_dir, tmp_path_factory) -> Path:
    """A finished `python train.py debug=fast` run dir on the synthetic digits."""
    run_dir = tmp_path_factory.mktemp("serve_run")
    train(compose_config("train", ["debug=fast", f"data.data_dir={data_dir}", "trainer.accelerator=cpu"], run_dir))
    return run_dir


@pytest.fixture(scope="module")
def digits(data_dir) -> list[tuple[bytes, int]]:
    """Two test digits of each class as a user's pictures would come (dark ink on white, 140x140 PNG), and labels."""
    images, labels = load_split(data_dir, "mnist", train=False)[:2]
    picked = [int(i) for label in range(10) for i in (labels == label).nonzero()[:2, 0]]
    return [(png(Image.fromarray(255 - images[i].numpy()).resize((140, 140), Image.Resampling.NEAREST)), int(labels[i]))
            for i in picked]


@pytest.fixture(scope="module")
def digit_pngs(digits) -> list[bytes]:
    return [picture for picture, _ in digits]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Client:
    """The app served by uvicorn on a free port of 127.0.0.1, in a thread; requests go over real HTTP."""

    def __init__(self, app) -> None:
        sock = bound_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def request(self, path: str, body: bytes | None = None, content_type: str = "image/png") -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def post(self, path: str, body: bytes, content_type: str = "image/png") -> dict:
        status, result = self.request(path, body, content_type)
        assert status == 200, result
        return result

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join()


@pytest.fixture
def serve_app(tiny_run, tmp_path):
    """``serve_app(reject_below=..., max_pixels=...)``: a Client of the page's app on the tiny run's best checkpoint."""
    clients = []
    trained = load_trained(json.loads((tiny_run / "metrics.json").read_text())["best_ckpt"])

    def start(save_dir: Path = tmp_path / "my_digits", reject_below: float | None = None, **limits) -> Client:
        classifier = PictureClassifier(trained, top_k=3, reject_below=reject_below, **limits)
        clients.append(Client(build_app(classifier, SampleFolder(save_dir, class_folders(trained.class_names)),
                                        max_upload_bytes=200_000)))
        return clients[-1]

    yield start
    for client in clients:
        client.stop()


def as_json(picture: bytes) -> bytes:
    return json.dumps({"image": "data:image/png;base64," + base64.b64encode(picture).decode()}).encode()


def test_a_picture_gets_its_top_classes_and_the_28x28_picture_the_network_saw(serve_app, tiny_run, digit_pngs, tmp_path):
    client = serve_app()
    result = client.post("/predict", digit_pngs[0])
    seen = Image.open(io.BytesIO(base64.b64decode(result["seen"])))
    assert seen.size == (28, 28) and seen.mode == "L"

    # the same numbers as predict.py's path: the file prepared by mlplab.data.pictures, then class_probabilities
    (tmp_path / "digit.png").write_bytes(digit_pngs[0])
    trained = load_trained(json.loads((tiny_run / "metrics.json").read_text())["best_ckpt"])
    expected = class_probabilities(trained, prepare_picture(tmp_path / "digit.png")[None])[0].topk(3)
    assert [name for name, _ in result["top"]] == [str(i) for i in expected.indices.tolist()]
    assert [p for _, p in result["top"]] == pytest.approx(expected.values.tolist(), abs=1e-4)
    assert result["not_sure"] is False  # reject_below=None: always sure
    assert client.post("/predict", as_json(digit_pngs[0]), "application/json") == result  # programs may send base64


def test_not_sure_when_the_top_probability_is_below_reject_below(serve_app, digit_pngs):
    top = serve_app().post("/predict", digit_pngs[1])["top"][0][1]
    assert serve_app(reject_below=top + 0.01).post("/predict", digit_pngs[1])["not_sure"] is True
    assert serve_app(reject_below=top - 0.01).post("/predict", digit_pngs[1])["not_sure"] is False


BAD_REQUESTS = [
    (b"", "image/png", 400, "no picture: the request is empty"),
    (b"hello, this is text", "image/png", 400, "the picture is not a readable image"),
    (png(Image.new("L", (200, 200), 255)), "image/png", 400, "the picture is empty: no ink found"),
    (png(Image.new("L", (300, 300), 255)), "image/png", 400, "300x300 pixels is more than the 50000 allowed"),
    (b"\0" * 300_000, "image/png", 413, "at most 200000 are accepted (max_upload_bytes)"),
    (b"{not json", "application/json", 400, "the body is not valid JSON"),
    (b'{"image": 3}', "application/json", 400, "JSON requests need {\"image\""),
    (b'{"image": "%%%"}', "application/json", 400, "\"image\" is not base64"),
]


def test_bad_requests_get_one_line_and_the_server_goes_on(serve_app, digit_pngs):
    client = serve_app(max_pixels=50_000)
    for body, content_type, status, message in BAD_REQUESTS:
        answer = client.request("/predict", body, content_type)
        assert answer[0] == status and message in answer[1]["detail"], (message, answer)
        assert "\n" not in answer[1]["detail"] and "Traceback" not in answer[1]["detail"]
    assert client.post("/predict", digit_pngs[0])["top"]


def test_a_saved_picture_lands_where_image_folder_and_finetune_read_it(serve_app, tiny_run, digits, digit_pngs, tmp_path):
    save_dir = tmp_path / "my_digits"
    client = serve_app(save_dir)
    assert client.request("/samples")[1]["counts"] == dict.fromkeys(MNIST_NAMES, 0)
    for picture, label in digits:  # two of each digit: what the README asks for
        reply = client.post(f"/samples?label={label}", picture)
    saved = Path(reply["saved"])
    assert saved.parent == save_dir / "9" and saved.suffix == ".png"
    assert reply["counts"] == dict.fromkeys(MNIST_NAMES, 2)

    refused = client.request("/samples?label=eleven", digit_pngs[0])
    assert refused[0] == 422 and "label='eleven' is not a class of this model; one of 0, 1," in refused[1]["detail"]
    assert client.request("/samples", digit_pngs[0])[0] == 422  # no label

    # the saved file is what the page showed: the same 28x28 picture, through image_folder's preparation
    seen = Image.open(io.BytesIO(base64.b64decode(client.post("/predict", digit_pngs[-1])["seen"])))
    assert torch.equal((prepare_picture(saved) * 255).round().byte(), torch.from_numpy(np.array(seen)))
    data = ImageFolderDataModule(root=str(save_dir), cache_dir=str(tmp_path / "cache"), val_size=2).data
    assert data.class_names == MNIST_NAMES and len(data.labels) == 20

    # the fine-tuning command the page shows, on these 20 pictures (2 epochs here): its model is its last epoch
    command = shlex.split(finetune_command(tiny_run / "checkpoints" / "last.ckpt", save_dir))
    assert command[:2] == ["python", "finetune.py"]
    run_dir = tmp_path / "finetuned"
    finetune(compose_config("finetune", ["debug=fast", *command[2:], f"data.cache_dir={tmp_path / 'cache'}",
                                         "trainer.max_epochs=2"], run_dir))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run_checkpoint(run_dir) == Path(metrics["best_ckpt"]) == run_dir / "checkpoints" / "last.ckpt"


def test_class_folders_sort_in_label_order_and_are_file_names():
    assert list(class_folders(MNIST_NAMES).values()) == list(MNIST_NAMES)
    fashion = class_folders(("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"))
    assert fashion["T-shirt/top"] == "0_T-shirt_top" and fashion["Ankle boot"] == "9_Ankle_boot"
    assert list(fashion.values()) == sorted(fashion.values())


# --- serve.py as a user starts it ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    """`python serve.py ckpt_path=<run dir>` on a free port of 127.0.0.1; yields (url, save_dir). Afterwards, Ctrl-C
    must stop it cleanly: exit status 0 and a finished run.json (a server ends that way)."""
    save_dir, port = tmp_path_factory.mktemp("served") / "my_digits", free_port()
    run_dir = save_dir.parent / "run"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "serve.py"), f"ckpt_path={tiny_run}", f"port={port}", f"save_dir={save_dir}",
         f"hydra.run.dir={run_dir}"], cwd=ROOT, env=os.environ | {"PYTHONWARNINGS": "ignore"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:  # the log names the address once the server answers
            if f"on http://127.0.0.1:{port}" in line:
                break
        else:
            pytest.fail(f"serve.py did not start (exit status {process.wait()})")
        yield f"http://127.0.0.1:{port}", save_dir
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_serve_takes_a_run_dir_and_serves_its_best_checkpoint(server, tiny_run):
    url, save_dir = server
    info = get(f"{url}/info")
    assert Path(info["checkpoint"]).name == Path(json.loads((tiny_run / "metrics.json").read_text())["best_ckpt"]).name
    assert info["classes"] == list(MNIST_NAMES) and info["save_dir"] == str(save_dir)
    assert f"data.root={save_dir}" in info["finetune_command"]
    with urllib.request.urlopen(url, timeout=5) as page:
        assert b"<canvas" in page.read()


def test_a_busy_port_and_bad_values_get_one_line(server, tiny_run, tmp_path):
    port = server[0].rsplit(":", 1)[1]
    busy = run_script("serve.py", f"ckpt_path={tiny_run}", f"port={port}", f"hydra.run.dir={tmp_path / 'busy'}", data_dir=tmp_path)
    assert busy.returncode == 1
    assert f"error: port={port} is already in use on 127.0.0.1 (another serve.py?); choose another" in busy.stdout + busy.stderr

    bad = run_script("serve.py", f"ckpt_path={tmp_path}", "port=70000", "reject_below=2", data_dir=tmp_path)
    output = bad.stdout + bad.stderr
    assert bad.returncode == 1 and "Traceback" not in output
    assert "port=70000 must be a port number in [0, 65535]" in output
    assert "reject_below=2 must be a number in [0, 1)" in output
    assert "must be an existing checkpoint file or a run dir holding one" in output


# --- the page, in a real browser -----------------------------------------------------------------------------

CHROMIUM = os.environ.get("MLPLAB_CHROMIUM") or next(
    (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium installed (apt-get install chromium, or MLPLAB_CHROMIUM=<path to chrome>)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    with playwright.sync_playwright() as driver:
        try:
            browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        except playwright.Error as err:  # installed, but cannot start here (libraries missing, no sandbox rights)
            pytest.skip(f"{CHROMIUM} does not start headless: {str(err).splitlines()[0]}")
        yield browser
        browser.close()


def draw(page, strokes: list[list[tuple[float, float]]]) -> None:
    """Mouse strokes on the canvas, in fractions of its size (docs/serve_screenshot.py draws the README's with it)."""
    box = page.locator("#canvas").bounding_box()
    for stroke in strokes:
        page.mouse.move(box["x"] + stroke[0][0] * box["width"], box["y"] + stroke[0][1] * box["height"])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=5)
        page.mouse.up()


def test_the_page_draws_predicts_and_saves_in_a_browser(server, browser):
    url, save_dir = server
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function("document.querySelectorAll('#label option').length === 10")
    draw(page, [[(0.5, 0.15), (0.5, 0.85)]])  # a "1"
    page.wait_for_selector("#top .bar")
    assert page.locator("#top .bar").count() == 3
    assert page.locator("#seen").get_attribute("src").startswith("data:image/png;base64,")
    shown = page.locator("#top .bar .name").first.text_content()
    assert page.locator("#label").input_value() == shown  # the label box starts at the network's answer

    page.select_option("#label", "1")
    page.click("#save")
    page.wait_for_function("document.getElementById('message').textContent.startsWith('Saved as 1')")
    saved = list((save_dir / "1").glob("*.png"))
    assert len(saved) == 1 and "Saved 1 (1: 1)" in page.locator("#counts").text_content()
    picture = prepare_picture(saved[0])  # image_folder's reading of it: a vertical stroke, light on dark, centred
    assert picture.shape == (28, 28) and picture[:, 13:15].sum() > picture[:, :5].sum() + picture[:, -5:].sum()

    page.click("#clear")
    page.click("#save")  # nothing drawn: a message, no file
    assert "Draw or upload a picture first" in page.locator("#message").text_content()
    page.set_input_files("#upload", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"}])
    page.wait_for_function("document.getElementById('message').textContent.startsWith('the picture')")
    assert page.locator("#message").text_content().startswith("the picture is not a readable image")
    assert page.locator("#top .bar").count() == 0
    page.close()
