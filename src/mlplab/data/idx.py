"""IDX files (the MNIST distribution's format), checked before torchvision parses them.

A truncated download, a file still gzip-compressed, or a labels file from another dataset otherwise fails
deep inside torchvision with a message about tensor shapes, or, worse, trains on garbage. The checks here
read only the 16-byte headers, the file sizes and the labels (60 KB for MNIST), so every run can afford them;
they need no torch, so config validation reads the training set's size from its header before any heavy import.

Layout: two zero bytes, a type byte (0x08: unsigned bytes), the number of dimensions, then each dimension as a
big-endian uint32, then the values.
"""

from __future__ import annotations

import math
from pathlib import Path

from mlplab.choices import DATASETS
from mlplab.errors import DataError

UNSIGNED_BYTE = 0x08
GZIP_MAGIC = b"\x1f\x8b"
FIX = "replace it with a good copy, or delete it so that it is downloaded again"
# the uncompressed files torchvision expects under <root>/<Class>/raw, the same for every MNIST-family set
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def raw_folder(data_dir: str | Path, dataset: str) -> Path:
    return Path(data_dir) / DATASETS[dataset].folder / "raw"


def read_header(path: str | Path) -> tuple[int, ...]:
    """The dimensions an IDX file of unsigned bytes announces, or a DataError saying why it is not one."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            magic = file.read(4)
            if magic[:2] == GZIP_MAGIC:
                raise DataError(f"{path} is gzip-compressed: gunzip it (mlplab reads uncompressed IDX files)")
            if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] != UNSIGNED_BYTE or magic[3] == 0:
                raise DataError(
                    f"{path} is not an IDX file of bytes (magic number 0x{magic.hex() or 'empty'}, expected "
                    f"0x000008 and the number of dimensions): {FIX}"
                )
            raw_dims = file.read(4 * magic[3])
    except OSError as err:
        raise DataError(f"{path} cannot be read ({err.strerror or err}): check its permissions") from err
    if len(raw_dims) < 4 * magic[3]:
        raise DataError(f"{path} is truncated inside its header: {FIX}")
    return tuple(int.from_bytes(raw_dims[i : i + 4], "big") for i in range(0, len(raw_dims), 4))


def check_split(images_path: Path, labels_path: Path, image_size: tuple[int, int], num_classes: int) -> None:
    """DataError naming the file and the problem unless the pair holds N images of ``image_size`` and N labels
    in ``0 .. num_classes - 1``."""
    image_dims, label_dims = read_header(images_path), read_header(labels_path)
    if len(image_dims) != 3 or image_dims[1:] != tuple(image_size):
        shape = " x ".join(map(str, image_dims))
        raise DataError(f"{images_path} holds an array of {shape}, expected N images of {image_size[0]} x {image_size[1]}: {FIX}")
    if len(label_dims) != 1:
        raise DataError(f"{labels_path} holds an array of {' x '.join(map(str, label_dims))}, expected N labels: {FIX}")
    for path, dims in ((images_path, image_dims), (labels_path, label_dims)):
        expected = 4 + 4 * len(dims) + math.prod(dims)
        actual = path.stat().st_size
        if actual != expected:
            what = "truncated" if actual < expected else "longer than its header says"
            raise DataError(
                f"{path} is {what}: its header announces {' x '.join(map(str, dims))} values "
                f"({expected} bytes) but the file has {actual} bytes: {FIX}"
            )
    if image_dims[0] != label_dims[0]:
        raise DataError(f"{images_path} holds {image_dims[0]} images but {labels_path} holds {label_dims[0]} labels: {FIX}")
    labels = labels_path.read_bytes()[8:]
    if labels and max(labels) >= num_classes:
        index = next(i for i, label in enumerate(labels) if label >= num_classes)
        raise DataError(
            f"{labels_path} has label {labels[index]} at index {index}, outside 0..{num_classes - 1}: "
            f"not this dataset's labels? {FIX}"
        )
