"""``serve.py``: a page on 127.0.0.1 to draw or upload a digit and see what the network thinks, and the same as JSON.

    GET  /                 the page (mlplab/static/serve.html): draw with mouse or touch, or upload a picture
    POST /predict          a picture -> {"top": [[class, p], ...], "not_sure": bool, "seen": base64 PNG, 28x28}
    POST /samples?label=7  the picture saved as <save_dir>/<folder of 7>/<time>.png -> {"saved": path, "counts": ...}
    GET  /samples          how many pictures of each class save_dir holds
    GET  /info             the checkpoint, its classes, top_k, reject_below, the fine-tuning command

A picture is the request's body (its bytes, any format PIL reads), or JSON ``{"image": "<base64 or data URL>"}``
(``"label"`` too, for /samples). It is prepared by ``mlplab.data.pictures`` exactly as predict.py and
``data=image_folder`` prepare a file, and classified by ``mlplab.prediction.class_probabilities``. Saved pictures
are the decoded grayscale picture as PNG, in a layout ``data=image_folder data.root=<save_dir>`` reads directly.

A bad request (empty, too large, not an image, a blank drawing, an unknown label) is answered with HTTP 4xx and a
one-line ``detail``; the server goes on.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import io
import json
import logging
import re
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from omegaconf import DictConfig
from PIL import Image
from starlette.concurrency import run_in_threadpool

from mlplab.checkpoint_reader import TrainedClassifier, load_trained_from_config
from mlplab.data.pictures import IMAGE_SUFFIXES, read_grayscale, to_model_input
from mlplab.errors import ConfigError, UserError
from mlplab.prediction import class_probabilities, refuse_non_picture_model, unsure
from mlplab.run_dirs import run_checkpoint

log = logging.getLogger(__name__)

PAGE = files("mlplab") / "static" / "serve.html"


class BadRequest(UserError):
    """A request the server refuses with ``status`` and a one-line message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class PictureClassifier:
    """A checkpoint and the settings that turn a picture's bytes into its top-k classes."""

    trained: TrainedClassifier
    top_k: int = 3
    reject_below: float | None = None
    invert: bool | str = "auto"
    fit: bool = True
    box: int = 20
    max_pixels: int = 25_000_000

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.trained.class_names

    def prepare(self, data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
        """(the decoded grayscale picture [H, W], the network's input [28, 28]), both in [0, 1]."""
        if not data:
            raise BadRequest("no picture: the request is empty (send the image's bytes, or JSON {\"image\": \"<base64>\"})")
        gray = read_grayscale(io.BytesIO(data), name="the picture", max_pixels=self.max_pixels)
        picture = to_model_input(gray, self.invert, self.fit, self.box, self.trained.info.image_shape[-1])
        if not picture.any():
            raise BadRequest("the picture is empty: no ink found (draw a digit, or upload a picture of one)")
        return gray, picture

    def classify(self, data: bytes) -> dict[str, Any]:
        """``{"top": [[class, probability], ...], "not_sure": bool, "seen": base64 PNG of the 28x28 input}``."""
        picture = self.prepare(data)[1]
        probabilities = class_probabilities(self.trained, picture[None])
        top = probabilities[0].topk(self.top_k)
        return {
            "top": [[self.class_names[i], round(p, 4)] for i, p in zip(top.indices.tolist(), top.values.tolist(), strict=True)],
            "not_sure": bool(unsure(probabilities, self.reject_below)[0]),
            "seen": base64.b64encode(png_bytes(picture)).decode(),
        }


def png_bytes(gray: torch.Tensor) -> bytes:
    """A [H, W] picture in [0, 1] as an 8-bit grayscale PNG."""
    buffer = io.BytesIO()
    Image.fromarray((gray * 255).round().to(torch.uint8).numpy(), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def class_folders(class_names: tuple[str, ...]) -> dict[str, str]:
    """``class name -> folder name`` under save_dir. ImageFolder numbers classes by sorted folder name, so the
    folders must sort in the network's label order: the names themselves when they do and are safe file names
    (MNIST's 0-9), else ``<label>_<name>`` (Fashion-MNIST's ``T-shirt/top`` -> ``0_T-shirt_top``)."""
    safe = [re.sub(r"[^\w.-]+", "_", name).strip("._") for name in class_names]
    if safe == list(class_names) and safe == sorted(safe) and len(set(safe)) == len(safe):
        return dict(zip(class_names, safe, strict=True))
    width = len(str(len(class_names) - 1))
    return {name: f"{i:0{width}d}_{folder}".rstrip("_") for i, (name, folder) in enumerate(zip(class_names, safe, strict=True))}


@dataclass(frozen=True)
class SampleFolder:
    """``<root>/<class folder>/<time>.png``: pictures a user labelled, for ``data=image_folder data.root=<root>``."""

    root: Path
    folders: dict[str, str]  # class name -> folder name (class_folders)

    def save(self, gray: torch.Tensor, label: str) -> Path:
        if label not in self.folders:
            raise BadRequest(f"label={label!r} is not a class of this model; one of {', '.join(self.folders)}", 422)
        folder = self.root / self.folders[label]
        folder.mkdir(parents=True, exist_ok=True)
        data, stamp = png_bytes(gray), datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        for attempt in range(100):  # two saves in the same microsecond: the second one gets a suffix
            path = folder / f"{stamp}{f'-{attempt}' if attempt else ''}.png"
            try:
                with open(path, "xb") as file:
                    file.write(data)
                return path
            except FileExistsError:
                continue
        raise BadRequest(f"{folder} already holds pictures named {stamp}-*.png; try again", 409)

    def counts(self) -> dict[str, int]:
        """Pictures per class, as data=image_folder would find them."""
        return {name: sum(1 for p in (self.root / folder).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
                if (self.root / folder).is_dir() else 0 for name, folder in self.folders.items()}


def picture_and_label(body: bytes, content_type: str, label: str | None) -> tuple[bytes, str | None]:
    """The picture's bytes and the label from a request: the body itself, or JSON {"image": base64, "label": ...}."""
    if not content_type.startswith("application/json"):
        return body, label
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, ValueError) as err:
        raise BadRequest(f"the body is not valid JSON ({err}); send {{\"image\": \"<base64 PNG>\"}}") from err
    if not isinstance(message, dict) or not isinstance(message.get("image"), str):
        raise BadRequest("JSON requests need {\"image\": \"<base64 or data URL of a PNG/JPEG>\"}")
    encoded = message["image"].split(",", 1)[1] if message["image"].startswith("data:") else message["image"]
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadRequest(f"\"image\" is not base64 ({err})") from err
    given = message.get("label", label)
    return data, None if given is None else str(given)


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) as soon as it is known to pass ``limit`` bytes: never read whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"the request is {int(declared)} bytes; at most {limit} are accepted (max_upload_bytes)", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the request is over {limit} bytes; at most {limit} are accepted (max_upload_bytes)", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(classifier: PictureClassifier, samples: SampleFolder, max_upload_bytes: int = 10_000_000,
              about: dict[str, Any] | None = None, on_start: Callable[[], None] | None = None) -> FastAPI:
    """The page and the JSON endpoints around ``classifier``; ``about``: more for GET /info (checkpoint, commands);
    ``on_start``: called once the server is about to answer (serve.py logs the address then)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if on_start is not None:
            on_start()
        yield

    app = FastAPI(title="mlplab", summary="What does the network think this picture is?", lifespan=lifespan)

    async def picture_from(request: Request, label: str | None = None) -> tuple[bytes, str | None]:
        body = await read_body(request, max_upload_bytes)
        return picture_and_label(body, request.headers.get("content-type", ""), label)

    @app.exception_handler(UserError)
    async def one_line(request: Request, err: UserError) -> JSONResponse:
        """FastAPI's error shape, {"detail": "..."}, one line."""
        return JSONResponse({"detail": " ".join(str(err).split())}, status_code=getattr(err, "status", 400))

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/info")
    def info() -> dict[str, Any]:
        return {"classes": list(classifier.class_names), "top_k": classifier.top_k,
                "reject_below": classifier.reject_below, "save_dir": str(samples.root)} | (about or {})

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        data = (await picture_from(request))[0]
        return await run_in_threadpool(classifier.classify, data)  # decoding a large photo must not stall the others

    @app.get("/samples")
    def counts() -> dict[str, Any]:
        return {"save_dir": str(samples.root), "counts": samples.counts()}

    @app.post("/samples")
    async def save(request: Request, label: str | None = None) -> dict[str, Any]:
        data, label = await picture_from(request, label)
        if label is None:
            raise BadRequest(f"label is required (?label=<class>, or \"label\" in the JSON): one of {', '.join(classifier.class_names)}", 422)
        gray = (await run_in_threadpool(classifier.prepare, data))[0]
        path = samples.save(gray, label)
        log.info("saved %s as %s", path, label)
        return {"saved": str(path), "label": label, "save_dir": str(samples.root), "counts": samples.counts()}

    return app


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one line saying why not (the port taken, the host unknown)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as err:
        raise ConfigError(f"host={host} is not an address of this machine ({err.strerror})") from err
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after Ctrl-C (TIME_WAIT)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise UserError(f"port={port} is already in use on {host} (another serve.py?); choose another, "
                            f"e.g. port={port + 1}, or port=0 for any free one") from err
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror})") from err
    sock.listen(128)
    return sock


