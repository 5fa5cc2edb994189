"""MNIST-family data: decoded once, split once, served as batches of tensors on the training device.

The classic recipe (PIL image -> ToTensor -> Normalize per sample, every epoch) spends most of an MNIST
epoch in Python. Here each split is one normalized float tensor moved to the training device once, and
a batch is one index gather. The torchvision ``DataLoader`` path stays available (``loader: torchvision``)
for users who want per-sample transforms.

Validation is carved from the official *training* set by a seeded split (or, with ``num_folds``, is one
fold of a stratified k-fold partition of it); ``test`` is always the official test set, used once at the end.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset
from torchvision import datasets, transforms

from mlplab.choices import DATASETS, DatasetInfo
from mlplab.data.augment import BatchAugment
from mlplab.data.idx import FILES, check_split, raw_folder
from mlplab.errors import ConfigError, DataError
from mlplab.rules import check_arguments, split_problems

log = logging.getLogger(__name__)


def load_split(data_dir: str | Path, dataset: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one official split into ``(uint8 images [N, 28, 28], int64 labels [N])``."""
    folder = raw_folder(data_dir, dataset)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(missing_data_message(data_dir, dataset, missing))
    prefix, info = ("train" if train else "t10k"), DATASETS[dataset]
    check_split(folder / f"{prefix}-images-idx3-ubyte", folder / f"{prefix}-labels-idx1-ubyte", info.image_shape[1:], len(info.class_names))
    ds = getattr(datasets, info.folder)(str(data_dir), train=train, download=False)
    return ds.data, ds.targets


def missing_data_message(data_dir: str | Path, dataset: str, missing: Sequence[str], reason: str = "") -> str:
    what = "all four IDX files" if len(missing) == len(FILES) else ", ".join(missing)
    return (
        f"{dataset} data not found in {raw_folder(data_dir, dataset)}: missing {what} "
        f"({', '.join(FILES)}, uncompressed){f'; {reason}' if reason else ''}. "
        f"Put them there, or point DATA_DIR (or data.data_dir) at a folder holding "
        f"{DATASETS[dataset].folder}/raw."
    )


