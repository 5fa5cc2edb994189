"""The LR range test (Smith, 2015): which learning rate does this recipe train well at?

Lightning's ``Tuner.lr_find`` trains the composed recipe for ``lr_find.num_training`` batches, raising the LR
from ``min_lr`` to ``max_lr`` (the config's scheduler is set aside), and records the smoothed loss; it stops
early once the loss is ``early_stop_threshold`` times its best. Two readings of the curve:

- Lightning's suggestion: the LR where the loss falls fastest (steepest negative slope), a constant LR's choice;
- the one-cycle peak: a tenth of the LR where the loss is lowest (fastai's ``lr_min`` rule), looked for from the
  steepest descent on. The default schedule (conf/scheduler/onecycle.yaml) peaks at ``optimizer.lr`` and starts
  25 times lower, so it tolerates a peak above what a constant LR would.

Both go to ``lr_find.json`` with the curve, the plot to ``lr_find.png`` and to TensorBoard (``lr_find/loss_vs_lr``).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from lightning.pytorch.tuner import Tuner
from matplotlib.figure import Figure
from omegaconf import DictConfig

from mlplab.errors import UserError
from mlplab.pipeline import build
from mlplab.tracking import log_figure

log = logging.getLogger(__name__)

ONE_CYCLE_BELOW_MINIMUM = 10  # one-cycle peak = LR at the lowest loss / this


def one_cycle_peak(lrs: list[float], losses: list[float], steepest: int) -> float:
    """A tenth of the LR at which the (smoothed) loss is lowest, searched from the steepest descent (index
    ``steepest``) on: before it the loss has not started to fall, and noise there must not win."""
    finite = [(loss, lr) for lr, loss in list(zip(lrs, losses, strict=True))[steepest:] if math.isfinite(loss)]
    return min(finite)[1] / ONE_CYCLE_BELOW_MINIMUM


def loss_vs_lr_figure(finder: Any, peak: float, default_lr: float) -> Figure:
    figure = Figure(figsize=(6, 4), dpi=100, layout="constrained")
    ax = figure.subplots()
    finder.plot(suggest=True, ax=ax)  # the curve, log-scaled LR axis, the suggestion as a red dot
    ax.axvline(peak, color="tab:green", linestyle="--", label=f"one-cycle peak {peak:.2g}")
    ax.axvline(default_lr, color="tab:gray", linestyle=":", label=f"optimizer.lr now {default_lr:.2g}")
    ax.plot([], [], "o", color="red", label=f"steepest descent {finder.suggestion():.2g}")
    ax.set_title("LR range test: training loss (smoothed) vs learning rate")
    ax.legend()
    return figure


def lr_range_test(cfg: DictConfig) -> dict[str, Any]:
    """Run the range test on ``cfg``'s recipe; print and return the suggested LR and the one-cycle peak."""
    settings = cfg.lr_find
    datamodule, module, trainer = build(cfg)
    finder = Tuner(trainer).lr_find(
        module, datamodule=datamodule, min_lr=settings.min_lr, max_lr=settings.max_lr,
        num_training=settings.num_training, mode=settings.mode, early_stop_threshold=settings.early_stop_threshold,
        update_attr=False,
    )
    suggestion = finder.suggestion() if finder is not None else None
    if suggestion is None or not math.isfinite(suggestion) or suggestion <= 0:
        raise UserError(
            "the LR range test found no falling stretch of the loss to suggest from: raise lr_find.num_training, "
            "widen lr_find.min_lr..max_lr, or set lr_find.early_stop_threshold=null"
        )
    lrs, losses = finder.results["lr"], finder.results["loss"]
    peak = one_cycle_peak(lrs, losses, lrs.index(suggestion))
    result = {
        "suggested_lr": suggestion,
        "one_cycle_peak": peak,
        "optimizer_lr_now": cfg.optimizer.lr,
        "steps": len(lrs),
        "lr": lrs,
        "loss": losses,
    }
    output_dir = Path(cfg.output_dir)
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "lr_find.json").write_text(json.dumps(result, indent=2) + "\n")
        figure = loss_vs_lr_figure(finder, peak, cfg.optimizer.lr)
        figure.savefig(output_dir / "lr_find.png")
        log_figure(trainer, "lr_find/loss_vs_lr", figure)
        for logger in trainer.loggers:  # no fit ends here to close the trackers' runs (an MLflow run: FINISHED)
            logger.finalize("success")
        log.info("LR range test, %d steps from %.2g to %.2g: the loss falls fastest at %.3g (suggested LR, constant "
                 "schedule); one-cycle peak %.3g (a tenth of the LR at the lowest loss, %.3g); optimizer.lr is now %.3g",
                 len(lrs), lrs[0], lrs[-1], suggestion, peak, peak * ONE_CYCLE_BELOW_MINIMUM, cfg.optimizer.lr)
        log.info("try: python train.py optimizer.lr=%.2g   (scheduler=onecycle, the default, peaks there)", peak)
        log.info("plot: %s", output_dir / "lr_find.png")
    return result
