"""Predictions for a user's own pictures: PNG or JPEG, any size, dark ink on light paper or the reverse.

Each picture is prepared by ``mlplab.data.pictures.prepare_picture`` (the preparation ``data=image_folder`` trains
on), then normalized with the training data's mean and std. The rows of a Kaggle digit CSV (``inputs=test.csv``)
are already 28x28 digits framed like MNIST: they go in as they are, and the run also writes Kaggle's
``submission.csv`` (``ImageId,Label``).

Probabilities are temperature-scaled (``mlplab.calibration``): with ``reject_below=p`` a picture whose top
probability is under p is answered "not sure" (the top-k classes are still listed), the way the page answers too.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mlplab.checkpoint_reader import TrainedClassifier, load_trained_from_config
from mlplab.data.csv_data import kaggle_images
from mlplab.data.pictures import find_images, prepare_picture
from mlplab.errors import ConfigError, UserError
from mlplab.figures import image_grid_figure
from mlplab.rules import problem
from mlplab.run_dirs import entry_point

log = logging.getLogger(__name__)

GRID_LIMIT = 64  # pictures shown in model_inputs.png, and rows logged
NOT_SURE = "not sure"  # the answer under the reject threshold, in predict.py's output and on the page


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    """Top-k classes for each picture in ``cfg.inputs``: printed, and written to ``predictions.csv`` next to
    ``model_inputs.png`` (the first pictures as the network saw them) in ``cfg.output_dir``."""
    trained = load_trained_from_config(cfg)
    if OmegaConf.is_missing(cfg, "inputs"):
        raise UserError("inputs=<picture, folder or pattern> is required, e.g. inputs=my_digit.png or inputs=pictures/")
    refuse_non_picture_model(trained, cfg.ckpt_path, cfg.top_k)
    info = trained.info
    size, names = info.image_shape[-1], trained.class_names
    kaggle_csv = isinstance(cfg.inputs, str) and cfg.inputs.lower().endswith(".csv")
    if kaggle_csv:
        pictures = kaggle_images(Path(cfg.inputs)).float() / 255
        paths = [f"{cfg.inputs}:{row}" for row in range(1, len(pictures) + 1)]
    else:
        paths = find_images(cfg.inputs)
        box = cfg.get("box") or info.box
        pictures = torch.stack([prepare_picture(p, cfg.invert, cfg.fit, box, size) for p in paths])
    probabilities = class_probabilities(trained, pictures)
    top = probabilities.topk(cfg.top_k, dim=1)
    answers = answer_names(probabilities, names, cfg.get("reject_below"))
    rows = [
        {"file": str(path), "answer": answer, "top": [(names[i], round(p, 4)) for i, p in zip(indices, probs, strict=True)]}
        for path, answer, indices, probs in zip(paths, answers, top.indices.tolist(), top.values.tolist(), strict=True)
    ]
    rejecting = cfg.get("reject_below") is not None

    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "predictions.csv", "w", newline="") as file:
        writer = csv.writer(file)
        answer_column = ["answer"] if rejecting else []  # the file's columns stay as they were without reject_below
        writer.writerow(["file", *answer_column] + [f"{kind}_{k}" for k in range(1, cfg.top_k + 1) for kind in ("class", "probability")])
        for row in rows:
            writer.writerow([row["file"], *([row["answer"]] if rejecting else [])] + [value for pair in row["top"] for value in pair])
    shown = rows[:GRID_LIMIT]
    titles = [f"{Path(row['file']).name[:14]}: {row['answer']}" for row in shown]
    title = "as the network saw them" + (f" (first {GRID_LIMIT} of {len(rows)})" if len(rows) > GRID_LIMIT else "")
    image_grid_figure(pictures[:GRID_LIMIT], titles, title=title).savefig(output_dir / "model_inputs.png")
    for row in shown:
        shown_top = "  ".join(f"{name} ({p:.3f})" for name, p in row["top"])
        log.info("%s  %s", row["file"], f"{row['answer']}:  {shown_top}" if rejecting else shown_top)
    if len(rows) > GRID_LIMIT:
        log.info("... and %d more in %s", len(rows) - GRID_LIMIT, output_dir / "predictions.csv")
    if kaggle_csv:
        write_submission(output_dir / "submission.csv", [row["top"][0][0] for row in rows])
    log.info("run dir: %s", output_dir)
    return rows


def refuse_non_picture_model(trained: TrainedClassifier, ckpt_path: str | Path, top_k: int) -> None:
    """One line where a checkpoint cannot answer ``top_k`` classes for a picture: predict.py's and serve.py's check."""
    if len(trained.info.image_shape) != 3:
        raise UserError(f"ckpt_path={ckpt_path} was trained on tabular data ({trained.dataset}); {entry_point()} "
                        "classifies pictures (eval.py scores a checkpoint on its data)")
    if top_k > len(trained.class_names):
        raise ConfigError(problem("top_k", top_k, f"at most {len(trained.class_names)} (the number of classes)"))


def class_probabilities(trained: TrainedClassifier, pictures: torch.Tensor) -> torch.Tensor:
    """Class probabilities [N, classes] for prepared pictures [N, H, W] in [0, 1] (light ink on dark): the one path
    from a picture to what the model believes, shared by predict.py and the page (serve.py)."""
    info = trained.info
    with torch.no_grad():
        logits = trained.module(((pictures - info.mean) / info.std).unsqueeze(1))
    return (logits / trained.temperature).softmax(1)


def unsure(probabilities: torch.Tensor, reject_below: float | None) -> torch.Tensor:
    """Which rows [N] the model should not answer: top probability under ``reject_below`` (None: answer all)."""
    if reject_below is None:
        return torch.zeros(len(probabilities), dtype=torch.bool)
    return probabilities.max(1).values < reject_below


def answer_names(probabilities: torch.Tensor, class_names: Sequence[str], reject_below: float | None) -> list[str]:
    """Each row's answer: its most probable class name, or ``NOT_SURE`` where ``unsure``."""
    return [NOT_SURE if doubt else class_names[index]
            for doubt, index in zip(unsure(probabilities, reject_below).tolist(), probabilities.argmax(1).tolist(), strict=True)]


def write_submission(path: Path, labels: list[str]) -> None:
    """Kaggle's Digit Recognizer submission: ``ImageId`` (the test.csv row, from 1) and the predicted ``Label``."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["ImageId", "Label"])
        writer.writerows(enumerate(labels, start=1))
    log.info("Kaggle submission: %s (%d rows)", path, len(labels))
