"""MNIST-family data: decoded once, split once, served as batches of tensors on the training device.

The classic recipe (PIL image -> ToTensor -> Normalize per sample, every epoch) spends most of an MNIST
epoch in Python. Here each split is one normalized float tensor moved to the training device once, and
a batch is one index gather. The torchvision ``DataLoader`` path stays available (``loader: torchvision``)
for users who want per-sample transforms.

Validation is carved from the official *training* set by a seeded split (or, with ``num_folds``, is one
fold of a stratified k-fold partition of it); ``test`` is always the official test set, used once at the end.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset
from torchvision import datasets, transforms

from mlplab.augment import BatchAugment
from mlplab.errors import ConfigError, DataError
from mlplab.idx import check_split


@dataclass(frozen=True)
class DatasetInfo:
    """What the pipeline needs to know about a dataset before reading it."""

    torchvision_class: type[datasets.MNIST]
    mean: float
    std: float
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int] = (1, 28, 28)


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(datasets.MNIST, 0.1307, 0.3081, tuple(str(d) for d in range(10))),
    "fashion_mnist": DatasetInfo(
        datasets.FashionMNIST,
        0.2860,
        0.3530,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "kmnist": DatasetInfo(
        datasets.KMNIST, 0.1918, 0.3483, ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
    ),
}

LOADERS = ("tensor", "torchvision")


def expected_files(dataset: str) -> list[str]:
    """Uncompressed IDX file names torchvision expects under ``<root>/<Class>/raw``."""
    return [Path(url).stem for url, _ in DATASETS[dataset].torchvision_class.resources]


def raw_folder(data_dir: str | Path, dataset: str) -> Path:
    return Path(data_dir) / DATASETS[dataset].torchvision_class.__name__ / "raw"


def load_split(data_dir: str | Path, dataset: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one official split into ``(uint8 images [N, 28, 28], int64 labels [N])``."""
    missing = [name for name in expected_files(dataset) if not (raw_folder(data_dir, dataset) / name).is_file()]
    if missing:
        raise DataError(missing_data_message(data_dir, dataset, missing))
    prefix, info = ("train" if train else "t10k"), DATASETS[dataset]
    folder = raw_folder(data_dir, dataset)
    check_split(folder / f"{prefix}-images-idx3-ubyte", folder / f"{prefix}-labels-idx1-ubyte", info.image_shape[1:], len(info.class_names))
    ds = info.torchvision_class(str(data_dir), train=train, download=False)
    return ds.data, ds.targets


def missing_data_message(data_dir: str | Path, dataset: str, missing: Sequence[str], reason: str = "") -> str:
    expected = expected_files(dataset)
    what = "all four IDX files" if len(missing) == len(expected) else ", ".join(missing)
    return (
        f"{dataset} data not found in {raw_folder(data_dir, dataset)}: missing {what} "
        f"({', '.join(expected)}, uncompressed){f'; {reason}' if reason else ''}. "
        f"Put them there, or point DATA_DIR (or data.data_dir) at a folder holding "
        f"{DATASETS[dataset].torchvision_class.__name__}/raw."
    )


