"""``data=image_folder data.root=<dir>``: a folder of PNG/JPEG files per class, torchvision's ImageFolder layout.

    root/<class>/<image>            one folder per class; a seeded stratified test split is held out
    root/train/<class>/<image>      or train/ and test/ (the test classes must be training classes)
    root/test/<class>/<image>

Class names are the folder names, sorted. Every picture goes through predict.py's preparation
(``mlplab.data.pictures.prepare_picture``): training and prediction see the same 28x28 images. Decoding is slow, so
its result is cached, keyed by the files' names and bytes and the settings: an edited picture rebuilds it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import torch

from mlplab.data.datamodule import LoadedData, OwnDataModule
from mlplab.data.pictures import IMAGE_SUFFIXES, prepare_picture
from mlplab.errors import DataError
from mlplab.rules import check_arguments

log = logging.getLogger(__name__)

# Part of the cache key: bump it when prepare_picture changes what it makes of a file.
PREPARATION_VERSION = 2


def class_folders(folder: Path) -> list[Path]:
    """Subfolders, one per class, sorted by name; hidden ones (.cache, .git) are not classes."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def pictures_in(folder: Path) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise DataError(f"{folder} holds no {'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} image: every class "
                        "folder needs at least one (or remove the folder)")
    return found


def list_split(folder: Path, class_names: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) of one split. ``class_names``: the training classes a test split must use."""
    folders = class_folders(folder)
    names = [f.name for f in folders]
    if class_names is not None:
        unseen = [f for f in folders if f.name not in class_names]
        if unseen:
            raise DataError(f"{unseen[0]}: class {unseen[0].name!r} never appears in training "
                            f"({', '.join(class_names)}); every test class needs training images")
    label_of = {name: i for i, name in enumerate(class_names or names)}
    files, labels = [], []
    for class_folder in folders:
        found = pictures_in(class_folder)
        files += found
        labels += [label_of[class_folder.name]] * len(found)
    return files, labels, names


def content_key(root: Path, splits: list[list[Path]], settings: dict[str, Any]) -> str:
    """A digest of every file's path (relative to root) and bytes, and of how they are prepared."""
    digest = hashlib.blake2b(repr((PREPARATION_VERSION, sorted(settings.items()))).encode(), digest_size=16)
    for files in splits:
        digest.update(b"\0split")
        for path in files:
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(hashlib.blake2b(path.read_bytes(), digest_size=16).digest())
    return digest.hexdigest()


def decode(files: list[Path], settings: dict[str, Any]) -> torch.Tensor:
    """uint8 ``[N, size, size]``: each picture prepared exactly as predict.py prepares one."""
    images = torch.empty(len(files), settings["size"], settings["size"], dtype=torch.uint8)
    for i, path in enumerate(files):
        images[i] = (prepare_picture(path, **settings) * 255).round().to(torch.uint8)
    return images


class ImageFolderDataModule(OwnDataModule):
    """Class-per-folder images, prepared like predict.py's pictures, cached after the first decoding."""

    def __init__(
        self,
        root: str,
        cache_dir: str = ".cache/mlplab",
        invert: bool | str = "auto",
        fit: bool = True,
        box: int = 20,
        size: int = 28,
        **settings: Any,
    ) -> None:
        check_arguments("data", locals() | settings)
        super().__init__(**settings)

    def load(self) -> LoadedData:
        root = Path(self.hparams.root).expanduser()
        if not root.is_dir():
            raise DataError(f"data.root={self.hparams.root} is not a folder (expected one subfolder of images per "
                            "class, or train/ and test/ holding those)")
        has_splits = (root / "train").is_dir() and (root / "test").is_dir()
        train_root = root / "train" if has_splits else root
        files, labels, names = list_split(train_root)
        test_files, test_labels = list_split(root / "test", names)[:2] if has_splits else ([], [])
        settings = {key: self.hparams[key] for key in ("invert", "fit", "box", "size")}
        key = content_key(root, [files, test_files], settings)
        cache = Path(self.hparams.cache_dir).expanduser() / f"image_folder-{key}.pt"
        if cache.is_file():
            images, test_images = torch.load(cache, weights_only=True)
            log.info("%s: %d pictures read from the cache %s", root, len(files) + len(test_files), cache)
        else:
            start = time.perf_counter()
            images, test_images = decode(files, settings), decode(test_files, settings)
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_suffix(".partial")
            torch.save((images, test_images), partial)
            partial.replace(cache)  # a run stopped mid-write leaves no half cache behind
            log.info("%s: %d pictures decoded in %.1f s, cached in %s", root, len(files) + len(test_files),
                     time.perf_counter() - start, cache)
        return LoadedData(
            images, torch.tensor(labels, dtype=torch.long),
            test_images if has_splits else None, torch.tensor(test_labels, dtype=torch.long) if has_splits else None,
            tuple(names), str(root), self.hparams.box,
        )
