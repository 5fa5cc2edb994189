"""Pictures for people: a confusion matrix with class names, grids of labelled images, a reliability diagram.

Drawn with matplotlib's object API (no pyplot state, no GUI backend), so a callback can draw them in the
middle of a run. TensorBoard (``add_figure``), ``eval.py``, ``predict.py`` and ``docs/make_figures.py``
share them, so a figure looks the same wherever a user meets it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Protocol

import matplotlib
import torch
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

CAPTION_WIDTH = 16  # characters per caption line above a grid tile


def to_display(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Undo the dataset normalization: model inputs -> pixel values in [0, 1] (on the CPU, as float32)."""
    return (images.detach().float().cpu() * std + mean).clamp(0, 1)


def confusion_matrix_figure(matrix: torch.Tensor, class_names: Sequence[str], title: str = "") -> Figure:
    """Counts per (true, predicted) pair; colour on a log scale so that a handful of mistakes still shows
    next to a diagonal of thousands. Empty cells stay white."""
    counts = matrix.detach().cpu().long()
    n = len(class_names)
    side = 1.5 + 0.5 * n
    fig = Figure(figsize=(side + 1.2, side), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    masked = counts.float().masked_fill(counts == 0, float("nan")).numpy()
    image = ax.imshow(masked, cmap="Blues", norm=LogNorm(vmin=1, vmax=max(int(counts.max()), 2)))
    long_names = max(len(name) for name in class_names) > 2
    ax.set_xticks(range(n), class_names, rotation=45 if long_names else 0, ha="right" if long_names else "center")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = max(int(counts.max()), 1) ** 0.5  # the middle of the log colour scale: dark cells get white text
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                colour = "white" if counts[i, j] > threshold else "black"
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="images")
    if title:
        ax.set_title(title)
    return fig


def image_grid_figure(images: torch.Tensor, titles: Sequence[str], columns: int = 8, title: str = "") -> Figure:
    """Grayscale images ``[N, 1, H, W]`` (or ``[N, H, W]``) in [0, 1], each with its caption above it.

    Drawn as one mosaic in one set of axes (captions as text): a grid of subplots is far slower per image
    (docs/benchmarks.md).
    """
    images = images.detach().float().cpu().reshape(len(images), *images.shape[-2:])
    count, (height, width) = max(len(images), 1), images.shape[-2:]
    columns = min(columns, count)
    rows = -(-count // columns)
    titles = [textwrap.fill(text, CAPTION_WIDTH) for text in titles]  # "T-shirt/top -> Pullover" takes two lines
    lines = max((text.count("\n") + 1 for text in titles), default=1)
    gap, caption = max(width // 7, 2), lines * max(height // 3, 6)  # pixels between tiles, and above each for its caption
    cell_h, cell_w = height + caption, width + gap
    mosaic = torch.full((rows * cell_h, columns * cell_w - gap), float("nan"))  # nan: the page, drawn white
    fig = Figure(figsize=(1.25 * columns, 1.25 * rows * cell_h / cell_w + (0.3 if title else 0)), dpi=100,
                 layout="constrained")
    ax = fig.add_subplot()
    for index, image in enumerate(images):
        top, left = (index // columns) * cell_h + caption, (index % columns) * cell_w
        mosaic[top : top + height, left : left + width] = image
        ax.text(left + width / 2, top - 1, titles[index], ha="center", va="bottom", fontsize=8)
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    ax.imshow(mosaic.numpy(), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


class Bins(Protocol):
    """Confidence bins as ``mlplab.calibration.ReliabilityBins`` holds them."""

    edges: torch.Tensor
    accuracy: torch.Tensor
    count: torch.Tensor


def reliability_figure(before: Bins, after: Bins, temperature: float, title: str = "") -> Figure:
    """A reliability diagram: accuracy against confidence per bin, before
    (T = 1) and after temperature scaling; on the diagonal a model is as right as it is sure. Below, how many
    images each bin holds (log scale), since the few in low-confidence bins are noisy."""
    fig = Figure(figsize=(5.2, 5.6), dpi=100, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    centres = ((before.edges[:-1] + before.edges[1:]) / 2).numpy()
    width = float(before.edges[1] - before.edges[0])
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    for bins, label, colour, shift in ((before, "T = 1 (raw)", "tab:orange", -0.25),
                                       (after, f"T = {temperature:.3g} (scaled)", "tab:blue", 0.25)):
        top.bar(centres + shift * width, bins.accuracy.numpy(), width=width / 2, color=colour, alpha=0.8, label=label)
        bottom.bar(centres + shift * width, bins.count.numpy(), width=width / 2, color=colour, alpha=0.8)
    top.set_ylabel("accuracy in bin")
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize=8)
    bottom.set_yscale("log")
    bottom.set_ylabel("images")
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_xlim(0, 1)
    top.set_title(title or "reliability diagram", fontsize=10)
    return fig