def split_train_val(num_samples: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of the official training set into (train indices, validation indices)."""
    if not 0 < val_size < num_samples:
        raise ConfigError(f"data.val_size={val_size} must be between 1 and {num_samples - 1} (training set size - 1)")
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


def check_folds(num_folds: int | None, fold: int | None) -> None:
    """Refuse a fold setting that cannot name one validation fold, before any data is read."""
    if num_folds is None:
        if fold is not None:
            raise ConfigError(f"data.fold={fold} needs data.num_folds (the number of folds, >= 2)")
        return
    if num_folds < 2:
        raise ConfigError(f"data.num_folds={num_folds} must be >= 2 (or null: one hold-out split of data.val_size)")
    if fold is None or not 0 <= fold < num_folds:
        raise ConfigError(
            f"data.fold={fold} must be one of 0..{num_folds - 1} with data.num_folds={num_folds} "
            f"(all of them: -m 'data.fold=range({num_folds})')"
        )


def split_folds(labels: torch.Tensor, num_folds: int, fold: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices) for one fold of a stratified, seeded k-fold partition.

    Images are shuffled (seeded), grouped by class keeping that order, and dealt to folds in turn: every fold
    gets each class's share to within one image, and fold sizes differ by at most one. The same seed gives
    the same partition for every ``fold``, so the k jobs of a cross-validation validate on disjoint folds.
    """
    if num_folds > len(labels):
        raise ConfigError(f"data.num_folds={num_folds} is more than the {len(labels)} training images")
    shuffled = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    by_class = shuffled[torch.sort(labels[shuffled], stable=True).indices]
    fold_of = torch.empty(len(labels), dtype=torch.long)
    fold_of[by_class] = torch.arange(len(labels)) % num_folds
    return (fold_of != fold).nonzero().squeeze(1), (fold_of == fold).nonzero().squeeze(1)


def class_names(dataset: str, classes: Sequence[int] | None = None) -> tuple[str, ...]:
    """Names of the labels a model predicts, in label order: with ``data.classes``, the kept ones remapped to 0..n-1."""
    names = DATASETS[dataset].class_names
    return names if classes is None else tuple(names[c] for c in classes)


def class_label_map(classes: Sequence[int] | None, num_labels: int) -> torch.Tensor | None:
    """``data.classes`` as a lookup table: dataset label -> new label 0..n-1, or -1 for a label left out."""
    if classes is None:
        return None
    classes = list(classes)
    valid = all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < num_labels for c in classes)
    if len(classes) < 2 or len(set(classes)) != len(classes) or not valid:
        raise ConfigError(f"data.classes={classes} must be at least two distinct labels from 0 to {num_labels - 1}")
    table = torch.full((num_labels,), -1, dtype=torch.long)
    table[torch.tensor(classes)] = torch.arange(len(classes))
    return table


def stratified_subset(labels: torch.Tensor, samples_per_class: int | None, fraction: float | None, seed: int) -> torch.Tensor:
    """Positions of a seeded subset holding ``samples_per_class`` images of every class, or ``fraction`` of each."""
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for label in labels.unique().tolist():
        positions = (labels == label).nonzero().flatten()
        count = samples_per_class if samples_per_class is not None else max(1, round(len(positions) * fraction))
        if count > len(positions):
            raise ConfigError(
                f"data.samples_per_class={count} but label {label} has only {len(positions)} training images "
                "(after the validation split); use fewer, or a smaller data.val_size"
            )
        keep.append(positions[torch.randperm(len(positions), generator=generator)[:count]])
    return torch.cat(keep).sort().values


def sampler_order(sampler: DistributedSampler) -> torch.Tensor:
    """``list(sampler)`` as one tensor: the same permutation, padding and shard, without a Python int per sample
    (building that list cost ~0.1 s an epoch on MNIST, a few per cent of a CPU epoch)."""
    size = len(sampler.dataset)
    if sampler.shuffle:
        order = torch.randperm(size, generator=torch.Generator().manual_seed(sampler.seed + sampler.epoch))
    else:
        order = torch.arange(size)
    # drop_last truncates to total_size; otherwise the order repeats from its start until total_size
    order = order.repeat(math.ceil(sampler.total_size / size))[: sampler.total_size]
    return order[sampler.rank : sampler.total_size : sampler.num_replicas]


class TensorLoader:
    """Batches gathered by index from tensors already on the training device.

    ``sampler`` decides the order: a ``DistributedSampler`` (used for one process too) gives a fresh
    permutation per epoch derived from ``seed + epoch``, and under DDP each rank its own shard of it.
    Lightning calls ``sampler.set_epoch`` before each epoch, as it does for a ``DataLoader``.
    Without a sampler, batches are contiguous slices in order (validation and test).
    """

    batch_sampler = None  # read by Lightning, as on a DataLoader: batching is done here

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        sampler: DistributedSampler | None = None,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.sampler = sampler

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.labels)
        return math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.sampler is None:
            for start in range(0, len(self.labels), self.batch_size):
                yield self.images[start : start + self.batch_size], self.labels[start : start + self.batch_size]
            return
        for idx in sampler_order(self.sampler).to(self.labels.device).split(self.batch_size):
            yield self.images[idx], self.labels[idx]


