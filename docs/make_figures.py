"""Regenerate the README's pictures from a finished run: `python docs/make_figures.py logs/train/runs/<run>`.

Reads the run's TensorBoard events (nothing is re-run): plots the learning curves, and copies the
confusion matrix, misclassified digits and training samples the run itself rendered. Writes small
palette PNGs to docs/figures/ (or `--out`).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

IMAGES = {"test/confusion_matrix": "confusion_matrix.png", "test/misclassified": "misclassified.png",
          "train/samples": "training_samples.png"}


def per_epoch(events: EventAccumulator, tag: str) -> list[float]:
    """One value per training epoch: the steps at which train/loss was logged. (The validation of the best
    checkpoint after fit lands on a later step and is left out: the curves show what happened during training.)"""
    epoch_steps = {event.step for event in events.Scalars("train/loss")}
    return [event.value for event in events.Scalars(tag) if event.step in epoch_steps]


def learning_curves(events: EventAccumulator) -> Figure:
    fig = Figure(figsize=(9, 3.2), dpi=100, layout="constrained")
    for ax, metric, label in zip(fig.subplots(1, 2), ("loss", "acc"), ("cross-entropy loss", "accuracy"), strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = per_epoch(events, f"{split}/{metric}")
            ax.plot(range(1, len(values) + 1), values, style, markersize=3, label=split)
        test = events.Scalars(f"test/{metric}")[-1].value
        ax.axhline(test, color="grey", linestyle="--", linewidth=1, label=f"test {test:.4f}")
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def save_small(png: bytes, path: Path, colors: int = 64) -> None:
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished train.py run, e.g. logs/train/runs/<time>")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "figures")
    args = parser.parse_args()
    events = EventAccumulator(str(args.run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    args.out.mkdir(parents=True, exist_ok=True)

    buffer = io.BytesIO()
    learning_curves(events).savefig(buffer, format="png")
    save_small(buffer.getvalue(), args.out / "learning_curves.png")
    for tag, name in IMAGES.items():
        save_small(events.Images(tag)[-1].encoded_image_string, args.out / name)
    for path in sorted(args.out.glob("*.png")):
        print(f"{path}  {path.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
