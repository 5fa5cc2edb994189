"""``data=csv data.path=<file>``: a CSV of numbers, one example a row.

Two layouts:
- Kaggle's Digit Recognizer, detected from its header ``label,pixel0,...,pixel783``: each row is a 28x28
  image, so the image figures, augmentation and predict.py work as on MNIST (its ``test.csv``, the pixels
  without labels, is what ``predict.py inputs=test.csv`` classifies into a submission file);
- any numeric CSV with ``data.label_column=<name>``: the other columns are features, standardized with the
  training split's statistics; the label values are the classes.

Files are read by pyarrow's streaming CSV reader (docs/benchmarks.md compares it with polars and pandas) one
block at a time into a tensor sized from the line count, so memory stays close to the result's size. pyarrow's
errors do not say the line: on an error Python's csv module scans the file once more to name it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import torch

from mlplab.data.datamodule import LoadedData, OwnDataModule
from mlplab.errors import ConfigError, DataError

KAGGLE_LABEL = "label"
KAGGLE_PIXELS = tuple(f"pixel{i}" for i in range(28 * 28))
BLOCK_BYTES = 16 << 20  # pyarrow's read unit: bounds the memory spent besides the result


def read_header(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path} is not a file")
    with open(path, newline="") as file:
        header = next(csv.reader(file), None)
    if not header:
        raise DataError(f"{path} is empty: expected a header line naming the columns")
    return [name.strip() for name in header]


def is_kaggle_pixels(columns: list[str]) -> bool:
    """Kaggle's digit layout: ``pixel0..pixel783``, after a ``label`` column in train.csv, alone in test.csv."""
    return tuple(c for c in columns if c != KAGGLE_LABEL) == KAGGLE_PIXELS


def line_count(path: Path) -> int:
    count, last = 0, b"\n"
    with open(path, "rb") as file:
        while chunk := file.read(1 << 24):
            count, last = count + chunk.count(b"\n"), chunk[-1:]
    return count + (last != b"\n")


def first_bad_line(path: Path, problem: Callable[[list[str]], str | None]) -> str:
    """``<file>, line <n>: <problem>`` for the first data row ``problem`` finds fault with."""
    with open(path, newline="") as file:
        reader = csv.reader(file)
        next(reader, None)
        for row in reader:
            if row and (found := problem(row)):
                return f"{path}, line {reader.line_num}: {found}"
    return f"{path}: unreadable as a CSV of numbers"


def not_a_number(columns: list[str], index: int) -> Callable[[list[str]], str | None]:
    def problem(row: list[str]) -> str | None:
        cell = row[index].strip() if index < len(row) else ""
        try:
            if not math.isnan(float(cell)):
                return None
        except ValueError:
            pass
        what = "an empty cell" if cell in ("", "nan", "NaN") else f"{cell!r} is not a number"
        return f"column {columns[index]!r}: {what} (every cell must be a number)"
    return problem


