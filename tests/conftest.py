"""Shared fixtures: tiny synthetic MNIST-family data in torchvision's layout, and config composition.

The synthetic digits are learnable (class k lights a bar at a class-specific place, plus noise), so a
short training run must really beat chance; the real loading code reads them like the real files.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
REAL_DATA_DIR = Path(os.environ.get("DATA_DIR", "/nonexistent"))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an uncompressed IDX file (the format of the MNIST distribution)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def synthetic_digits(n: int, seed: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 140, size=(n, 28, 28))
    for i, label in enumerate(labels):
        row = 2 + 2 * label + rng.integers(0, 3)  # neighbouring classes overlap: not every image is separable
        images[i, row : row + 2, 4:24] = rng.integers(120, 256)
    return images.astype(np.uint8), labels.astype(np.uint8)


def make_dataset(root: Path, folder: str = "MNIST", n_train: int = 600, n_test: int = 200) -> Path:
    raw = root / folder / "raw"
    for split, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = synthetic_digits(n, seed)
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding synthetic MNIST, FashionMNIST and KMNIST (600 train / 200 test images each)."""
    root = tmp_path_factory.mktemp("data")
    for folder in ("MNIST", "FashionMNIST", "KMNIST"):
        make_dataset(root, folder)
    return root


def compose_config(entry: str = "train", overrides: Sequence[str] = (), output_dir: Path | None = None,
                   with_hydra: bool = False) -> DictConfig:
    """The config `python <entry>.py <overrides>` would run, with output_dir set outside Hydra's runtime
    (``with_hydra``: Hydra's own node too, for the launcher, sweeper and run-dir settings)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=entry, overrides=list(overrides), return_hydra_config=with_hydra)
    with open_dict(cfg):
        cfg.output_dir = str(output_dir or "unused")
    return cfg


def run_script(script: str, *args: str, data_dir: Path | str) -> subprocess.CompletedProcess:
    """Run an entry point (`python train.py ...`) as a user would, with DATA_DIR pointing at data_dir."""
    env = os.environ | {"DATA_DIR": str(data_dir), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@contextlib.contextmanager
def in_process(script: str, arguments: Sequence[str]) -> Iterator[None]:
    """`python <script> <arguments>` run in this process: sys.argv set, and Hydra's record of the run taken back
    after it (as Hydra's own run_job does), so that later tests in this worker see no run."""
    from hydra.core.hydra_config import HydraConfig

    before = HydraConfig.instance().cfg
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [str(ROOT / script), *arguments])
        try:
            yield
        finally:
            HydraConfig.instance().cfg = before


def refusal(script: str, overrides: Sequence[str], tmp_path: Path, caplog: pytest.LogCaptureFixture,
            capsys: pytest.CaptureFixture) -> str:
    """The one line `python <script> <overrides>` is refused with (exit status 1, nothing written), run in-process
    through mlplab.cli as the script runs it (a multirun logs through the handlers Hydra sets up, not caplog's)."""
    from mlplab.cli import run

    arguments = [*overrides, f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"]
    with in_process(script, arguments), pytest.raises(SystemExit) as stopped:
        run("builtins:print", config_name=script.removesuffix(".py"))
    assert stopped.value.code == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()
    printed = capsys.readouterr()
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    lines += [line[line.index("error: "):] for line in (printed.out + printed.err).splitlines() if "] error: " in line]
    [line] = set(lines)
    return line.removeprefix("error: ")


def composes(script: str, overrides: Sequence[str], capsys: pytest.CaptureFixture) -> str:
    """`python <script> --cfg all <overrides>` in-process: the config Hydra composed, printed (a refusal would exit)."""
    from mlplab.cli import run

    with in_process(script, ["--cfg", "all", *overrides]):
        run("builtins:print", config_name=script.removesuffix(".py"))
    return capsys.readouterr().out


requires_real_mnist = pytest.mark.skipif(
    not (REAL_DATA_DIR / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file(),
    reason="real MNIST not found under DATA_DIR",
)
