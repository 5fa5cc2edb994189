"""Files a user points the tools at, made to hurt: one line each, bounded time and memory, nothing traced back."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import pytest
import torch

from conftest import compose_config, refusal
from mlplab.data.datamodule import load_split
from mlplab.data.pictures import read_grayscale
from mlplab.errors import DataError, UserError
from mlplab.pipeline import train


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb(path: Path, side: int = 20000) -> Path:
    """A 20000x20000 grayscale PNG header (400 million pixels) in a few bytes: PIL refuses it when opening."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_refused_in_one_line(tmp_path):
    bomb = decompression_bomb(tmp_path / "bomb.png")
    with pytest.raises(DataError) as err:
        read_grayscale(bomb)
    assert str(err.value).startswith(f"{bomb} is refused: Image size (400000000 pixels) exceeds limit of")
    assert "shrink the picture first" in str(err.value) and "\n" not in str(err.value)


def test_an_idx_header_announcing_billions_of_images_is_refused_before_reading(data_dir, tmp_path):
    root = tmp_path / "data"
    for name, dims in (("train-images-idx3-ubyte", (2**31, 28, 28)), ("train-labels-idx1-ubyte", (2**31,))):
        path = root / "MNIST" / "raw" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(struct.pack(">HBB", 0, 8, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + b"\0" * 100)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (root / "MNIST" / "raw" / name).write_bytes((data_dir / "MNIST" / "raw" / name).read_bytes())
    with pytest.raises(DataError, match=r"is truncated: its header announces 2147483648 x 28 x 28 values"):
        load_split(root, "mnist", train=True)


@pytest.mark.parametrize("contents", [b"not a checkpoint at all", b"PK\x03\x04truncated zip", "state_dict"])
def test_resuming_from_a_file_that_is_no_checkpoint_is_one_line(contents, data_dir, tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    if contents == "state_dict":
        torch.save({"weight": torch.zeros(2)}, path)  # a valid torch file, but no training checkpoint
    else:
        path.write_bytes(contents)
    overrides = ["debug=fast", f"ckpt_path={path}", f"data.data_dir={data_dir}"]
    monkeypatch.setattr(sys, "argv", ["train.py", *overrides])
    with pytest.raises(UserError) as err:
        train(compose_config("train", overrides, tmp_path / "run"))
    assert str(err.value).startswith(f"ckpt_path={path} is ") and "\n" not in str(err.value)


def test_a_config_file_that_is_not_yaml_is_one_line(tmp_path, caplog, capsys):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("data:\n  batch_size: [1,\n")
    assert refusal("train.py", ["--config-dir", str(tmp_path), "+experiment=mine"], tmp_path, caplog, capsys) == (
        f"{tmp_path}/experiment/mine.yaml is not valid YAML: expected the node content, but found '<stream end>' "
        "(line 3, column 1); fix or remove it")
