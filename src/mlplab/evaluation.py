"""Where a model fails: confusion matrix, per-class precision/recall/F1, its most confident mistakes, and how far
its confidence can be trusted (calibration error, reliability diagram, the reject table, out-of-distribution AUROC).

``ErrorAnalysis`` is a callback watching a standalone ``trainer.validate`` or ``trainer.test`` pass, so its
numbers come from the very forward pass that produced the logged loss and accuracy (same device, same
precision). Every training run uses it to put the test-set confusion matrix and misclassified images in
TensorBoard; ``eval.py`` (``evaluate`` below) uses it to report on any checkpoint.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from mlplab.calibration import (
    TemperatureScaling,
    calibration_error,
    ood_auroc,
    reliability_bins,
    selective_scores,
)
from mlplab.checkpoint_reader import TrainedClassifier, load_trained_from_config, refuse_misfit
from mlplab.choices import DATASETS
from mlplab.data.datamodule import MNISTDataModule, load_split
from mlplab.data.pictures import IMAGE_SUFFIXES, prepare_picture
from mlplab.errors import ConfigError, UserError
from mlplab.figures import confusion_matrix_figure, image_grid_figure, reliability_figure, to_display
from mlplab.pipeline import build_datamodule, build_trainer
from mlplab.prediction import class_probabilities
from mlplab.rules import check
from mlplab.run_record import note_data, warn_if_data_changed
from mlplab.tracking import image_loggers, log_figure

log = logging.getLogger(__name__)

SPLITS = {TrainerFn.VALIDATING: "val", TrainerFn.TESTING: "test"}


@dataclass
class ClassificationReport:
    """One split's results. ``confusion[i, j]``: images of class i predicted as j. ``mistakes_*``: the most
    confident wrong predictions, most confident first (images in [0, 1], ready to show)."""

    split: str
    class_names: tuple[str, ...]
    confusion: torch.Tensor
    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor
    mistakes_images: torch.Tensor
    mistakes_true: torch.Tensor
    mistakes_predicted: torch.Tensor
    mistakes_confidence: torch.Tensor

    @property
    def has_images(self) -> bool:
        """False for tabular data: its mistakes are rows of features, not pictures to show."""
        return self.mistakes_images.dim() == 4

    @property
    def support(self) -> torch.Tensor:
        return self.confusion.sum(1)

    def per_class(self) -> list[dict[str, Any]]:
        return [
            {"class": name, "precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4),
             "support": int(s)}
            for name, p, r, f, s in zip(self.class_names, self.precision, self.recall, self.f1, self.support, strict=True)
        ]

    def most_confused(self, count: int = 5) -> list[dict[str, Any]]:
        """The largest off-diagonal cells: which true class is most often taken for which other one."""
        off_diagonal = self.confusion.clone().fill_diagonal_(0)
        values, flat = off_diagonal.flatten().sort(descending=True)
        n = len(self.class_names)
        return [
            {"true": self.class_names[i // n], "predicted": self.class_names[i % n], "count": int(v)}
            for v, i in zip(values[:count].tolist(), flat[:count].tolist(), strict=True)
            if v > 0
        ]

    def table(self) -> str:
        width = max(len("class"), *(len(name) for name in self.class_names))
        lines = [f"{'class':<{width}}  precision  recall      f1  support"]
        for row in self.per_class():
            lines.append(f"{row['class']:<{width}}  {row['precision']:>9.4f}  {row['recall']:>6.4f}  "
                         f"{row['f1']:>6.4f}  {row['support']:>7d}")
        return "\n".join(lines)

    def confusion_figure(self) -> Figure:
        return confusion_matrix_figure(self.confusion, self.class_names, title=f"{self.split}: true vs predicted")

    def mistakes_figure(self) -> Figure:
        titles = [
            f"{self.class_names[t]} -> {self.class_names[p]} ({c:.2f})"
            for t, p, c in zip(self.mistakes_true.tolist(), self.mistakes_predicted.tolist(),
                               self.mistakes_confidence.tolist(), strict=True)
        ]
        title = f"{self.split}: most confident mistakes, true -> predicted (probability)"
        return image_grid_figure(self.mistakes_images, titles, columns=8, title=title)


class ErrorAnalysis(L.Callback):
    """Collects a ``ClassificationReport`` on the standalone validate/test passes of ``splits`` (not on the
    per-epoch validation during fit) and, when the run has a TensorBoard logger, logs ``<split>/confusion_matrix``
    and ``<split>/misclassified`` figures. Under DDP the matrix and scores cover all ranks, the images rank 0's
    share. Needs the module's validation/test step to return its logits (``ClassifierModule`` does).
    """

    def __init__(self, splits: Sequence[str] = ("test",), max_mistakes: int = 32) -> None:
        check({"callbacks.error_analysis.splits": list(splits), "callbacks.error_analysis.max_mistakes": max_mistakes})
        self.splits, self.max_mistakes = tuple(splits), max_mistakes
        self.reports: dict[str, ClassificationReport] = {}
        self._split: str | None = None

    def _begin(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        split = SPLITS.get(trainer.state.fn)
        self._split = split if split in self.splits else None
        if self._split is None:
            return
        k = trainer.datamodule.num_classes
        self._metrics = MetricCollection({
            "confusion": MulticlassConfusionMatrix(k),
            "precision": MulticlassPrecision(k, average=None),
            "recall": MulticlassRecall(k, average=None),
            "f1": MulticlassF1Score(k, average=None),
        }).to(pl_module.device)
        shape = trainer.datamodule.input_shape if trainer.datamodule.is_image else (0,)  # tabular rows: no pictures
        self._mistakes = (torch.empty(0, *shape), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long),
                          torch.empty(0))

    def _update(self, outputs: torch.Tensor, batch) -> None:
        if self._split is None:
            return
        images, labels = batch
        probabilities = outputs.detach().float().softmax(1)
        confidence, predicted = probabilities.max(1)
        self._metrics.update(predicted, labels)
        wrong = predicted != labels
        images = images if images.dim() > 2 else images[:, :0]
        new = (images[wrong].float().cpu(), labels[wrong].cpu(), predicted[wrong].cpu(), confidence[wrong].cpu())
        kept = [torch.cat(pair) for pair in zip(self._mistakes, new, strict=True)]
        order = kept[3].argsort(descending=True)[: self.max_mistakes]
        self._mistakes = tuple(tensor[order] for tensor in kept)

    def _finish(self, trainer: L.Trainer) -> None:
        if self._split is None:
            return
        scores = {name: value.cpu() for name, value in self._metrics.compute().items()}
        info = trainer.datamodule.info
        images, true, predicted, confidence = self._mistakes
        report = ClassificationReport(
            self._split, trainer.datamodule.class_names, scores["confusion"], scores["precision"], scores["recall"], scores["f1"],
            to_display(images, info.mean, info.std) if trainer.datamodule.is_image else images, true, predicted, confidence,
        )
        self.reports[self._split] = report
        if image_loggers(trainer):
            log_figure(trainer, f"{self._split}/confusion_matrix", report.confusion_figure())
            if report.has_images:
                log_figure(trainer, f"{self._split}/misclassified", report.mistakes_figure())
        self._split = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin(trainer, pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._begin(trainer, pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update(outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update(outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer)


def evaluation_datamodule(cfg: DictConfig, trained: TrainedClassifier) -> MNISTDataModule:
    """The checkpoint's own data settings (same dataset, same validation split), read from ``cfg.data_dir``;
    or, when the user picked ``data=<name>``, that config as it stands."""
    if cfg.get("data") is None:
        built_in = {"data_dir": cfg.data_dir} if trained.data_class is MNISTDataModule else {}  # own data: its stored path
        return trained.datamodule(augment=None, **built_in)
    refuse_misfit(cfg.ckpt_path, None, OmegaConf.to_container(cfg.data, resolve=True), keys=("data.dataset", "data.classes"),
                  group_is_optional=True)
    return build_datamodule(cfg)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split``; print the scores, write metrics.json, per_class.csv,
    confusion_matrix.png and misclassified.png to ``cfg.output_dir``."""
    trained = load_trained_from_config(cfg)
    datamodule = evaluation_datamodule(cfg, trained)
    warn_if_data_changed(trained.origin, note_data(datamodule, cfg.output_dir))
    ood = ood_pictures(cfg, trained, datamodule.name) if cfg.get("ood") is not None else None  # bad ood= fails now
    trainer = build_trainer(cfg)
    analysis = next((cb for cb in trainer.callbacks if isinstance(cb, ErrorAnalysis)), None)
    if analysis is None or cfg.split not in analysis.splits:
        raise ConfigError(f"callbacks.error_analysis must be an mlplab.evaluation.ErrorAnalysis covering split={cfg.split}")
    scaling = next((cb for cb in trainer.callbacks if isinstance(cb, TemperatureScaling)), None)
    if scaling is None or scaling.fit:
        raise ConfigError("callbacks.temperature_scaling must be an mlplab.calibration.TemperatureScaling with fit: false "
                          "(eval.py measures the checkpoint's temperature; it never fits one on the data it reports)")
    scaling.temperature = trained.temperature
    run = trainer.test if cfg.split == "test" else trainer.validate
    scores = run(trained.module, datamodule=datamodule, verbose=False)[0]
    report = analysis.reports[cfg.split]
    if ood is not None:  # both sides through the same float32 path (the evaluation pass may run in bf16), at T and 1
        pictures, uncalibrated = split_pictures(datamodule, cfg.split), replace(trained, temperature=1.0)
        ood = (ood[0], *(class_probabilities(model, images) for model in (trained, uncalibrated) for images in (pictures, ood[1])))
    confidence = ConfidenceReport.of(cfg, trained, *scaling.collected[cfg.split], scaling.bins, ood)

    metrics = {
        f"{cfg.split}/acc": scores[f"{cfg.split}/acc"],
        f"{cfg.split}/loss": scores[f"{cfg.split}/loss"],
        f"{cfg.split}/macro_f1": round(float(report.f1.mean()), 6),
        "images": int(report.support.sum()),
        "dataset": datamodule.name,
        "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
        "most_confused": report.most_confused(cfg.top_confused),
    } | confidence.metrics(cfg.split)
    if trainer.is_global_zero:
        write_report(Path(cfg.output_dir), metrics, report)
        confidence.figure(f"{datamodule.name} {cfg.split}").savefig(Path(cfg.output_dir) / "reliability.png")
        log.info("%s on %s %s (%d images): acc %.4f  loss %.4f", Path(cfg.ckpt_path).name, metrics["dataset"],
                 cfg.split, metrics["images"], metrics[f"{cfg.split}/acc"], metrics[f"{cfg.split}/loss"])
        log.info("per class:\n%s", report.table())
        pairs = ", ".join(f"{p['true']} -> {p['predicted']} ({p['count']})" for p in metrics["most_confused"])
        log.info("most confused (true -> predicted): %s", pairs or "none")
        confidence.log()
        log.info("run dir: %s", cfg.output_dir)
    return metrics