def split_train_val(num_samples: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of the official training set into (train indices, validation indices)."""
    check_split_sizes(num_samples, {"data.val_size": val_size})
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


def check_split_sizes(num_train: int, values: dict[str, Any]) -> None:
    """``data.val_size``, ``data.num_folds``, ``data.batch_size`` against the training set (rules: mlplab.rules)."""
    found = split_problems(num_train, values, "")
    if found:
        raise ConfigError("; ".join(found))


def split_folds(labels: torch.Tensor, num_folds: int, fold: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices) for one fold of a stratified, seeded k-fold partition.

    Images are shuffled (seeded), grouped by class keeping that order, and dealt to folds in turn: every fold
    gets each class's share to within one image, and fold sizes differ by at most one. The same seed gives
    the same partition for every ``fold``, so the k jobs of a cross-validation validate on disjoint folds.
    """
    check_split_sizes(len(labels), {"data.num_folds": num_folds, "data.fold": fold})
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
    classes = list(classes)  # checked by MNISTDataModule (mlplab.rules)
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
    (building that list costs a few per cent of a CPU epoch: docs/benchmarks.md)."""
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


class SplitDataModule(L.LightningDataModule):
    """What every dataset shares: validation carved from the training part by a seeded split (or one fold of a
    stratified k-fold partition), ``classes`` / ``samples_per_class`` / ``train_fraction`` subsets, splits held as
    normalized tensors on the training device and served by index, augmentation on the device.

    A subclass says what its data is: ``info`` (class names, image shape, mean and std), ``read_splits`` (the
    training part and the test part as tensors) and, for data whose normalization is learnt from the training
    split, ``fit_normalization``. ``state_dict`` records what the data was (class names, normalization, input
    shape), so a checkpoint alone is enough for eval.py, predict.py and export.py.
    """

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        split_seed: int = 0,
        seed: int = 0,
        augment: dict | None = None,
        num_folds: int | None = None,
        fold: int | None = None,
        classes: Sequence[int] | None = None,
        samples_per_class: int | None = None,
        train_fraction: float | None = None,
    ) -> None:
        super().__init__()
        check_arguments("data", locals())
        self.save_hyperparameters(logger=False)  # with the subclass's arguments too; loggers get flat names (HParamsSummary)
        self.augment = BatchAugment(**augment) if augment and augment.get("enabled", True) else None
        self.train_set = self.val_set = self.test_set = None

    info: DatasetInfo  # set or computed by the subclass

    @property
    def name(self) -> str:
        """What the data is, for log lines and metrics.json."""
        return self.hparams.get("dataset", type(self).__name__)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.info.image_shape

    @property
    def is_image(self) -> bool:
        """Images ``(channels, height, width)``, as opposed to rows of tabular features."""
        return len(self.input_shape) == 3

    @property
    def in_features(self) -> int:
        """Values per image, the input size of a network over flattened images."""
        return math.prod(self.input_shape)

    @property
    def label_map(self) -> torch.Tensor | None:
        """``data.classes`` as a lookup table (None: every label, unchanged)."""
        return class_label_map(self.hparams.classes, len(self.info.class_names))

    @property
    def class_names(self) -> tuple[str, ...]:
        names, classes = self.info.class_names, self.hparams.classes
        return names if classes is None else tuple(names[c] for c in classes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def read_splits(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images, labels, test_images, test_labels)``: uint8 images ``[N, H, W]`` (or float features ``[N, F]``)."""
        raise NotImplementedError

    def fit_normalization(self, train_values: torch.Tensor) -> None:
        """Learn normalization statistics from the training split (after validation is carved); fixed by default."""

    def state_dict(self) -> dict[str, Any]:
        """What the data was, saved in every checkpoint (plain values and tensors: weights-only loadable)."""
        return {
            "class_names": list(self.class_names),
            "input_shape": list(self.input_shape),
            "mean": self.info.mean,
            "std": self.info.std,
            "box": self.info.box,
        }

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels, test_images, test_labels = self.read_splits()
        check_split_sizes(len(labels), {f"data.{key}": self.hparams[key] for key in ("val_size", "num_folds", "batch_size")})
        if self.hparams.num_folds is None:
            train_idx, val_idx = split_train_val(len(labels), self.hparams.val_size, self.hparams.split_seed)
        else:
            train_idx, val_idx = split_folds(labels, self.hparams.num_folds, self.hparams.fold, self.hparams.split_seed)
        train_idx, val_idx, test_idx = self._select(labels, test_labels, train_idx, val_idx)
        self.fit_normalization(images[train_idx])
        if self.hparams.get("loader") == "torchvision":
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

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> TensorLoader | DataLoader:
        rank, world = self._rank_and_world()
        if self.hparams.get("loader") == "torchvision":
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
        if self.hparams.get("loader") == "torchvision":
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


class MNISTDataModule(SplitDataModule):
    """MNIST, Fashion-MNIST or KMNIST with a seeded validation split carved from the training set.

    ``num_folds=k, fold=i``: validate on fold i of a stratified k-fold partition of the training set
    (seeded by ``split_seed``; ``val_size`` is then unused) and train on the other k-1 folds.
    """

    def __init__(
        self,
        dataset: str = "mnist",
        data_dir: str = "./data",
        loader: str = "tensor",
        num_workers: int = 0,
        download: bool = True,
        **split_settings: Any,
    ) -> None:
        check_arguments("data", locals() | split_settings)  # all at once: one line names every problem
        super().__init__(**split_settings)
        self.info = DATASETS[dataset]

    def prepare_data(self) -> None:
        """Download once (rank 0) when files are missing; fail with one clear line when that is impossible."""
        folder = raw_folder(self.hparams.data_dir, self.hparams.dataset)
        missing = [name for name in FILES if not (folder / name).is_file()]
        if not missing:
            return
        if not self.hparams.download:
            raise DataError(missing_data_message(self.hparams.data_dir, self.hparams.dataset, missing, "data.download=false"))
        try:
            getattr(datasets, self.info.folder)(self.hparams.data_dir, train=True, download=True)
        except Exception as err:  # no network, a mirror down, a bad checksum: all end the same way for the user
            reason = "download failed: " + " ".join(f"{type(err).__name__}: {err}".split())
            raise DataError(missing_data_message(self.hparams.data_dir, self.hparams.dataset, missing, reason)) from err

    def read_splits(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels = load_split(self.hparams.data_dir, self.hparams.dataset, train=True)
        test_images, test_labels = load_split(self.hparams.data_dir, self.hparams.dataset, train=False)
        return images, labels, test_images, test_labels

    def _setup_torchvision(self, train_idx: torch.Tensor, val_idx: torch.Tensor, test_idx: torch.Tensor) -> None:
        to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((self.info.mean,), (self.info.std,))])
        relabel = None if self.label_map is None else self.label_map.tolist().__getitem__
        cls, root = getattr(datasets, self.info.folder), self.hparams.data_dir
        train_full = cls(root, train=True, download=False, transform=to_tensor, target_transform=relabel)
        self.train_set = Subset(train_full, train_idx.tolist())
        self.val_set = Subset(train_full, val_idx.tolist())
        test_full = cls(root, train=False, download=False, transform=to_tensor, target_transform=relabel)
        self.test_set = Subset(test_full, test_idx.tolist())