def serve(cfg: DictConfig) -> None:
    """Load ``cfg.ckpt_path`` (a checkpoint or a run dir), then serve the page and the JSON endpoints until Ctrl-C."""
    if not cfg.get("ckpt_path"):
        raise UserError("ckpt_path=<checkpoint or run dir> is required, e.g. ckpt_path=logs/train/runs/<run>")
    ckpt = Path(cfg.ckpt_path)
    if ckpt.is_dir():
        ckpt = run_checkpoint(ckpt) or ckpt  # config validation has checked that the run dir holds one
    trained = load_trained_from_config(cfg, ckpt)
    refuse_non_picture_model(trained, ckpt, cfg.top_k)
    classifier = PictureClassifier(trained, cfg.top_k, cfg.reject_below, cfg.invert, cfg.fit, cfg.box or trained.info.box,
                                   cfg.max_pixels)
    samples = SampleFolder(Path(cfg.save_dir).expanduser(), class_folders(trained.class_names))  # as typed: relative stays so
    finetune = finetune_command(ckpt, samples.root)
    sock = bound_socket(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]

    import uvicorn  # only once everything above is known to work: a bad value never waits for it

    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def started() -> None:
        log.info("serving %s (%s, classes %s) on %s ; Ctrl-C stops it", ckpt, trained.dataset,
                 " ".join(trained.class_names), url)
        log.info("JSON: curl --data-binary @digit.png %s/predict", url)
        log.info("saved pictures go to %s/<class>/ ; fine-tune on them: %s", samples.root, finetune)
        if cfg.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("host=%s: anyone who can reach this machine can use the page and write into %s", cfg.host, samples.root)

    about = {"checkpoint": str(ckpt), "dataset": trained.dataset, "finetune_command": finetune}
    server = uvicorn.Server(uvicorn.Config(build_app(classifier, samples, cfg.max_upload_bytes, about, started),
                                           log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn stops gracefully on Ctrl-C, then raises it again: for a server, the normal end
        pass
    log.info("stopped")


def finetune_command(ckpt: Path, save_dir: Path) -> str:
    """Fine-tuning on the saved pictures, for a few dozen (docs/benchmarks.md, "Fine-tuning on saved digits"): only
    the head learns (a few pictures would pull the hidden layers away from what MNIST taught them), and the last
    epoch is the model, since two validation pictures cannot choose an epoch (without model_checkpoint, the
    run's best_ckpt is last.ckpt, which serve.py then takes from the run dir)."""
    return (f"python finetune.py pretrained={ckpt} data=image_folder data.root={save_dir} finetune.freeze=backbone "
            "data.val_size=2 data.batch_size=8 trainer.max_epochs=30 callbacks.early_stopping=null "
            "callbacks.model_checkpoint=null")
