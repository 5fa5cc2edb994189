"""Predictions for a user's own pictures: PNG or JPEG, any size, dark ink on light paper or the reverse.

The network only knows its dataset's convention: 28x28 grayscale, light ink on a dark background,
normalized with the dataset's mean and std. ``to_model_input`` converts a picture to it the way MNIST
itself was made: grayscale (the alpha channel as ink when the background is transparent) -> invert when
the border is light -> stretch the contrast -> crop to the ink -> scale it to fit a 20x20 box -> centre it
by mass in 28x28. ``fit=false`` skips the cropping for pictures already framed like the dataset.
"""

from __future__ import annotations

import csv
import glob
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError

from mlplab.trained import load_trained_from_config
from mlplab.errors import ConfigError, DataError, UserError
from mlplab.figures import image_grid_figure

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Side of the box the ink is scaled into: MNIST digits fill 20x20 of the 28x28 frame; Fashion-MNIST and
# KMNIST fill the frame.
FIT_BOX = {"mnist": 20}
GRID_LIMIT = 64  # pictures shown in model_inputs.png


def find_images(inputs: str | Sequence[str]) -> list[Path]:
    """Image files from a file, a folder (its PNG/JPEG files) or a glob pattern, or a list of those."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    found: list[Path] = []
    for item in map(str, items):
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(item) and glob.glob(item):
            found += sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
        else:
            raise UserError(f"inputs: {item} is not an image file, a folder or a pattern matching files")
    if not found:
        raise UserError(f"inputs={inputs} holds no {'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} files")
    return found


def read_grayscale(path: Path) -> torch.Tensor:
    """``[H, W]`` float in [0, 1]. On a transparent background the opacity is the ink (light on dark)."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"{path} is not a readable image ({' '.join(str(err).split())})") from err
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            image = alpha
    pixels = torch.frombuffer(bytearray(image.convert("L").tobytes()), dtype=torch.uint8)
    return pixels.reshape(image.height, image.width).float() / 255


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area averaging when shrinking (exact for integer factors), antialiased bilinear otherwise."""
    shrinking = size[0] <= image.shape[0] and size[1] <= image.shape[1]
    batch = image[None, None]
    if shrinking:
        return F.interpolate(batch, size=size, mode="area")[0, 0]
    return F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0]


def border(image: torch.Tensor) -> torch.Tensor:
    return torch.cat([image[0], image[-1], image[:, 0], image[:, -1]])


def to_model_input(gray: torch.Tensor, invert: bool | str = "auto", fit: bool = True, box: int = 20,
                   size: int = 28) -> torch.Tensor:
    """A grayscale picture -> ``[size, size]`` in [0, 1], light ink on a dark background (before normalization)."""
    if invert == "auto":
        invert = bool(border(gray).median() > 0.5)  # a light border: dark ink on light paper
    if invert:
        gray = 1 - gray
    if not fit:
        return resize(gray, (size, size))
    background = border(gray).median()
    ink = ((gray - background) / (gray.max() - background).clamp(min=1e-6)).clamp(0, 1)
    rows, cols = (ink > 0.2).any(1).nonzero()[:, 0], (ink > 0.2).any(0).nonzero()[:, 0]
    canvas = torch.zeros(size, size)
    if len(rows) == 0:
        return canvas  # a blank picture
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = box / max(crop.shape)
    crop = resize(crop, (max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))))
    height, width = crop.shape
    mass = crop.sum().clamp(min=1e-6)
    centre_y = (crop.sum(1) * torch.arange(height)).sum() / mass
    centre_x = (crop.sum(0) * torch.arange(width)).sum() / mass
    top = min(max(round((size - 1) / 2 - float(centre_y)), 0), size - height)
    left = min(max(round((size - 1) / 2 - float(centre_x)), 0), size - width)
    canvas[top : top + height, left : left + width] = crop
    return canvas


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    """Top-k classes for each picture in ``cfg.inputs``: printed, and written to ``predictions.csv`` next to
    ``model_inputs.png`` (the first pictures as the network saw them) in ``cfg.output_dir``."""
    if cfg.invert not in ("auto", True, False):
        raise ConfigError(f"invert={cfg.invert!r} is not allowed; choose auto, true or false")
    trained = load_trained_from_config(cfg)
    if OmegaConf.is_missing(cfg, "inputs"):
        raise UserError("inputs=<picture, folder or pattern> is required, e.g. inputs=my_digit.png or inputs=pictures/")
    info, size = trained.info, trained.info.image_shape[-1]
    names = trained.class_names
    if not 1 <= cfg.top_k <= len(names):
        raise ConfigError(f"top_k={cfg.top_k} must be between 1 and {len(names)} (the number of classes)")
    paths = find_images(cfg.inputs)
    box = cfg.get("box") or FIT_BOX.get(trained.dataset, size)
    pictures = torch.stack([to_model_input(read_grayscale(p), cfg.invert, cfg.fit, box, size) for p in paths])
    with torch.no_grad():
        probabilities = trained.module(((pictures - info.mean) / info.std).unsqueeze(1)).softmax(1)
    top = probabilities.topk(cfg.top_k, dim=1)
    rows = [
        {"file": str(path), "top": [(names[i], round(p, 4)) for i, p in zip(indices, probs)]}
        for path, indices, probs in zip(paths, top.indices.tolist(), top.values.tolist())
    ]

    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "predictions.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["file"] + [f"{kind}_{k}" for k in range(1, cfg.top_k + 1) for kind in ("class", "probability")])
        for row in rows:
            writer.writerow([row["file"]] + [value for pair in row["top"] for value in pair])
    shown = rows[:GRID_LIMIT]
    titles = [f"{Path(row['file']).name[:14]}: {row['top'][0][0]}" for row in shown]
    title = "as the network saw them" + (f" (first {GRID_LIMIT} of {len(rows)})" if len(rows) > GRID_LIMIT else "")
    image_grid_figure(pictures[:GRID_LIMIT], titles, title=title).savefig(output_dir / "model_inputs.png")
    for row in rows:
        log.info("%s  %s", row["file"], "  ".join(f"{name} ({p:.3f})" for name, p in row["top"]))
    log.info("run dir: %s", output_dir)
    return rows