class MNISTDataModule(L.LightningDataModule):
    """MNIST, Fashion-MNIST or KMNIST with a seeded validation split carved from the training set.

    ``num_folds=k, fold=i``: validate on fold i of a stratified k-fold partition of the training set
    (seeded by ``split_seed``; ``val_size`` is then unused) and train on the other k-1 folds.
    """

    def __init__(
        self,
        dataset: str = "mnist",
        data_dir: str = "./data",
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        split_seed: int = 0,
        seed: int = 0,
        loader: str = "tensor",
        num_workers: int = 0,
        download: bool = True,
        augment: dict | None = None,
        num_folds: int | None = None,
        fold: int | None = None,
        classes: Sequence[int] | None = None,
        samples_per_class: int | None = None,
        train_fraction: float | None = None,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ConfigError(f"data.dataset={dataset!r} is not known; choose one of {', '.join(DATASETS)}")
        if loader not in LOADERS:
            raise ConfigError(f"data.loader={loader!r} is not known; choose one of {', '.join(LOADERS)}")
        check_folds(num_folds, fold)
        if samples_per_class is not None and train_fraction is not None:
            raise ConfigError("give data.samples_per_class or data.train_fraction, not both")
        if samples_per_class is not None and (not isinstance(samples_per_class, int) or samples_per_class < 1):
            raise ConfigError(f"data.samples_per_class={samples_per_class} must be a whole number >= 1 (images per class)")
        if train_fraction is not None and not 0 < train_fraction <= 1:
            raise ConfigError(f"data.train_fraction={train_fraction} must be in (0, 1]")
        self.save_hyperparameters()
        self.info = DATASETS[dataset]
        self.label_map = class_label_map(classes, len(self.info.class_names))  # None: every label, unchanged
        self.augment = BatchAugment(**augment) if augment and augment.get("enabled", True) else None
        self.train_set = self.val_set = self.test_set = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.info.image_shape

    @property
    def in_features(self) -> int:
        """Values per image, the input size of a network over flattened images."""
        return math.prod(self.input_shape)

    @property
    def class_names(self) -> tuple[str, ...]:
        return class_names(self.hparams.dataset, self.hparams.classes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def prepare_data(self) -> None:
        """Download once (rank 0) when files are missing; fail with one clear line when that is impossible."""
        folder = raw_folder(self.hparams.data_dir, self.hparams.dataset)
        missing = [name for name in expected_files(self.hparams.dataset) if not (folder / name).is_file()]
        if not missing:
            return
        if not self.hparams.download:
            raise DataError(missing_data_message(self.hparams.data_dir, self.hparams.dataset, missing, "data.download=false"))
        try:
            self.info.torchvision_class(self.hparams.data_dir, train=True, download=True)
        except Exception as err:  # no network, a mirror down, a bad checksum: all end the same way for the user
            reason = "download failed: " + " ".join(f"{type(err).__name__}: {err}".split())
            raise DataError(missing_data_message(self.hparams.data_dir, self.hparams.dataset, missing, reason)) from err

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels = load_split(self.hparams.data_dir, self.hparams.dataset, train=True)
        test_images, test_labels = load_split(self.hparams.data_dir, self.hparams.dataset, train=False)
        if self.hparams.num_folds is None:
            train_idx, val_idx = split_train_val(len(labels), self.hparams.val_size, self.hparams.split_seed)
        else:
            train_idx, val_idx = split_folds(labels, self.hparams.num_folds, self.hparams.fold, self.hparams.split_seed)
        train_idx, val_idx, test_idx = self._select(labels, test_labels, train_idx, val_idx)
        if self.hparams.loader == "torchvision":
            self._setup_torchvision(train_idx, val_idx, test_idx)
            return
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        # uint8 travels to the device (4x fewer bytes than float) and is normalized there, once per split.
        normalized, labels = self._normalize(images.to(device)), self._relabel(labels).to(device)
        test_normalized, test_labels = self._normalize(test_images.to(device)), self._relabel(test_labels).to(device)
        train_idx, val_idx, test_idx = train_idx.to(device), val_idx.to(device), test_idx.to(device)
        self.train_set = (normalized[train_idx], labels[train_idx])
        self.val_set = (normalized[val_idx], labels[val_idx])
        self.test_set = (test_normalized[test_idx], test_labels[test_idx])

    def _select(
        self, labels: torch.Tensor, test_labels: torch.Tensor, train_idx: torch.Tensor, val_idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Train, val and test indices left by ``data.classes`` (all splits) and by ``data.samples_per_class`` or
        ``data.train_fraction`` (training split only, after validation is carved). Defaults keep everything."""
        test_idx = torch.arange(len(test_labels))
        if self.label_map is not None:
            wanted = lambda idx, split_labels: idx[self.label_map[split_labels[idx]] >= 0]  # noqa: E731
            train_idx, val_idx, test_idx = wanted(train_idx, labels), wanted(val_idx, labels), wanted(test_idx, test_labels)
        per_class, fraction = self.hparams.samples_per_class, self.hparams.train_fraction
        if per_class is not None or fraction is not None:
            train_idx = train_idx[stratified_subset(labels[train_idx], per_class, fraction, self.hparams.split_seed)]
        return train_idx, val_idx, test_idx

    def _relabel(self, labels: torch.Tensor) -> torch.Tensor:
        return labels if self.label_map is None else self.label_map[labels]

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        return ((images.float() / 255 - self.info.mean) / self.info.std).unsqueeze(1)

    def _setup_torchvision(self, train_idx: torch.Tensor, val_idx: torch.Tensor, test_idx: torch.Tensor) -> None:
        to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((self.info.mean,), (self.info.std,))])
        relabel = None if self.label_map is None else self.label_map.tolist().__getitem__
        cls, root = self.info.torchvision_class, self.hparams.data_dir
        train_full = cls(root, train=True, download=False, transform=to_tensor, target_transform=relabel)
        self.train_set = Subset(train_full, train_idx.tolist())
        self.val_set = Subset(train_full, val_idx.tolist())
        test_full = cls(root, train=False, download=False, transform=to_tensor, target_transform=relabel)
        self.test_set = Subset(test_full, test_idx.tolist())

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> TensorLoader | DataLoader:
        rank, world = self._rank_and_world()
        if self.hparams.loader == "torchvision":
            return DataLoader(
                self.train_set,
                batch_size=self.hparams.batch_size,
                shuffle=True,
                num_workers=self.hparams.num_workers,
                persistent_workers=self.hparams.num_workers > 0,
                generator=torch.Generator().manual_seed(self.hparams.seed),
            )
        images, labels = self.train_set
        sampler = DistributedSampler(labels, num_replicas=world, rank=rank, shuffle=True, seed=self.hparams.seed)
        return TensorLoader(images, labels, self.hparams.batch_size, sampler)

    def val_dataloader(self) -> TensorLoader | DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> TensorLoader | DataLoader:
        return self._eval_loader(self.test_set)

    def _eval_loader(self, split) -> TensorLoader | DataLoader:
        if self.hparams.loader == "torchvision":
            return DataLoader(split, batch_size=self.hparams.eval_batch_size, num_workers=self.hparams.num_workers)
        images, labels = split
        rank, world = self._rank_and_world()
        sampler = None if world == 1 else DistributedSampler(labels, num_replicas=world, rank=rank, shuffle=False)
        return TensorLoader(images, labels, self.hparams.eval_batch_size, sampler)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Augment training batches on the device, the whole batch at once; validation and test stay clean."""
        if self.augment is None or self.trainer is None or not self.trainer.training:
            return batch
        images, labels = batch
        background = -self.info.mean / self.info.std  # a black pixel after normalization
        return self.augment(images, fill=background), labels
