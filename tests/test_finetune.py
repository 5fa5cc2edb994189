"""`python finetune.py pretrained=<checkpoint> ...`: rebuild the pretrained MLP, replace its head when the labels
change, freeze and unfreeze layers, scale their learning rate, few-label subsets, and one-line errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import compose_config, refusal, run_script
from mlplab.checkpoint_reader import load_pretrained
from mlplab.data.datamodule import MNISTDataModule, load_split
from mlplab.errors import ConfigError, UserError
from mlplab.finetune import finetune, hidden_layers, layer_freezing, pretrained_module
from mlplab.models import MLP
from mlplab.pipeline import build_datamodule, train

SMALL = ["debug=fast", "data.batch_size=64", "trainer.accelerator=cpu"]  # 8 steps an epoch on the 500 training images


@pytest.fixture(scope="module")
def pretrained_ckpt(data_dir, tmp_path_factory) -> Path:
    """last.ckpt of a small MLP (784-32-16-10) trained for one epoch on the synthetic digits, as train.py writes it."""
    run_dir = tmp_path_factory.mktemp("pretrain")
    overrides = [*SMALL, f"data.data_dir={data_dir}", "model.hidden_dims=[32,16]", "trainer.max_epochs=1"]
    train(compose_config("train", overrides, output_dir=run_dir))
    return run_dir / "checkpoints" / "last.ckpt"


class StepProbe(L.Callback):
    """Records, before every optimizer step: the epoch, which parameters have gradients, each group's LR."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        with_grad = {name for name, p in pl_module.net.named_parameters() if p.grad is not None}
        lrs = {group.get("name", "all"): group["lr"] for group in optimizer.param_groups}
        self.steps.append({"epoch": trainer.current_epoch, "with_grad": with_grad, "lrs": lrs})


def fit_briefly(module, datamodule, callbacks: list, max_epochs: int = 1) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=max_epochs, limit_train_batches=3, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )
    trainer.fit(module, datamodule=datamodule)
    return trainer


def finetuning_setup(data_dir: Path, pretrained_ckpt: Path, overrides: list[str]):
    cfg = compose_config("finetune", [*SMALL, f"data.data_dir={data_dir}", f"pretrained={pretrained_ckpt}", *overrides])
    pretrained = load_pretrained(cfg.pretrained)
    datamodule = build_datamodule(cfg)
    module, reset_head = pretrained_module(cfg, datamodule, pretrained)
    return cfg, pretrained, datamodule, module, reset_head


# --- the config ------------------------------------------------------------------------------------------------


def test_finetune_config_is_training_without_a_model_and_with_trainings_recipe(data_dir):
    cfg = compose_config("finetune", [*SMALL, f"data.data_dir={data_dir}"])
    assert cfg.model is None and cfg.task_name == "finetune" and cfg.pretrained is None
    assert cfg.optimizer.lr == compose_config("train").optimizer.lr  # measured: a lower LR loses to training from scratch
    assert dict(cfg.finetune) == {"freeze": "none", "unfreeze_at_epoch": None, "backbone_lr_scale": 1.0, "reset_head": "auto"}


# --- rebuilding the network and its head ---------------------------------------------------------------------


def test_same_labels_keep_the_pretrained_head(data_dir, pretrained_ckpt):
    _, pretrained, _, module, reset_head = finetuning_setup(data_dir, pretrained_ckpt, [])
    assert not reset_head and module.hparams.net["hidden_dims"] == [32, 16]  # the architecture came from the checkpoint
    for key, value in module.net.state_dict().items():
        assert torch.equal(value, pretrained.weights[key]), key


def test_new_labels_get_a_new_head_on_the_pretrained_backbone(data_dir, pretrained_ckpt):
    _, pretrained, _, module, reset_head = finetuning_setup(data_dir, pretrained_ckpt, ["data.classes=[0,1,2]"])
    assert reset_head and module.net.head.out_features == 3 and module.hparams.net["num_classes"] == 3
    assert not torch.equal(module.net.head.weight, pretrained.weights["head.weight"][:3])
    for key, value in module.net.backbone.state_dict().items():
        assert torch.equal(value, pretrained.weights[f"backbone.{key}"]), key


def test_reset_head_can_be_forced_and_refused(data_dir, pretrained_ckpt):
    _, pretrained, _, module, reset_head = finetuning_setup(data_dir, pretrained_ckpt, ["finetune.reset_head=true"])
    assert reset_head and not torch.equal(module.net.head.weight, pretrained.weights["head.weight"])
    with pytest.raises(ConfigError, match="pretrained head has 10 classes and the data 2"):
        finetuning_setup(data_dir, pretrained_ckpt, ["finetune.reset_head=false", "data.classes=[4,5]"])