def read_numbers(path: Path, columns: list[str], label_column: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(features [rows, columns], labels [rows])`` as float32, read block by block into preallocated tensors:
    the label column (if any) apart, so the features need no second copy without it."""
    options = pa_csv.ConvertOptions(column_types={name: pa.float32() for name in columns})
    wrong_length = lambda row: (f"{len(row)} values where the header has {len(columns)} columns (rows of different "  # noqa: E731
                                "lengths)") if len(row) != len(columns) else None
    order = [i for i, name in enumerate(columns) if name != label_column] + [columns.index(c) for c in columns if c == label_column]
    result = torch.empty(max(line_count(path) - 1, 0), len(columns))
    rows = 0
    try:
        reader = pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(block_size=BLOCK_BYTES), convert_options=options)
        for batch in reader:
            # one C++ copy into a row-major block (stacking per-column arrays in torch was 20x slower)
            block = torch.from_numpy(np.asarray(batch.select(order).to_tensor(null_to_nan=True)))
            if block.isnan().any():
                raise DataError(first_bad_line(path, not_a_number(columns, order[int(block.isnan().any(0).nonzero()[0])])))
            if rows + len(block) > len(result):  # quoted line breaks: more rows than lines; never in numeric files
                result = torch.cat([result[:rows], torch.empty(rows + len(block) - len(result), len(columns))])
            result[rows : rows + len(block)] = block
            rows += len(block)
    except pa.ArrowInvalid as err:
        message = str(err)
        if "Expected" in message and "columns" in message:
            raise DataError(first_bad_line(path, wrong_length)) from err
        if "In CSV column #" in message:
            index = int(message.split("In CSV column #")[1].split(":")[0])
            raise DataError(first_bad_line(path, not_a_number(columns, index))) from err
        raise DataError(f"{path} is not a readable CSV: {' '.join(message.split())}") from err
    if label_column is None:
        return result[:rows], None
    return result[:rows, :-1], result[:rows, -1].clone()


def class_name(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def labels_of(values: torch.Tensor, names: list[str], path: Path, train_path: Path) -> torch.Tensor:
    """Label values -> positions in ``names``; a value training never had is an error naming its line."""
    index = {name: i for i, name in enumerate(names)}
    found = [index.get(class_name(v), -1) for v in values.tolist()]
    if -1 in found:
        row = found.index(-1)
        raise DataError(f"{path}, line {row + 2}: label {class_name(values[row])} never appears in the training data "
                        f"{train_path} (its labels: {', '.join(names)})")
    return torch.tensor(found, dtype=torch.long)


class CSVDataModule(OwnDataModule):
    """Kaggle digit rows (images) or the numeric columns of any CSV (tabular features)."""

    def __init__(self, path: str, test_path: str | None = None, label_column: str | None = None, **settings: Any) -> None:
        super().__init__(**settings)

    def load(self) -> LoadedData:
        path = Path(self.hparams.path).expanduser()
        columns = read_header(path)
        label_column = self.hparams.label_column
        if label_column is None:
            if not (is_kaggle_pixels(columns) and KAGGLE_LABEL in columns):
                raise ConfigError(f"{path} is not Kaggle's digit layout (label,pixel0,...,pixel783); name the column that "
                                  f"holds the labels: data.label_column=<one of {', '.join(columns[:12])}"
                                  f"{', ...' if len(columns) > 12 else ''}>")
            label_column = KAGGLE_LABEL
        if label_column not in columns:
            raise ConfigError(f"data.label_column={label_column!r} is not a column of {path}; it has "
                              f"{', '.join(columns[:12])}{', ...' if len(columns) > 12 else ''}")
        features = [c for c in columns if c != label_column]
        is_image = tuple(features) == KAGGLE_PIXELS
        values, label_values = read_numbers(path, columns, label_column)
        names = [class_name(v) for v in sorted(set(label_values.tolist()))]
        labels = labels_of(label_values, names, path, path)
        test_values = test_labels = None
        if self.hparams.test_path is not None:
            test_path = Path(self.hparams.test_path).expanduser()
            test_columns = read_header(test_path)
            if label_column not in test_columns:
                raise DataError(f"{test_path} has no {label_column!r} column: the test split needs labels "
                                f"(to classify unlabeled rows: predict.py inputs={test_path})")
            if sorted(test_columns) != sorted(columns):
                raise DataError(f"{test_path} has columns {', '.join(test_columns[:12])}... where {path} has "
                                f"{', '.join(columns[:12])}...: test and training files need the same columns")
            test_values, test_label_values = read_numbers(test_path, test_columns, label_column)
            test_values = test_values[:, [[c for c in test_columns if c != label_column].index(c) for c in features]]
            test_labels = labels_of(test_label_values, names, test_path, path)
        if is_image:
            values = pixels(values, path)
            test_values = None if test_values is None else pixels(test_values, Path(self.hparams.test_path))
        return LoadedData(values, labels, test_values, test_labels, tuple(names), str(path), box=20 if is_image else 28)


def pixels(values: torch.Tensor, path: Path) -> torch.Tensor:
    """Kaggle pixel rows -> uint8 images ``[N, 28, 28]``; a value outside 0..255 is an error naming its line."""
    bad = ((values < 0) | (values > 255) | (values != values.round())).any(1)
    if bad.any():
        row = int(bad.nonzero()[0])
        raise DataError(f"{path}, line {row + 2}: pixel values must be whole numbers from 0 to 255")
    return values.to(torch.uint8).reshape(-1, 28, 28)


def kaggle_images(path: Path) -> torch.Tensor:
    """The rows of a Kaggle digit file (test.csv: pixels only; train.csv: its label column ignored) as uint8 images."""
    columns = read_header(path)
    if not is_kaggle_pixels(columns):
        raise DataError(f"{path} is not Kaggle's digit layout (pixel0,...,pixel783, optionally with label): "
                        "predict.py classifies the rows of such files, or pictures")
    values, _ = read_numbers(path, columns, KAGGLE_LABEL if KAGGLE_LABEL in columns else None)
    return pixels(values, path)
