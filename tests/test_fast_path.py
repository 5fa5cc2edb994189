"""The fast data path: batched augmentation on the device, and the same results as the classic DataLoader."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import compose_config, run_script
from mlplab.data.augment import BatchAugment
from mlplab.data.datamodule import MNISTDataModule
from mlplab.pipeline import build_datamodule, build_module, build_trainer


def test_augmentation_keeps_shape_dtype_and_device_and_changes_images():
    images = torch.randn(16, 1, 28, 28)
    out = BatchAugment(translate=0.1, degrees=10, scale=0.1)(images, fill=-0.42)
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
    assert not torch.allclose(out, images)


def test_zero_strength_augmentation_is_the_identity():
    images = torch.randn(4, 1, 28, 28)
    assert torch.allclose(BatchAugment(translate=0, degrees=0, scale=0)(images), images, atol=1e-5)


def test_augmentation_fills_uncovered_pixels_with_the_background_value():
    torch.manual_seed(0)
    images = torch.full((8, 1, 28, 28), 5.0)
    shifted = BatchAugment(translate=0.3, degrees=0, scale=0)(images, fill=-0.42)
    assert shifted.min() >= -0.42 - 1e-5 and shifted.max() <= 5.0 + 1e-5  # the image, the fill, and edges between
    is_fill = torch.isclose(shifted, torch.tensor(-0.42))
    assert is_fill.any() and torch.isclose(shifted, torch.tensor(5.0)).any()  # what came from outside is background
    assert not torch.isclose(shifted, torch.tensor(0.0)).any()  # not zeros, which would be grey after normalization


def test_augmentation_applies_to_training_batches_only(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), val_size=100, augment={"enabled": True, "translate": 0.2})
    batch = (torch.randn(8, 1, 28, 28), torch.arange(8))
    dm.trainer = SimpleNamespace(training=True)
    assert not torch.allclose(dm.on_after_batch_transfer(batch, 0)[0], batch[0])
    dm.trainer = SimpleNamespace(training=False)  # validating or testing
    assert dm.on_after_batch_transfer(batch, 0)[0] is batch[0]


def test_augmentation_disabled_by_config(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), augment={"enabled": False, "translate": 0.2})
    assert dm.augment is None


def test_negative_augmentation_strength_is_refused():
    with pytest.raises(ValueError, match=r"data.augment.degrees=-5 must be a number of degrees in \[0, 180\]"):
        BatchAugment(degrees=-5)


def fit_and_test(data_dir, tmp_path, loader: str) -> float:
    cfg = compose_config("train", ["debug=fast", f"data.data_dir={data_dir}", f"data.loader={loader}", "data.batch_size=50",
                                   "data.augment.enabled=false", "trainer.max_epochs=4"], tmp_path / loader)
    torch.manual_seed(0)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule)
    return trainer.test(module, datamodule=datamodule, verbose=False)[0]["test/acc"]


def test_tensor_and_torchvision_paths_reach_the_same_accuracy(data_dir, tmp_path):
    fast, classic = fit_and_test(data_dir, tmp_path, "tensor"), fit_and_test(data_dir, tmp_path, "torchvision")
    assert fast > 0.65 and classic > 0.65  # chance is 0.1; measured 0.74 and 0.75 (3 standard errors of margin)
    # Same data, model and number of steps; only the batch order's randomness differs (200 test images:
    # one standard error of an accuracy near 0.75 is 0.03).
    assert abs(fast - classic) <= 0.08


def test_speed_benchmark_times_every_path_in_turns_and_prints_the_ratios(data_dir, tmp_path):
    result = run_script(
        "bench/speed.py", "--epochs=2", "--val-size=100", "--paths=a,b_fused,c32", f"--out={tmp_path}", data_dir=data_dir
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| (")]
    assert [row.split(")")[0] for row in rows] == ["| (a", "| (b'", "| (c32"]
    assert "2 epochs of 500 samples" in result.stdout  # every path trained on the same 500-image split
    assert "(c32)/(a) time per epoch" in result.stdout and "(c32)/(b') time per epoch" in result.stdout
    assert result.stderr.count("epoch 2/2:") == 1  # the paths took turns: one line per round