def test_a_plain_state_dict_is_rebuilt_from_its_shapes(pretrained_ckpt, tmp_path):
    checkpoint = load_pretrained(pretrained_ckpt)
    torch.save(checkpoint.weights, tmp_path / "mlp.pt")  # torch.save(module.net.state_dict(), "mlp.pt")
    pretrained = load_pretrained(tmp_path / "mlp.pt")
    assert pretrained.net["hidden_dims"] == [32, 16] and (pretrained.net["in_features"], pretrained.net["num_classes"]) == (784, 10)
    assert pretrained.weights.keys() == checkpoint.weights.keys()


# --- freezing, unfreezing, learning rates --------------------------------------------------------------------


def layer_state_names(net: MLP) -> list[set[str]]:
    """state_dict names of each hidden layer: its Linear and what follows it (batch norm weights and statistics)."""
    module_names = {id(module): name for name, module in net.named_modules()}
    return [{f"{module_names[id(module)]}.{key}" for module in layer for key in module.state_dict()}
            for layer in hidden_layers(net.backbone)]


@pytest.mark.parametrize(("freeze", "frozen", "trained"), [("backbone", [0, 1], []), (1, [0], [1])])
def test_frozen_layers_get_no_gradients_and_keep_their_weights(data_dir, pretrained_ckpt, freeze, frozen, trained):
    cfg, pretrained, datamodule, module, _ = finetuning_setup(data_dir, pretrained_ckpt, [f"finetune.freeze={freeze}"])
    probe = StepProbe()
    trainer = fit_briefly(module, datamodule, [layer_freezing(cfg.finetune, module.net, 1), probe])
    with_grad = set.union(*(step["with_grad"] for step in probe.steps))
    layers = layer_state_names(module.net)
    assert any("running_mean" in name for name in layers[0])  # the network has batch norm: its statistics count too
    state = module.net.state_dict()
    for name in set().union(*(layers[i] for i in frozen)):
        assert name not in with_grad and torch.equal(state[name], pretrained.weights[name]), name
    for name in [n for i in trained for n in layers[i] if n.endswith("weight")] + ["head.weight"]:
        assert name in with_grad and not torch.equal(state[name], pretrained.weights[name]), name
    frozen_params = {id(p) for name, p in module.net.named_parameters() if any(name in layers[i] for i in frozen)}
    assert frozen_params and not frozen_params & {id(p) for p in trainer.optimizers[0].state}  # no optimizer state either


def test_frozen_backbone_trains_from_the_unfreeze_epoch_at_its_scaled_lr(data_dir, pretrained_ckpt):
    overrides = ["finetune.freeze=backbone", "finetune.unfreeze_at_epoch=1", "finetune.backbone_lr_scale=0.1"]
    cfg, _, datamodule, module, _ = finetuning_setup(data_dir, pretrained_ckpt, overrides)
    probe = StepProbe()
    fit_briefly(module, datamodule, [layer_freezing(cfg.finetune, module.net, 2), probe], max_epochs=2)
    backbone_trains = {step["epoch"]: any(n.startswith("backbone.") for n in step["with_grad"]) for step in probe.steps}
    assert backbone_trains == {0: False, 1: True}
    for step in probe.steps:  # the one-cycle schedule drives both groups, the backbone at a tenth of the head's LR
        assert step["lrs"]["backbone"] == pytest.approx(0.1 * step["lrs"]["head"])
    assert len({step["lrs"]["head"] for step in probe.steps}) > 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["finetune.freeze=3"], "finetune.freeze=3 must be at most the 2 hidden layers of the pretrained network"),
        (["finetune.unfreeze_at_epoch=1"], "needs frozen layers"),
        (["finetune.freeze=1", "finetune.unfreeze_at_epoch=5", "trainer.max_epochs=5"], "must be a whole epoch >= 1 and < trainer.max_epochs=5"),
    ],
)
def test_bad_freeze_settings_are_one_line_errors(data_dir, pretrained_ckpt, overrides, message):
    cfg, _, _, module, _ = finetuning_setup(data_dir, pretrained_ckpt, overrides)
    with pytest.raises(ConfigError, match=message):
        layer_freezing(cfg.finetune, module.net, cfg.trainer.max_epochs)