def write_report(output_dir: Path, metrics: dict[str, Any], report: ClassificationReport) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with open(output_dir / "per_class.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["class", "precision", "recall", "f1", "support"])
        writer.writeheader()
        writer.writerows(report.per_class())
    report.confusion_figure().savefig(output_dir / "confusion_matrix.png")
    if report.has_images:
        report.mistakes_figure().savefig(output_dir / "misclassified.png")


@dataclass
class ConfidenceReport:
    """How far the checkpoint's confidence can be trusted on one split: calibration error before (T = 1) and after
    its temperature, the reliability bins of both, the reject table and, with ``ood=``, the out-of-distribution
    AUROC of the top probability."""

    temperature: float
    raw: torch.Tensor  # probabilities [N, classes] at T = 1
    scaled: torch.Tensor  # at the checkpoint's temperature
    labels: torch.Tensor
    bins: int
    thresholds: list[float]
    ood_name: str | None = None
    in_probabilities: torch.Tensor | None = None  # the split's, computed like ood_probabilities (scaled)
    ood_probabilities: torch.Tensor | None = None
    in_raw: torch.Tensor | None = None  # both at T = 1: does the temperature change how well confidence separates them?
    ood_raw: torch.Tensor | None = None

    @classmethod
    def of(cls, cfg: DictConfig, trained: TrainedClassifier, logits: torch.Tensor, labels: torch.Tensor, bins: int,
           ood: tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None) -> ConfidenceReport:
        t = trained.temperature
        return cls(t, logits.softmax(1), (logits / t).softmax(1), labels, bins, list(cfg.thresholds), *(ood or ()))

    def metrics(self, split: str) -> dict[str, Any]:
        found: dict[str, Any] = {
            "temperature": self.temperature,
            f"{split}/ece": round(calibration_error(self.raw, self.labels, self.bins), 6),
            f"{split}/ece_scaled": round(calibration_error(self.scaled, self.labels, self.bins), 6),
            "reliability": {name: reliability_bins(p, self.labels, self.bins).rows()
                            for name, p in (("raw", self.raw), ("scaled", self.scaled))},
            "reject": selective_scores(self.scaled, self.labels, self.thresholds, self.ood_probabilities),
        }
        if self.ood_probabilities is not None:
            found["ood"] = {"data": self.ood_name, "images": len(self.ood_probabilities),
                            "auroc": round(ood_auroc(self.in_probabilities, self.ood_probabilities), 6),
                            "auroc_raw": round(ood_auroc(self.in_raw, self.ood_raw), 6)}
        self._metrics = found | {"split": split}
        return found

    def figure(self, what: str) -> Figure:
        split = self._metrics["split"]
        title = (f"{what}: ECE {self._metrics[f'{split}/ece']:.4f} (T = 1) -> "
                 f"{self._metrics[f'{split}/ece_scaled']:.4f} (T = {self.temperature:.3g})")
        return reliability_figure(reliability_bins(self.raw, self.labels, self.bins),
                                  reliability_bins(self.scaled, self.labels, self.bins), self.temperature, title)

    def log(self) -> None:
        m, split = self._metrics, self._metrics["split"]
        origin = "fitted on validation" if self.temperature != 1.0 else "none stored in the checkpoint"
        log.info("calibration error (%d bins): %.4f at T = 1 -> %.4f at T = %.4g (%s)", self.bins, m[f"{split}/ece"],
                 m[f"{split}/ece_scaled"], self.temperature, origin)
        if "ood" in m:
            log.info("out of distribution: %s (%d images) vs %s: AUROC of the top probability %.4f (%.4f at T = 1)",
                     m["ood"]["data"], m["ood"]["images"], split, m["ood"]["auroc"], m["ood"]["auroc_raw"])
        lines = ["answer only when top probability >= threshold:", "threshold  coverage  accuracy" + ("  ood answered" if "ood" in m else "")]
        for row in m["reject"]:
            accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
            lines.append(f"{row['threshold']:>9}  {row['coverage']:>8.4f}  {accuracy:>8}"
                         + (f"  {row['ood_accepted']:>12.4f}" if "ood_accepted" in row else ""))
        log.info("\n".join(lines))


def split_pictures(datamodule: MNISTDataModule, split: str) -> torch.Tensor:
    """The evaluated split's images [N, H, W] in [0, 1] (before normalization), as ``class_probabilities`` takes them."""
    part = datamodule.test_set if split == "test" else datamodule.val_set
    images = part[0] if isinstance(part, tuple) else torch.stack([part[i][0] for i in range(len(part))])  # torchvision loader
    return to_display(images, datamodule.info.mean, datamodule.info.std)[:, 0]


def ood_pictures(cfg: DictConfig, trained: TrainedClassifier, evaluated: str) -> tuple[str, torch.Tensor]:
    """``ood=``'s pictures [N, H, W] in [0, 1], light ink on dark: another dataset's official test images (from
    ``cfg.data_dir``), or every PNG/JPEG under a folder, prepared as predict.py prepares a picture."""
    name, info = str(cfg.ood), trained.info
    others = [d for d in DATASETS if d not in (trained.dataset, evaluated)]
    allowed = f"one of {', '.join(others)} or a folder of pictures"
    if len(info.image_shape) != 3:
        raise ConfigError(f"ood={name}: ckpt_path={cfg.ckpt_path} was trained on tabular data; ood= compares pictures")
    if name in DATASETS:
        if name in (trained.dataset, evaluated):
            raise ConfigError(f"ood={name} is the data being evaluated (the model's own dataset): choose {allowed}")
        images = load_split(cfg.data_dir, name, train=False)[0]  # missing files: the one-line DataError
        return name, images.float() / 255
    folder = Path(name)
    if not folder.is_dir():
        raise ConfigError(f"ood={name} must be {allowed}; {'it is a file' if folder.exists() else 'no such dataset or folder'}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"ood={name} holds no {'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} picture (searched its subfolders too)")
    size = info.image_shape[-1]
    return name, torch.stack([prepare_picture(path, "auto", True, info.box, size) for path in files])
