"""A picture as the network sees it: grayscale, light ink on a dark background, cropped, fitted, centred, 28x28.

The networks only know their dataset's convention. ``prepare_picture`` converts any PNG or JPEG to it the way
MNIST itself was made: grayscale (the alpha channel as ink when the background is transparent) -> invert when
the border is light -> stretch the contrast -> crop to the ink -> scale it to fit a box (20x20 for MNIST) ->
centre it by mass in 28x28. ``fit=false`` skips the cropping for pictures already framed like the dataset.
``predict.py`` and ``data=image_folder`` both call it, so a folder trained on and a picture predicted are
prepared identically.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from mlplab.errors import DataError, UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PAPER_LEVEL = 0.3  # ink below this share of the darkest stroke's contrast is paper (MNIST's background is 0)


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


def read_grayscale(path: Path | BinaryIO, name: str | None = None, max_pixels: int | None = None) -> torch.Tensor:
    """``[H, W]`` float in [0, 1]. On a transparent background the opacity is the ink (light on dark).
    ``path``: a file, or the bytes of an upload as a stream, called ``name`` in messages. ``max_pixels``: refuse
    bigger pictures from their header, before decoding them (a server's limit, far below PIL's own)."""
    name = name or str(path)
    try:
        with Image.open(path) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise DataError(f"{name} is refused: {image.width}x{image.height} pixels is more than the "
                                f"{max_pixels} allowed; shrink the picture first")
            image.load()
    except Image.DecompressionBombError as err:  # PIL's guard against pictures that decode to gigabytes: kept
        raise DataError(f"{name} is refused: {' '.join(str(err).split())} (PIL's limit, Image.MAX_IMAGE_PIXELS); "
                        "shrink the picture first") from err
    except (OSError, UnidentifiedImageError) as err:
        reason = str(err) if isinstance(path, str | Path) else str(err).replace(repr(path), "")  # no <BytesIO at 0x..>
        raise DataError(f"{name} is not a readable image ({' '.join(reason.split())})") from err
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


def opened(mask: torch.Tensor) -> torch.Tensor:
    """A binary image without specks narrower than 3 pixels (erosion, then dilation), for locating the strokes;
    a big picture is shrunk first, so "3 pixels" stays small against its strokes."""
    shrink = max(1, min(mask.shape) // 64)
    x = F.max_pool2d(mask[None, None].float(), shrink) if shrink > 1 else mask[None, None].float()
    x = -F.max_pool2d(-x, 3, stride=1, padding=1)
    x = F.max_pool2d(x, 3, stride=1, padding=1)
    if shrink > 1:
        x = F.interpolate(x, size=mask.shape, mode="nearest")
    return x[0, 0] > 0.5 if x.any() else mask  # a drawing of thin lines only: keep it as it is


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
    ink = torch.where(ink > PAPER_LEVEL, ink, 0)  # grain, uneven light and faint smudges are paper, not ink
    strokes = opened(ink > 0.2)
    rows, cols = strokes.any(1).nonzero()[:, 0], strokes.any(0).nonzero()[:, 0]
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


def prepare_picture(path: Path, invert: bool | str = "auto", fit: bool = True, box: int = 20, size: int = 28) -> torch.Tensor:
    """An image file -> ``[size, size]`` in [0, 1], light ink on a dark background (before normalization)."""
    return to_model_input(read_grayscale(path), invert, fit, box, size)
