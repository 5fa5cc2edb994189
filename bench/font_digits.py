"""Digits drawn differently from MNIST: rendered from the machine's fonts, thickened, slanted, on noisy paper.

    python bench/font_digits.py /tmp/font_digits              # train/<digit>/ 150 each, test/<digit>/ 100 each
    python bench/font_digits.py out --train 50 --test 20 --seed 1

The folder is in ``data=image_folder``'s layout (train/ and test/, one subfolder per digit), dark ink on light
paper as a phone photo or a scan would be: the README's fine-tuning walk-through trains on MNIST, predicts these,
fine-tunes on a few of them per class and predicts again. Fonts: every DejaVu TrueType font found (``fc-list``),
else PIL's built-in one.
"""

from __future__ import annotations

import argparse
import random
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont


def font_files() -> list[str]:
    try:
        listed = subprocess.run(["fc-list", ":", "file"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        listed = ""
    files = sorted({line.split(":")[0].strip() for line in listed.splitlines() if "DejaVu" in line and ".ttf" in line})
    return [f for f in files if "ExtraLight" not in f] or [""]  # "": PIL's default font


def draw_digit(digit: int, font_file: str, rng: random.Random, noise: np.random.Generator) -> Image.Image:
    """One 64x64 picture: the glyph at a random size, thickened, slanted and rotated, on uneven noisy paper."""
    size = rng.randint(70, 110)
    font = ImageFont.truetype(font_file, size) if font_file else ImageFont.load_default(size)
    canvas = Image.new("L", (160, 160), 0)
    ImageDraw.Draw(canvas).text((80, 80), str(digit), fill=255, font=font, anchor="mm")
    thickness = rng.choice([1, 3, 5, 7])
    if thickness > 1:
        canvas = canvas.filter(ImageFilter.MaxFilter(thickness))
    slant = rng.uniform(-0.15, 0.45)  # mostly to the right, as handwriting leans
    canvas = canvas.transform(canvas.size, Image.Transform.AFFINE, (1, slant, -slant * 80, 0, 1, 0), Image.Resampling.BILINEAR)
    canvas = canvas.rotate(rng.uniform(-12, 12), Image.Resampling.BILINEAR)
    canvas = canvas.resize((64, 64), Image.Resampling.LANCZOS)
    ink = np.asarray(canvas, dtype=np.float32) / 255
    paper = rng.uniform(170, 235) + noise.normal(0, rng.uniform(4, 18), (64, 64))
    paper += np.linspace(-rng.uniform(0, 25), rng.uniform(0, 25), 64)[None, :]  # uneven lighting
    pen = rng.uniform(10, 80)
    pixels = paper * (1 - ink) + pen * ink
    specks = noise.random((64, 64)) < 0.004
    pixels[specks] = noise.uniform(60, 140, specks.sum())
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=150, help="pictures per digit in train/")
    parser.add_argument("--test", type=int, default=100, help="pictures per digit in test/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng, noise = random.Random(args.seed), np.random.default_rng(args.seed)
    fonts = font_files()
    for split, count in (("train", args.train), ("test", args.test)):
        for digit in range(10):
            folder = args.out / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw_digit(digit, rng.choice(fonts), rng, noise).save(folder / f"{i:04d}.png")
    print(f"{args.out}: {10 * args.train} training and {10 * args.test} test pictures from {len(fonts)} fonts")


if __name__ == "__main__":
    main()
