"""Time one training epoch three ways, same model, data, batch size and optimizer, in one process:

  (a) the classic tutorial loop: torchvision MNIST + ToTensor + Normalize through a DataLoader;
  (b) a plain PyTorch loop over tensors decoded once (as written by hand: default Adam);
  (c) mlplab's Trainer path (`python train.py`): its data path, fused Adam and precision (c32: fp32).

All three train on the same 55,000-image training split. Prints seconds per epoch (median of the epochs
after the first; the first, with its warm-up or compile, apart), samples/s, achieved GFLOP/s against a
matmul rate measured here, and the ratios (c)/(a) and (c)/(b).

    DATA_DIR=../shared/data python bench/speed.py --epochs 4
    python bench/speed.py --device cuda --batch-size 64 --compile --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mlplab.data import DATASETS, load_split, split_train_val  # noqa: E402
from mlplab.models import MLP  # noqa: E402
from mlplab.pipeline import fastest_precision  # noqa: E402

HIDDEN = [512, 256]


def flops_per_sample(in_features: int = 784, hidden: list[int] = HIDDEN, classes: int = 10) -> int:
    """Matmul FLOPs of one training sample: forward 2mn per layer, backward 4mn (2mn for the first layer,
    whose input needs no gradient)."""
    widths = [in_features, *hidden, classes]
    layers = list(zip(widths[:-1], widths[1:]))
    return sum((4 if i == 0 else 6) * m * n for i, (m, n) in enumerate(layers))


def matmul_gflops(device: torch.device, size: int = 2048, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    rounds, start = 10, time.perf_counter()
    for _ in range(rounds):
        a @ b
    sync(device)
    return 2 * size**3 * rounds / (time.perf_counter() - start) / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_epochs(run_epoch, epochs: int, device: torch.device) -> list[float]:
    seconds = []
    for epoch in range(epochs):
        sync(device)
        start = time.perf_counter()
        run_epoch(epoch)
        sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def train_step(net, optimizer, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    optimizer.step()


def classic_loop(args, train_idx, device) -> list[float]:
    """(a) The tutorial: PIL image -> ToTensor -> Normalize per sample, every epoch."""
    info = DATASETS["mnist"]
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((info.mean,), (info.std,))])
    train = Subset(datasets.MNIST(args.data_dir, train=True, download=False, transform=transform), train_idx.tolist())
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = MLP(784, 10, HIDDEN).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def run_epoch(epoch: int) -> None:
        for x, y in loader:
            train_step(net, optimizer, x.to(device), y.to(device))

    return timed_epochs(run_epoch, args.epochs, device)


def plain_loop(args, train_idx, device, fused: bool = False) -> list[float]:
    """(b) Decode once, batches by index from one tensor: what a careful hand-written loop does."""
    info = DATASETS["mnist"]
    images, labels = load_split(args.data_dir, "mnist", train=True)
    x_all = ((images[train_idx].float() / 255 - info.mean) / info.std).unsqueeze(1).to(device)
    y_all = labels[train_idx].to(device)
    torch.manual_seed(0)
    net = MLP(784, 10, HIDDEN).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=fused or None)
    generator = torch.Generator(device=device).manual_seed(0)

    def run_epoch(epoch: int) -> None:
        for idx in torch.randperm(len(y_all), device=device, generator=generator).split(args.batch_size):
            train_step(net, optimizer, x_all[idx], y_all[idx])

    return timed_epochs(run_epoch, args.epochs, device)


def mlplab_trainer(args, device, precision: str) -> list[float]:
    """(c) `python train.py`'s data path, module and Trainer, with the tutorial's recipe: the benchmark's batch
    size, constant LR 1e-3, no augmentation or label smoothing (the default recipe's extras are timed apart)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from mlplab.callbacks import EpochTimer
    from mlplab.pipeline import build

    overrides = [
        f"data.data_dir={args.data_dir}", f"data.batch_size={args.batch_size}", "scheduler=none",
        "optimizer.lr=1e-3", "data.augment.enabled=false", "regularization.label_smoothing=0",
        f"trainer.max_epochs={args.epochs}", f"trainer.precision={precision}",
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}", "trainer.devices=1",
        "trainer.enable_model_summary=false", "callbacks.early_stopping=null", "logger=csv",
        f"compile={args.compile}", f"compile_options.dynamic={args.dynamic}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.output_dir = str(Path(args.out) / "mlplab_run")
    datamodule, module, trainer = build(cfg)
    trainer.fit(module, datamodule=datamodule)
    timer = next(cb for cb in trainer.callbacks if isinstance(cb, EpochTimer))
    return timer.epoch_seconds


def summarize(name: str, seconds: list[float], samples: int, flops: int) -> dict:
    steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    return {
        "path": name,
        "first_s": seconds[0],
        "epoch_s": steady,
        "samples_per_s": samples / steady,
        "gflops": flops * samples / steady / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "./data"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per path; the first is reported apart")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network in (c)")
    parser.add_argument("--dynamic", action="store_true", help="with --compile: dynamic shapes (default: static)")
    parser.add_argument("--precision", default="auto", help="Lightning precision for (c); (c32) is always 32-true")
    parser.add_argument("--paths", default="a,b,b_fused,c32,c", help="which paths to time, comma-separated")
    parser.add_argument("--out", default=None, help="where (c) writes its run dir (default: a new temp dir)")
    args = parser.parse_args()

    args.out = args.out or tempfile.mkdtemp(prefix="mlplab-bench-")
    device = torch.device(args.device)
    _, labels = load_split(args.data_dir, "mnist", train=True)
    train_idx, _ = split_train_val(len(labels), 5000, seed=0)
    samples, flops = len(train_idx), flops_per_sample()
    peak = matmul_gflops(device)

    shown_precision = args.precision
    if args.precision == "auto":
        shown_precision = f"auto = {fastest_precision('gpu' if device.type == 'cuda' else 'cpu')}"
    runners = {
        "a": ("(a) classic DataLoader + ToTensor", lambda: classic_loop(args, train_idx, device)),
        "b": ("(b) plain loop, preloaded tensors", lambda: plain_loop(args, train_idx, device)),
        "b_fused": ("(b') plain loop + fused Adam", lambda: plain_loop(args, train_idx, device, fused=True)),
        "c32": ("(c32) mlplab Trainer, fp32", lambda: mlplab_trainer(args, device, "32-true")),
        "c": (f"(c) mlplab Trainer, {shown_precision}", lambda: mlplab_trainer(args, device, args.precision)),
    }
    rows = {}
    for key in args.paths.split(","):
        name, run = runners[key]
        rows[key] = summarize(name, run(), samples, flops)
        print(f"done {name}: {rows[key]['epoch_s']:.2f} s/epoch", file=sys.stderr, flush=True)

    threads = torch.get_num_threads()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(f"\nmachine: {gpu or platform.processor() or platform.machine()}, {os.cpu_count()} cores "
          f"({threads} torch threads), torch {torch.__version__}; matmul fp32 {peak:.0f} GFLOP/s")
    print(f"batch {args.batch_size}, {args.epochs} epochs of {samples} samples, MLP 784-512-256-10, Adam 1e-3, "
          f"device {device.type}, compile (c, c32) {args.compile}\n")
    print("| path | first epoch s | epoch s (median) | samples/s | GFLOP/s | % of matmul rate |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows.values():
        print(f"| {row['path']} | {row['first_s']:.2f} | {row['epoch_s']:.2f} | {row['samples_per_s']:,.0f} | "
              f"{row['gflops']:.1f} | {100 * row['gflops'] / peak:.0f}% |")
    print()
    for mine in ("c32", "c"):
        for other in ("a", "b", "b_fused"):
            if mine in rows and other in rows:
                ratio = rows[mine]["epoch_s"] / rows[other]["epoch_s"]
                print(f"({mine})/({other.replace('_fused', chr(39))}) time per epoch: {ratio:.2f}"
                      f"  ({1 / ratio:.1f}x {'faster' if ratio < 1 else 'slower'})")


if __name__ == "__main__":
    main()
