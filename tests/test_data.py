"""Data: validation carved from the training set, test = the official test split, clear errors, fast loader."""

from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from mlplab.data.datamodule import MNISTDataModule, TensorLoader, load_split, sampler_order


def make_datamodule(data_dir: Path, **kwargs) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=str(data_dir), **({"val_size": 100} | kwargs))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_validation_is_carved_from_training_set_without_overlap(data_dir):
    dm = make_datamodule(data_dir)
    train_images, _ = dm.train_set
    val_images, _ = dm.val_set
    assert len(train_images) == 500 and len(val_images) == 100
    # every train and val image is one of the 600 official training images, none in both
    official, _ = load_split(data_dir, "mnist", train=True)
    official = dm._normalize(official)
    as_rows = lambda t: {tuple(r.tolist()) for r in t.flatten(1)}  # noqa: E731
    train_rows, val_rows, official_rows = as_rows(train_images), as_rows(val_images), as_rows(official)
    assert not train_rows & val_rows
    assert train_rows | val_rows == official_rows


def test_split_is_seeded(data_dir):
    a, b = make_datamodule(data_dir), make_datamodule(data_dir)
    c = make_datamodule(data_dir, split_seed=1)
    assert torch.equal(a.val_set[0], b.val_set[0])
    assert not torch.equal(a.val_set[0], c.val_set[0])


def test_test_split_is_the_official_test_set(data_dir):
    dm = make_datamodule(data_dir)
    official_images, official_labels = load_split(data_dir, "mnist", train=False)
    images, labels = dm.test_set
    assert torch.equal(labels, official_labels)
    assert torch.allclose(images, dm._normalize(official_images))


def test_images_are_normalized_with_dataset_constants(data_dir):
    dm = make_datamodule(data_dir, dataset="fashion_mnist")
    raw, _ = load_split(data_dir, "fashion_mnist", train=False)
    expected = (raw[0].float() / 255 - 0.2860) / 0.3530
    assert torch.allclose(dm.test_set[0][0, 0], expected)


def test_val_size_must_leave_training_data(data_dir):
    with pytest.raises(ValueError, match=r"data.val_size=600 must be smaller than the 600 training images"):
        make_datamodule(data_dir, val_size=600)


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="data.dataset='cifar10' must be one of mnist, fashion_mnist, kmnist"):
        MNISTDataModule(dataset="cifar10")


def epoch_order(loader: TensorLoader, epoch: int) -> torch.Tensor:
    loader.sampler.set_epoch(epoch)
    return torch.cat([labels for _, labels in loader])


def test_tensor_loader_yields_every_sample_once_per_epoch_in_a_new_seeded_order():
    ids = torch.arange(1000)
    make = lambda seed: TensorLoader(ids.float(), ids, 64, DistributedSampler(ids, 1, 0, shuffle=True, seed=seed))  # noqa: E731
    loader = make(seed=7)
    first, second = epoch_order(loader, 0), epoch_order(loader, 1)
    assert len(loader) == 16
    assert sorted(first.tolist()) == list(range(1000)) == sorted(second.tolist())
    assert not torch.equal(first, second)  # reshuffled each epoch
    assert torch.equal(first, epoch_order(make(seed=7), 0))  # reproducible from seed and epoch
    assert not torch.equal(first, epoch_order(make(seed=8), 0))


def test_ddp_shards_are_disjoint_and_cover_the_training_set():
    ids = torch.arange(1000)
    shards = [
        epoch_order(TensorLoader(ids.float(), ids, 50, DistributedSampler(ids, 2, rank, shuffle=True, seed=3)), 4)
        for rank in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 500  # equal batch counts: no rank waits on another
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    assert set(shards[0].tolist()) | set(shards[1].tolist()) == set(range(1000))


@pytest.mark.parametrize("size, world, shuffle, drop_last", [(1000, 1, True, False), (1001, 4, True, False),
                                                           (1001, 4, True, True), (10, 3, False, False), (3, 8, True, False)])
def test_tensor_order_is_exactly_the_distributed_samplers(size, world, shuffle, drop_last):
    ids = torch.arange(size)
    for rank in range(world):
        sampler = DistributedSampler(ids, world, rank, shuffle=shuffle, seed=5, drop_last=drop_last)
        sampler.set_epoch(2)
        assert sampler_order(sampler).tolist() == list(sampler)


def test_eval_loader_keeps_order_and_covers_everything():
    ids = torch.arange(2500)
    batches = list(TensorLoader(ids.float(), ids, 1000))
    assert [len(y) for _, y in batches] == [1000, 1000, 500]
    assert torch.equal(torch.cat([y for _, y in batches]), ids)