def test_a_freeze_setting_of_no_kind_is_refused_by_the_command(data_dir, pretrained_ckpt, tmp_path, caplog, capsys):
    assert refusal("finetune.py", [*SMALL, f"pretrained={pretrained_ckpt}", f"data.data_dir={data_dir}", "finetune.freeze=all"],
                   tmp_path, caplog, capsys) == "finetune.freeze='all' must be none, backbone or a number of hidden layers"


# --- unusable pretrained files ---------------------------------------------------------------------------------


def write_bad_files(folder: Path, good: Path) -> dict[str, Path]:
    checkpoint = torch.load(good, weights_only=True)
    files = {"missing": folder / "nope.ckpt", "text": folder / "notes.txt", "truncated": folder / "cut.ckpt",
             "tensor": folder / "tensor.pt", "objects": folder / "objects.pt", "other_target": folder / "resnet.ckpt",
             "other_state_dict": folder / "cnn.pt", "other_widths": folder / "widths.ckpt", "folder": folder}
    files["text"].write_text("not weights")
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save(torch.zeros(3), files["tensor"])
    torch.save(MLP(784, 10, hidden_dims=[8]), files["objects"])  # the whole model, not its weights
    other = checkpoint | {"hyper_parameters": {"net": {"_target_": "torchvision.models.resnet18"}}}
    torch.save(other, files["other_target"])
    torch.save({"conv1.weight": torch.zeros(8, 1, 3, 3)}, files["other_state_dict"])
    widths = checkpoint["hyper_parameters"]["net"] | {"hidden_dims": [64, 16]}
    torch.save(checkpoint | {"hyper_parameters": checkpoint["hyper_parameters"] | {"net": widths}}, files["other_widths"])
    return files


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no such file"),
        ("folder", "is a folder"),
        ("text", "is not a PyTorch checkpoint"),
        ("truncated", "is a damaged checkpoint"),
        ("tensor", "is not a checkpoint: it holds a Tensor"),
        ("objects", "holds Python objects besides tensors"),
        ("other_target", "holds a torchvision.models.resnet18 network"),
        ("other_state_dict", "state dict of another network"),
        ("other_widths", "do not fit the MLP its hyperparameters describe"),
    ],
)
def test_unusable_pretrained_files_are_one_line_errors(pretrained_ckpt, tmp_path, case, message):
    path = write_bad_files(tmp_path, pretrained_ckpt)[case]
    with pytest.raises(UserError, match=message) as error:
        load_pretrained(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_input_size_mismatch_is_one_line_error(data_dir, tmp_path):
    torch.save(MLP(in_features=100, num_classes=10, hidden_dims=[8]).state_dict(), tmp_path / "small.pt")
    cfg = compose_config("finetune", [*SMALL, f"data.data_dir={data_dir}", f"pretrained={tmp_path / 'small.pt'}"])
    with pytest.raises(ConfigError, match="takes 100 input values per image, but data=mnist has 784 \\(1x28x28\\)"):
        pretrained_module(cfg, build_datamodule(cfg), load_pretrained(cfg.pretrained))


# --- few labels: data.samples_per_class, data.train_fraction, data.classes -----------------------------------------


def datamodule(data_dir: Path, **kwargs) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=str(data_dir), **({"val_size": 100} | kwargs))
    dm.setup("fit")
    return dm


def test_samples_per_class_is_a_stratified_seeded_subset_of_the_training_split(data_dir):
    full, few = datamodule(data_dir), datamodule(data_dir, samples_per_class=5)
    assert Counter(few.train_set[1].tolist()) == {label: 5 for label in range(10)}
    as_rows = lambda images: {tuple(row.tolist()) for row in images.flatten(1)}  # noqa: E731
    assert as_rows(few.train_set[0]) <= as_rows(full.train_set[0])  # never a validation image
    assert torch.equal(few.val_set[0], full.val_set[0]) and torch.equal(few.test_set[1], full.test_set[1])
    assert torch.equal(few.train_set[0], datamodule(data_dir, samples_per_class=5).train_set[0])
    assert not torch.equal(few.train_set[0], datamodule(data_dir, samples_per_class=5, split_seed=1).train_set[0])


def test_train_fraction_keeps_that_share_of_every_class(data_dir):
    full, half = datamodule(data_dir), datamodule(data_dir, train_fraction=0.5)
    full_counts, half_counts = Counter(full.train_set[1].tolist()), Counter(half.train_set[1].tolist())
    assert half_counts == {label: round(count * 0.5) for label, count in full_counts.items()}


