"""Pictures for people: a confusion matrix with class names, and grids of labelled images.

Drawn with matplotlib's object API (no pyplot state, no GUI backend), so a callback can draw them in the
middle of a run. TensorBoard (``add_figure``), ``eval.py``, ``predict.py`` and ``docs/make_figures.py``
share them, so a figure looks the same wherever a user meets it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure


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
    """Grayscale images ``[N, 1, H, W]`` (or ``[N, H, W]``) in [0, 1], each with its caption above it."""
    images = images.detach().float().cpu().reshape(len(images), *images.shape[-2:])
    count = max(len(images), 1)
    columns = min(columns, count)
    rows = -(-count // columns)
    fig = Figure(figsize=(1.25 * columns, 1.4 * rows + (0.3 if title else 0)), dpi=100, layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < len(images):
            ax.imshow(images[index].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(titles[index], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
