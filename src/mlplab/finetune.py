"""Fine-tuning: start from pretrained weights instead of random ones, on new data, new labels or few labels.

The network is rebuilt from the pretrained file (``mlplab.checkpoint_reader``) and gets a new, randomly initialized
head when the label set changes. ``LayerFreezing`` (Lightning's ``BaseFinetuning``) keeps chosen hidden layers
fixed, optionally until an epoch; ``backbone_lr_scale`` gives the pretrained layers a lower learning rate than
the head (a param group of their own). The end of the run is train.py's (``pipeline.fit_and_report``), plus the
pretrained model's test accuracy on the new data before fine-tuning, so the gain is visible.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from omegaconf import DictConfig
from torch import nn
from torch.optim import Optimizer

from mlplab.checkpoint_reader import PretrainedNet, load_pretrained, refuse_misfit, report_origin
from mlplab.classifier import ClassifierModule
from mlplab.data.datamodule import MNISTDataModule
from mlplab.errors import ConfigError
from mlplab.pipeline import build_datamodule, build_module, build_trainer, compile_network, fit_and_report, start_run
from mlplab.rules import problem
from mlplab.run_record import note_data, warn_if_data_changed

log = logging.getLogger(__name__)


def hidden_layers(backbone: nn.Sequential) -> list[list[nn.Module]]:
    """The backbone as hidden layers, each a Linear with what follows it (batch norm, activation, dropout)."""
    layers: list[list[nn.Module]] = []
    for module in backbone:
        if isinstance(module, nn.Linear):
            layers.append([])
        if layers:
            layers[-1].append(module)
    return layers


def frozen_layer_count(freeze: Any, available: int) -> int:
    """``finetune.freeze`` as a number of leading hidden layers: none -> 0, backbone -> all of them."""
    if freeze in (None, "none"):
        return 0
    if freeze == "backbone":
        return available
    if freeze > available:
        raise ConfigError(problem("finetune.freeze", freeze, f"at most the {available} hidden layers of the pretrained network"))
    return freeze


class LayerFreezing(BaseFinetuning):
    """Freeze the first ``num_layers`` hidden layers of ``pl_module.net.backbone`` (batch norm statistics
    included) before training; with ``unfreeze_at_epoch``, train them again from that epoch (counted from 0).

    Unlike Lightning's ``BackboneFinetuning``, unfreezing adds no param group: the frozen parameters are in the
    optimizer from the start (torch optimizers skip a parameter without gradient), so schedules that set every
    group's LR (one-cycle, cosine) drive them too, at the backbone group's ``backbone_lr_scale``.
    """

    def __init__(self, num_layers: int, unfreeze_at_epoch: int | None = None) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.unfreeze_at_epoch = unfreeze_at_epoch

    def frozen_modules(self, pl_module: L.LightningModule) -> list[nn.Module]:
        return [module for layer in hidden_layers(pl_module.net.backbone)[: self.num_layers] for module in layer]

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self.freeze(self.frozen_modules(pl_module), train_bn=False)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if epoch == self.unfreeze_at_epoch:
            self.make_trainable(self.frozen_modules(pl_module))
            log.info("epoch %d: the first %d hidden layers train from now on", epoch, self.num_layers)


def layer_freezing(settings: DictConfig, net: nn.Module, max_epochs: int | None) -> LayerFreezing | None:
    """The freezing callback ``finetune.freeze`` and ``finetune.unfreeze_at_epoch`` ask for, if any."""
    num_layers = frozen_layer_count(settings.freeze, len(hidden_layers(net.backbone)))
    unfreeze = settings.unfreeze_at_epoch
    if unfreeze is not None:
        if num_layers == 0:
            raise ConfigError(f"finetune.unfreeze_at_epoch={unfreeze} needs frozen layers: finetune.freeze=backbone or a number")
        last_epoch = max_epochs - 1 if max_epochs and max_epochs > 0 else float("inf")  # -1 / null: no limit
        if unfreeze > last_epoch:
            raise ConfigError(f"finetune.unfreeze_at_epoch={unfreeze} must be a whole epoch >= 1 and < "
                              f"trainer.max_epochs={max_epochs} (epochs count from 0)")
    return LayerFreezing(num_layers, unfreeze) if num_layers else None


def head_is_reset(reset_head: Any, pretrained_classes: int, data_classes: int) -> bool:
    """``finetune.reset_head``: auto replaces the head exactly when the number of classes differs."""
    if reset_head is False and pretrained_classes != data_classes:
        raise ConfigError(f"finetune.reset_head=false, but the pretrained head has {pretrained_classes} classes and the "
                          f"data {data_classes}; use auto or true")
    return reset_head is True or pretrained_classes != data_classes


def pretrained_module(
    cfg: DictConfig, datamodule: MNISTDataModule, pretrained: PretrainedNet
) -> tuple[ClassifierModule, bool]:
    """The ClassifierModule of the pretrained network, fitted to the data's classes. Returns it and whether
    its head is new (randomly initialized) rather than pretrained."""
    in_features = datamodule.in_features
    if pretrained.net["in_features"] != in_features:
        shape = "x".join(map(str, datamodule.input_shape))
        raise ConfigError(f"pretrained={pretrained.path} takes {pretrained.net['in_features']} input values per image, but "
                          f"data={datamodule.name} has {in_features} ({shape})")
    reset_head = head_is_reset(cfg.finetune.reset_head, pretrained.net["num_classes"], datamodule.num_classes)
    module = build_module(cfg, datamodule, net=pretrained.net, backbone_lr_scale=cfg.finetune.backbone_lr_scale)
    weights = pretrained.weights
    if reset_head:
        weights = {key: value for key, value in weights.items() if not key.startswith("head.")}
    module.net.load_state_dict(weights, strict=not reset_head)  # load_pretrained checked that everything fits
    return module, reset_head


def finetune(cfg: DictConfig) -> float:
    """Fine-tune ``cfg.pretrained`` on ``cfg.data``; returns the best checkpoint's monitored metric (like train)."""
    pretrained = load_pretrained(cfg.get("pretrained"))
    origin = report_origin(pretrained.path, cfg.output_dir, key="pretrained")
    start_run(cfg)
    datamodule = build_datamodule(cfg)
    warn_if_data_changed(origin, note_data(datamodule, cfg.output_dir))
    module, reset_head = pretrained_module(cfg, datamodule, pretrained)
    if cfg.get("ckpt_path"):
        refuse_misfit(cfg.ckpt_path, module.hparams.net, dict(datamodule.hparams))
    freezing = layer_freezing(cfg.finetune, module.net, cfg.trainer.max_epochs)
    trainer = build_trainer(cfg, extra_callbacks=[freezing] if freezing else [])
    compile_network(cfg, module)

    before = trainer.test(module, datamodule=datamodule, verbose=False)[0]["test/acc"]
    chance = f" (an untrained new head: around chance level, 1/{datamodule.num_classes}, by luck of its draw)" if reset_head else ""
    log.info("pretrained model before fine-tuning: test/acc %.4f%s", before, chance)
    return fit_and_report(
        cfg, trainer, module, datamodule,
        extra_metrics={"pretrained": str(pretrained.path), "pretrained_test_acc": before, "head_reset": reset_head},
    )