@dataclass
class LoadedData:
    """A user's data as read from disk: uint8 images ``[N, H, W]`` or float32 features ``[N, F]``, labels 0..k-1
    indexing ``class_names``, and the test part when the files have one (None: carved from the training part)."""

    values: torch.Tensor
    labels: torch.Tensor
    test_values: torch.Tensor | None
    test_labels: torch.Tensor | None
    class_names: tuple[str, ...]
    source: str  # the file or folder, for messages
    box: int = 28


class OwnDataModule(SplitDataModule):
    """A user's own files (``data=image_folder``, ``data=csv``): read on first use, since the input size and the
    classes come from the data; without a test part, a seeded stratified ``test_fraction`` of the data is held
    out as the test split. Normalization: images use ``mean`` and ``std`` when given (the configs give MNIST's:
    the pictures are prepared like MNIST, and an MNIST-pretrained network then sees what it was trained on);
    tabular features, and images with ``mean: null``, use statistics of the training split only.
    """

    def __init__(self, test_fraction: float = 0.2, mean: float | None = None, std: float | None = None,
                 **split_settings: Any) -> None:
        check_arguments("data", locals() | split_settings)
        super().__init__(**split_settings)
        self._data: LoadedData | None = None
        self.mean: float | torch.Tensor = 0.0 if mean is None else mean
        self.std: float | torch.Tensor = 1.0 if std is None else std

    def load(self) -> LoadedData:
        raise NotImplementedError

    @property
    def data(self) -> LoadedData:
        if self._data is None:
            data = self.load()
            present = data.labels.unique()
            if len(data.class_names) < 2 or len(present) < 2:
                raise DataError(f"{data.source} holds {len(present)} class(es) ({', '.join(data.class_names)}); "
                                "training needs at least two")
            if data.values.ndim == 2:
                log.info("%s: tabular data (%d features), standardized with the training split's statistics; "
                         "image-only parts (augmentation, sample and misclassified-image figures) are skipped",
                         data.source, data.values.shape[1])
                self.augment = None
            self._data = data
        return self._data

    @property
    def name(self) -> str:
        return f"{self.hparams.get('dataset', type(self).__name__)} {self.data.source}"

    @property
    def info(self) -> DatasetInfo:
        data = self.data
        shape = (1, *data.values.shape[1:]) if data.values.ndim == 3 else (data.values.shape[1],)
        return DatasetInfo(None, self.mean, self.std, data.class_names, shape, data.box)

    def read_splits(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The splits, handed over: the datamodule keeps only the data's shape and classes, so that a large file is
        not held twice while setup builds the normalized splits from it."""
        data = self.data
        self._data = replace(data, values=data.values[:0].clone(), labels=data.labels[:0].clone(), test_values=None,
                             test_labels=None)
        if data.test_values is not None:
            return data.values, data.labels, data.test_values, data.test_labels
        test = stratified_subset(data.labels, None, self.hparams.test_fraction, self.hparams.split_seed)
        rest = torch.ones(len(data.labels), dtype=torch.bool)
        rest[test] = False
        lonely = set(data.labels.unique().tolist()) - set(data.labels[rest].unique().tolist())
        if lonely:
            names = ", ".join(data.class_names[c] for c in sorted(lonely))
            raise DataError(f"{data.source}: class {names} has a single example, which went to the test split; "
                            "every class needs at least two (or give a test part)")
        return data.values[rest], data.labels[rest], data.values[test], data.labels[test]

    def fit_normalization(self, train_values: torch.Tensor) -> None:
        if self.is_image and self.hparams.mean is not None:
            return
        if self.is_image:  # one mean and std over all pixels, as the built-in datasets have
            pixels = train_values.float() / 255
            self.mean, self.std = float(pixels.mean()), float(pixels.std().clamp(min=1e-6))
        else:  # per feature; a constant feature is only centred
            std = train_values.std(0)
            self.mean, self.std = train_values.mean(0), torch.where(std > 0, std, torch.ones_like(std))

    def _normalize(self, values: torch.Tensor) -> torch.Tensor:
        if self.is_image:
            return super()._normalize(values)
        return (values - self.mean.to(values.device)) / self.std.to(values.device)