@pytest.mark.parametrize("loader", ["tensor", "torchvision"])
def test_classes_restrict_every_split_and_renumber_the_labels(data_dir, loader):
    dm = datamodule(data_dir, classes=[7, 3, 5], loader=loader)
    assert dm.num_classes == 3
    images, labels = load_split(data_dir, "mnist", train=False)
    kept = torch.isin(labels, torch.tensor([7, 3, 5]))
    if loader == "tensor":
        test_images, test_labels = dm.test_set
        assert torch.allclose(test_images, dm._normalize(images[kept]))
        splits = (dm.train_set[1], dm.val_set[1], test_labels)
    else:
        test_labels = torch.tensor([label for _, label in dm.test_set])
        splits = (test_labels,)
    assert torch.equal(test_labels, torch.tensor([{7: 0, 3: 1, 5: 2}[int(y)] for y in labels[kept]]))
    for split_labels in splits:
        assert set(split_labels.tolist()) == {0, 1, 2}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": [3]}, "at least two distinct labels from 0 to 9"),
        ({"classes": [3, 3]}, "at least two distinct labels"),
        ({"classes": [0, 10]}, "at least two distinct labels"),
        ({"samples_per_class": 0}, "data.samples_per_class=0 must be an integer >= 1"),
        ({"samples_per_class": 1000}, "but label 0 has only"),
        ({"train_fraction": 1.5}, "must be a number in \\(0, 1\\]"),
        ({"train_fraction": 0.5, "samples_per_class": 5}, "not both"),
    ],
)
def test_bad_subsets_are_one_line_errors(data_dir, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        datamodule(data_dir, **kwargs)


# --- finetune.py, as a user runs it ------------------------------------------------------------------------------


def test_finetune_py_writes_a_train_py_run_dir_plus_the_pretrained_accuracy(data_dir, pretrained_ckpt, tmp_path):
    result = run_script(
        "finetune.py", f"pretrained={pretrained_ckpt}", "data.classes=[0,1,2]", "finetune.freeze=backbone",
        "finetune.unfreeze_at_epoch=1", "finetune.backbone_lr_scale=0.1", "trainer.max_epochs=2",
        *SMALL, "logger=tensorboard", f"hydra.run.dir={tmp_path}", data_dir=data_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "pretrained model before fine-tuning: test/acc" in output and "chance level" in output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["pretrained"] == str(pretrained_ckpt) and metrics["head_reset"] is True
    assert metrics["epochs"] == 2 and metrics["pretrained_test_acc"] < metrics["test/acc"]  # a new head learned the labels
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    finetuned = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert finetuned["hyper_parameters"]["net"]["num_classes"] == 3  # and it can be fine-tuned in turn
    assert finetuned["hyper_parameters"]["backbone_lr_scale"] == 0.1


def test_finetune_without_pretrained_says_it_is_required(data_dir, tmp_path, caplog, capsys):
    refused = refusal("finetune.py", [*SMALL, f"data.data_dir={data_dir}"], tmp_path, caplog, capsys)
    assert refused == "pretrained=null must be a checkpoint written by train.py (required), e.g. pretrained=<run>/checkpoints/last.ckpt"


def test_resumed_finetuning_ends_exactly_like_the_run_left_alone(data_dir, pretrained_ckpt, tmp_path):
    """Stopped after epoch 1 of 3 (backbone frozen until epoch 2), then resumed from last.ckpt: same end."""
    overrides = [f"pretrained={pretrained_ckpt}", "trainer.max_epochs=3", "finetune.freeze=backbone",
                 "finetune.unfreeze_at_epoch=2", "finetune.backbone_lr_scale=0.1", "scheduler=none", "logger=csv"]

    def run(name: str, *extra: str) -> Path:
        finetune(compose_config("finetune", [*SMALL, f"data.data_dir={data_dir}", *overrides, *extra], tmp_path / name))
        return tmp_path / name

    alone = run("alone")
    stopped = run("stopped", "+trainer.max_steps=16")  # 8 steps an epoch: stops after epoch 1, before the unfreeze
    assert torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    resumed = run("resumed", f"ckpt_path={stopped / 'checkpoints' / 'last.ckpt'}")
    metrics = [json.loads((run_dir / "metrics.json").read_text()) for run_dir in (alone, resumed)]
    for key in ("val/acc", "val/loss", "test/acc", "test/loss", "epochs"):
        assert metrics[0][key] == metrics[1][key], key
    weights = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for d in (alone, resumed)]
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
