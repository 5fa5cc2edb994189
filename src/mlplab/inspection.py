"""Inspecting a run (README): TensorBoard beyond per-epoch scalars, as callbacks (conf/callbacks/inspection.yaml).

- ``HParamsSummary``: the hyperparameters as an HParams session (the tab compares runs and sweep jobs, each with
  its final metrics); the same flat names go to MLflow and W&B (mlplab/tracking.py);
- ``TrainingSamples``: a grid of training images as the network sees them (after augmentation);
- ``ParameterHistograms`` and ``ModelGraph``: weight/gradient histograms per epoch and the network's
  graph, off by default (``callbacks.parameter_histograms.enabled=true``, ``callbacks.model_graph.enabled=true``).

The confusion matrix and mistakes come from ``mlplab.evaluation.ErrorAnalysis`` (shared with eval.py). Figures
go to every logger that takes images (TensorBoard, MLflow, W&B); histograms and the graph to TensorBoard alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries
from torch.utils.tensorboard.writer import FileWriter

from mlplab.export import torchscript_quietly
from mlplab.figures import image_grid_figure, to_display
from mlplab.tracking import image_loggers, log_figure


def tensorboard_writers(trainer: L.Trainer) -> list[SummaryWriter]:
    """The SummaryWriters of the run's TensorBoard loggers (none under ``logger=csv``; none off rank 0)."""
    if not trainer.is_global_zero:
        return []
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def flatten_hparams(params: Mapping[str, Any], prefix: str = "") -> dict[str, float | int | str]:
    """Nested hyperparameters -> ``{"optimizer.lr": 0.004, "net.hidden_dims": "[512, 256]", ...}``: the value
    types the HParams plugin accepts (lists and booleans become their text, None becomes "null")."""
    flat: dict[str, float | int | str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten_hparams(value, f"{name}.")
        elif isinstance(value, bool) or value is None:
            flat[name] = "null" if value is None else str(value).lower()
        elif isinstance(value, (int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(list(value) if isinstance(value, tuple) else value)
    return flat


# TensorBoard's HParams table opens with 5 hyperparameter and 5 metric columns (the rest behind checkboxes):
# hyperparameters marked as differing between runs first, then by name; metrics in the experiment's order.
LEADING_HPARAMS = ("optimizer.lr", "net.hidden_dims", "net.dropout", "data.batch_size", "trainer.max_epochs")
LEADING_METRICS = ("val/acc", "test/acc", "val/loss", "test/loss", "train/acc", "train/loss")


def add_summary(writer: SummaryWriter, summary: Summary) -> None:
    """A ready-made Summary (the HParams plugin's) into the writer's log dir, through its public ``file_writer``;
    a writer closed by ``trainer.test`` (finetune.py tests first) has none, so a FileWriter of its own writes it."""
    if writer.file_writer is not None:
        writer.file_writer.add_summary(summary)
        return
    file_writer = FileWriter(writer.get_logdir())
    file_writer.add_summary(summary)
    file_writer.close()


def experiment_summary(params: Mapping[str, float | int | str]) -> Summary:
    """The HParams experiment: ``params`` with ``LEADING_HPARAMS`` marked as differing, so they are the columns
    shown first, and ``LEADING_METRICS`` as the metric columns, in that order. torch's ``hparams`` builds it; the
    ``differs`` flag has no argument there, so it is set in the serialized experiment (tests/test_inspection.py
    checks the columns TensorBoard then serves)."""
    experiment, _, _ = hparams_summaries(dict(params), dict.fromkeys(LEADING_METRICS, 0.0))
    plugin_data = experiment.value[0].metadata.plugin_data
    content = HParamsPluginData.FromString(plugin_data.content)
    for info in content.experiment.hparam_infos:
        info.differs = info.name in LEADING_HPARAMS
    plugin_data.content = content.SerializeToString()
    return experiment


class HParamsSummary(L.Callback):
    """One HParams session per run: the module's and the data's hyperparameters, plus the trainer's length and
    precision, keyed as in the checkpoint (``net.*``, ``optimizer.*``, ``scheduler.*``, ``l1``, ``data.*``).

    A session's metrics are the last value of each of its scalars; after ``mlplab.pipeline.train`` those are
    ``val/*`` and ``test/*`` of the best checkpoint. The experiment summary beside it orders the table's columns
    (``experiment_summary``); TensorBoard reads the first one it finds under ``--logdir``, so its columns are that
    run's hyperparameters (a sweep over optimizers lists the first job's optimizer keys).
    """

    def __init__(self, exclude: Sequence[str] = ()) -> None:
        self.exclude = set(exclude)
        self._session_end = None
        self._logged = False

    def hparams(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float | int | str]:
        params = dict(pl_module.hparams)
        if trainer.datamodule is not None:
            params["data"] = dict(trainer.datamodule.hparams)
        params["trainer"] = {"max_epochs": trainer.max_epochs, "precision": trainer.precision}
        return {k: v for k, v in flatten_hparams(params).items() if k not in self.exclude}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._logged:  # once per run, even if fit is called again
            return
        self._logged = True
        params = self.hparams(trainer, pl_module)
        for logger in trainer.loggers:  # MLflow params, W&B config, hparams.yaml: the same names as the HParams tab
            logger.log_hyperparams(params)
        writers = tensorboard_writers(trainer)
        if not writers:
            return
        _, session_start, self._session_end = hparams_summaries(params, {})
        for writer in writers:  # into the run's own event file, as Lightning does
            add_summary(writer, experiment_summary(params))
            add_summary(writer, session_start)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for writer in tensorboard_writers(trainer):
            if self._session_end is not None:
                add_summary(writer, self._session_end)  # status: success


class TrainingSamples(L.Callback):
    """The first training batch of a run, after augmentation, denormalized and labelled with class names."""

    def __init__(self, count: int = 32) -> None:
        self.count = count
        self._done = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._done or not image_loggers(trainer) or self.count <= 0 or not trainer.datamodule.is_image:
            return
        self._done = True
        images, labels = batch[0][: self.count], batch[1][: self.count].tolist()
        info = trainer.datamodule.info
        titles = [trainer.datamodule.class_names[label] for label in labels]
        figure = image_grid_figure(to_display(images, info.mean, info.std), titles, title="as the network sees them")
        log_figure(trainer, "train/samples", figure)


class ParameterHistograms(L.Callback):
    """Histograms of every parameter at the end of each epoch, and of its gradient at each epoch's first step.

    Off by default: a histogram per parameter per epoch grows the event file and costs a device sync.
    """

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled
        self._gradients_due = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._gradients_due = self.enabled

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if not self._gradients_due:
            return
        self._gradients_due = False
        self._log(trainer, pl_module, "gradients", lambda p: p.grad)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            self._log(trainer, pl_module, "weights", lambda p: p)

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, section: str, tensor_of) -> None:
        for writer in tensorboard_writers(trainer):
            for name, parameter in pl_module.named_parameters():
                values = tensor_of(parameter)
                if values is not None:
                    writer.add_histogram(f"{section}/{name}", values.detach().float(), trainer.global_step)


class ModelGraph(L.Callback):
    """The network's graph (TensorBoard's Graphs tab), traced once at the start of fit on one blank image.

    Off by default: tracing takes a moment and the graph of an MLP holds few surprises.
    """

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writers = tensorboard_writers(trainer) if self.enabled else []
        if not writers:
            return
        example = torch.zeros(1, *trainer.datamodule.input_shape, device=pl_module.device)
        was_training = pl_module.training
        pl_module.eval()  # dropout and batch norm as at inference: a deterministic trace
        with torchscript_quietly():  # add_graph traces with TorchScript: TensorBoard reads no other graph
            for writer in writers:
                writer.add_graph(pl_module, example)
        pl_module.train(was_training)
