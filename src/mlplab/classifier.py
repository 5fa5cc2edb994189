"""The LightningModule: any classifier network, its loss, metrics, optimizer and LR schedule.

Everything it is built from arrives as plain config dicts (``_target_`` + arguments) and is stored as
hyperparameters, so a checkpoint holds only tensors and plain values: it loads with
``torch.load(..., weights_only=True)`` and ``ClassifierModule.load_from_checkpoint(path)`` rebuilds the
network without the user repeating the architecture.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mlplab.errors import ConfigError
from mlplab.rules import check, problem

# Keys of a scheduler's arguments that mean "the length of the whole run" when left null.
RUN_LENGTH_KEYS = ("T_max", "total_steps", "total_iters")


class ClassifierModule(L.LightningModule):
    """Cross-entropy classification with an optional L1 penalty; L2 is the optimizer's weight decay."""

    def __init__(
        self,
        net: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        l1: float = 0.0,
        label_smoothing: float = 0.0,
        backbone_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        check({"regularization.l1": l1, "regularization.label_smoothing": label_smoothing,
               "finetune.backbone_lr_scale": backbone_lr_scale})
        self.save_hyperparameters(logger=False)  # loggers get flat names from inspection.HParamsSummary
        self.net = instantiate(net)
        num_classes = net["num_classes"]
        # Metrics accumulate on the device and are read once per epoch: nothing in a step waits for the host.
        # (Argument validation and NaN checks would each sync per step; the inputs here come from our own code.)
        accuracy = lambda: MulticlassAccuracy(num_classes, average="micro", validate_args=False)  # noqa: E731
        mean = lambda: MeanMetric(nan_strategy="disable")  # noqa: E731
        self.train_acc, self.val_acc, self.test_acc = accuracy(), accuracy(), accuracy()
        self.train_loss, self.val_loss, self.test_loss = mean(), mean(), mean()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        self.train_loss.update(loss.detach(), len(y))
        self.train_acc.update(logits.detach(), y)
        if self.hparams.l1 > 0:
            penalty = sum(p.abs().sum() for name, p in self.net.named_parameters() if name.endswith("weight"))
            loss = loss + self.hparams.l1 * penalty
        return loss

    def on_train_epoch_end(self) -> None:
        # Logged here rather than with self.log in the step: Lightning's per-step bookkeeping costs more than the
        # step of a small MLP.
        self.log_dict({"train/loss": self.train_loss, "train/acc": self.train_acc}, prog_bar=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, self.val_loss, self.val_acc)

    def on_validation_epoch_end(self) -> None:
        self.log_dict({"val/loss": self.val_loss, "val/acc": self.val_acc}, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, self.test_loss, self.test_acc)

    def on_test_epoch_end(self) -> None:
        self.log_dict({"test/loss": self.test_loss, "test/acc": self.test_acc})

    def _evaluate(self, batch, loss_metric: MeanMetric, acc_metric: MulticlassAccuracy) -> torch.Tensor:
        """Update the split's loss and accuracy; the logits are returned so callbacks (mlplab.evaluation's
        confusion matrix and misclassified images) analyse this very forward pass instead of running another."""
        x, y = batch
        logits = self.net(x)
        # Plain cross-entropy (no smoothing, no L1) so val/test losses compare across recipes.
        loss_metric.update(F.cross_entropy(logits, y, reduction="none"))
        acc_metric.update(logits, y)
        return logits

    def param_groups(self) -> list[dict[str, Any]]:
        """One group at the optimizer's LR; with ``backbone_lr_scale != 1`` the network's ``backbone`` (pretrained
        layers) gets a group of its own at that fraction of it, and the rest (the head) keeps the full LR."""
        scale = self.hparams.backbone_lr_scale
        if scale == 1:
            return [{"params": list(self.parameters()), "lr_scale": 1.0}]
        backbone = list(self.net.backbone.parameters())
        in_backbone = {id(p) for p in backbone}
        rest = [p for p in self.parameters() if id(p) not in in_backbone]
        return [{"params": rest, "lr_scale": 1.0, "name": "head"}, {"params": backbone, "lr_scale": scale, "name": "backbone"}]

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer, _partial_=True)(self.param_groups())
        for group in optimizer.param_groups:
            group["lr"] *= group["lr_scale"]
        if not self.hparams.scheduler:
            return optimizer
        lightning_config = dict(self.hparams.scheduler)  # interval, frequency, monitor: Lightning's keys
        scheduler_args = dict(lightning_config.pop("scheduler"))
        if isinstance(scheduler_args.get("max_lr"), (int, float)):  # one-cycle and cyclic schedules set each group's LR
            scheduler_args["max_lr"] = [scheduler_args["max_lr"] * group["lr_scale"] for group in optimizer.param_groups]
        per_step = lightning_config.get("interval", "epoch") == "step"
        run_length = self.trainer.estimated_stepping_batches if per_step else self.trainer.max_epochs
        self._run_length_keys = {key: int(run_length) for key in RUN_LENGTH_KEYS if key in scheduler_args and scheduler_args[key] is None}
        total, warm_up = (scheduler_args | self._run_length_keys).get("total_steps"), scheduler_args.get("pct_start")
        if total and warm_up is not None and float(warm_up * total) == 1:  # OneCycleLR divides by (warm-up steps - 1)
            raise ConfigError(problem("scheduler.scheduler.pct_start", warm_up, f"other than 1/{total}: one warm-up step of the "
                                      f"{total} steps of this run makes torch's OneCycleLR divide by zero; raise "
                                      "trainer.max_epochs, lower data.batch_size or use scheduler=none"))
        scheduler = instantiate(scheduler_args | self._run_length_keys, optimizer=optimizer, _convert_="all")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **lightning_config}}

    def on_train_start(self) -> None:
        """A resumed schedule that spans the whole run cannot stretch to a new run length: say so now."""
        for config in self.trainer.lr_scheduler_configs:
            for key, length in getattr(self, "_run_length_keys", {}).items():
                restored = getattr(config.scheduler, key, length)
                if restored != length:
                    raise ConfigError(
                        f"ckpt_path holds a {type(config.scheduler).__name__} schedule over {restored} "
                        f"{config.interval}s but this run is {length} long (trainer.max_epochs changed?); resume "
                        "with the original trainer.max_epochs, or extend with scheduler=none|step|plateau"
                    )
