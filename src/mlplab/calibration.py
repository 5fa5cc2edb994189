"""How far to trust a probability: temperature scaling, calibration error, reliability bins and the reject option.

A network trained with cross-entropy is often more sure than it is right. Temperature scaling (Guo et al., 2017)
divides the logits by one number T > 0 fitted on the validation split to minimize its negative log-likelihood:
the predicted class never changes, the probabilities become honest (T > 1 softens them, T < 1 sharpens them,
as after label smoothing). ``TemperatureScaling`` fits T after every validation pass of a run, so each
checkpoint carries the T of its own weights (the top-level ``temperature`` key); ``mlplab.checkpoint_reader``
reads it back for eval.py, predict.py, the page and export.py. ``callbacks.temperature_scaling=null``: no T (1.0).

Calibration error is torchmetrics' expected calibration error (15 equal-width confidence bins, L1). The
reliability bins and the selective-prediction table (accept when the top probability reaches a threshold) are
what eval.py reports; out-of-distribution separation is its AUROC of the top probability (torchmetrics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics.functional.classification import binary_auroc, multiclass_calibration_error

from mlplab.figures import reliability_figure
from mlplab.rules import check
from mlplab.tracking import image_loggers, log_figure

TEMPERATURE_KEY = "temperature"  # in a checkpoint: the T fitted on validation for that checkpoint's weights
BINS = 15
# T is kept within these bounds: a validation split the network separates perfectly drives the NLL's minimum to T -> 0.
T_BOUNDS = (0.05, 20.0)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_steps: int = 50) -> float:
    """The T minimizing ``cross_entropy(logits / T, labels)``. The loss is convex in b = 1/T (log-sum-exp of a linear
    function, minus a linear one), so Newton's method on b with exact first and second derivatives finds it in a few
    steps of one softmax each, with no autograd (it runs inside Lightning's no-grad validation loop); a step that
    raises the loss is halved."""
    logits, labels = logits.detach().float().cpu(), labels.detach().cpu()
    true_logit = logits.gather(1, labels[:, None])[:, 0]
    low, high = 1 / T_BOUNDS[1], 1 / T_BOUNDS[0]
    nll = lambda b: float((torch.logsumexp(b * logits, 1) - b * true_logit).mean())  # noqa: E731
    b, loss = 1.0, nll(1.0)
    for _ in range(max_steps):
        p = (b * logits).softmax(1)
        mean = (p * logits).sum(1)
        gradient = float((mean - true_logit).mean())
        curvature = float(((p * logits**2).sum(1) - mean**2).mean())
        if curvature <= 1e-12:  # every probability already 0 or 1: the loss is flat here
            break
        step = gradient / curvature
        while True:
            candidate = min(max(b - step, low), high)
            candidate_loss = nll(candidate)
            if candidate_loss <= loss or abs(step) < 1e-9:
                break
            step /= 2
        converged = abs(candidate - b) < 1e-7 * b
        b, loss = candidate, candidate_loss
        if converged:
            break
    return 1 / b


def calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    """Expected calibration error: the mean |confidence - accuracy| over equal-width confidence bins, weighted by size."""
    return float(multiclass_calibration_error(probabilities.float(), labels, probabilities.shape[1], n_bins=bins, norm="l1"))


@dataclass(frozen=True)
class ReliabilityBins:
    """Per confidence bin: mean top probability, accuracy and image count (empty bins: nan)."""

    edges: torch.Tensor  # [bins + 1]
    confidence: torch.Tensor
    accuracy: torch.Tensor
    count: torch.Tensor

    def rows(self) -> list[dict[str, Any]]:
        return [{"low": round(float(lo), 4), "high": round(float(hi), 4), "confidence": none_if_nan(c),
                 "accuracy": none_if_nan(a), "images": int(n)}
                for lo, hi, c, a, n in zip(self.edges[:-1], self.edges[1:], self.confidence, self.accuracy, self.count,
                                           strict=True)]


def none_if_nan(value: torch.Tensor) -> float | None:
    return None if torch.isnan(value) else round(float(value), 4)


def reliability_bins(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> ReliabilityBins:
    """The bins of ``calibration_error`` (torchmetrics' binning: [low, high), the last bin holding 1.0 too)."""
    confidence, predicted = probabilities.float().max(1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, bins - 1)
    count = torch.zeros(bins).index_add_(0, index, torch.ones_like(confidence))
    mean = lambda values: torch.zeros(bins).index_add_(0, index, values) / count  # noqa: E731  (0/0: nan, empty)
    return ReliabilityBins(edges, mean(confidence), mean(correct), count.long())


def selective_scores(probabilities: torch.Tensor, labels: torch.Tensor, thresholds: Sequence[float],
                     ood_probabilities: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Per threshold: the share of images answered (top probability >= threshold: predict.py's ``reject_below``
    rule, ``mlplab.prediction.unsure``), the accuracy on those, and
    with ``ood_probabilities`` the share of out-of-distribution images that would be answered (wrongly)."""
    confidence, predicted = probabilities.max(1)
    rows = []
    for threshold in thresholds:
        kept = confidence >= threshold
        row = {"threshold": threshold, "coverage": round(float(kept.float().mean()), 4),
               "accuracy": round(float((predicted[kept] == labels[kept]).float().mean()), 4) if kept.any() else None}
        if ood_probabilities is not None:
            row["ood_accepted"] = round(float((ood_probabilities.max(1).values >= threshold).float().mean()), 4)
        rows.append(row)
    return rows


def ood_auroc(in_probabilities: torch.Tensor, ood_probabilities: torch.Tensor) -> float:
    """How well the top probability tells the model's own test images (positives) from others: 1 perfect, 0.5 chance."""
    scores = torch.cat([in_probabilities.max(1).values, ood_probabilities.max(1).values]).float()
    targets = torch.cat([torch.ones(len(in_probabilities)), torch.zeros(len(ood_probabilities))]).long()
    return float(binary_auroc(scores, targets))


class TemperatureScaling(L.Callback):
    """Fits T on every validation pass (not the sanity check) from the very logits that pass computed, gathered over
    all ranks, and stores it in each checkpoint saved after it (``temperature``): best and last each carry the T
    of their own weights. Logs ``val/temperature``, ``val/ece`` (T = 1) and ``val/ece_scaled``; on a test pass,
    ``test/ece`` and ``test/ece_scaled`` with the T of the checkpoint tested. ``fit=false`` (eval.py) only
    measures, with the ``temperature`` it is given. ``collected[split]``: the last pass's (logits, labels)."""

    def __init__(self, fit: bool = True, bins: int = BINS) -> None:
        check({"callbacks.temperature_scaling.fit": fit, "callbacks.temperature_scaling.bins": bins})
        self.fit, self.bins = fit, bins
        self.temperature: float | None = None
        self.collected: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.temperature = checkpoint.get(TEMPERATURE_KEY)  # validate/test with ckpt_path: that file's T

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.temperature is not None:
            checkpoint[TEMPERATURE_KEY] = self.temperature

    def _start(self, trainer: L.Trainer) -> None:
        self._batches = []

    def _collect(self, trainer: L.Trainer, outputs: torch.Tensor, batch) -> None:
        if not trainer.sanity_checking:
            self._batches.append((outputs.detach().float(), batch[1]))

    def _gathered(self, pl_module: L.LightningModule) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.cat([b[0] for b in self._batches])
        labels = torch.cat([b[1] for b in self._batches])
        self._batches = []
        if pl_module.trainer.world_size > 1:  # equal shares per rank: DistributedSampler pads them
            logits, labels = (pl_module.all_gather(t).flatten(0, 1) for t in (logits, labels))
        return logits.cpu(), labels.cpu()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(trainer, outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(trainer, outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._batches:
            return
        logits, labels = self._gathered(pl_module)
        self.collected["val"] = (logits, labels)
        if self.fit:
            self.temperature = fit_temperature(logits, labels)
        self._log(pl_module, "val", logits, labels, fit_metric=self.fit)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._batches:
            return
        logits, labels = self._gathered(pl_module)
        self.collected["test"] = (logits, labels)
        self._log(pl_module, "test", logits, labels)
        if trainer.state.fn == TrainerFn.TESTING and self.temperature is not None:
            if image_loggers(trainer):
                before, after = (reliability_bins((logits / t).softmax(1), labels, self.bins) for t in (1.0, self.temperature))
                log_figure(trainer, "test/reliability", reliability_figure(before, after, self.temperature))

    def _log(self, pl_module: L.LightningModule, split: str, logits: torch.Tensor, labels: torch.Tensor,
             fit_metric: bool = False) -> None:
        values = {f"{split}/ece": calibration_error(logits.softmax(1), labels, self.bins)}
        if self.temperature is not None:
            values[f"{split}/ece_scaled"] = calibration_error((logits / self.temperature).softmax(1), labels, self.bins)
            if fit_metric:
                values[f"{split}/temperature"] = self.temperature
        # computed from gathered tensors: every rank holds the same numbers, nothing to reduce
        pl_module.log_dict(values, sync_dist=False, rank_zero_only=False)
