"""Time training epochs several ways, same model, data, batch size and optimizer, taking turns:

  (a)  the classic tutorial loop: torchvision MNIST + ToTensor + Normalize through a DataLoader;
  (b)  a plain PyTorch loop over tensors decoded once (as written by hand: default Adam);
  (b') the same with fused Adam;
  (c)  mlplab's Trainer path (`python train.py`): its data path, fused Adam and precision (c32: fp32).

All train on the same training split (55,000 MNIST images). Each path runs in a process of its own (nothing one path
imports or allocates can slow another), and the processes take turns epoch by epoch: (a) epoch 1, (b) epoch 1,
..., (a) epoch 2, ... so a shared machine's changing speed falls on every path alike. Prints seconds per epoch
(median of the epochs after the first; the first, with its warm-up or compile, apart), samples/s, achieved
GFLOP/s against a matmul rate measured here, and the ratios of (c) to the others.

    DATA_DIR=../shared/data python bench/speed.py --epochs 5
    python bench/speed.py --device cuda --batch-size 64 --compile --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
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

from mlplab.choices import DATASETS  # noqa: E402
from mlplab.data.datamodule import load_split, split_train_val  # noqa: E402
from mlplab.models import MLP  # noqa: E402

# mlplab.data imports Lightning, which sets this so that looking for GPUs cannot poison a fork; torch's Adam
# then asks NVML on every step. A hand-written loop does not import Lightning: time it without that cost.
os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)

HIDDEN = [512, 256]
PATHS = {
    "a": "(a) classic DataLoader + ToTensor",
    "b": "(b) plain loop, preloaded tensors",
    "b_fused": "(b') plain loop + fused Adam",
    "c32": "(c32) mlplab Trainer, fp32",
    "c": "(c) mlplab Trainer, {precision}",
}


def flops_per_sample(in_features: int = 784, hidden: list[int] = HIDDEN, classes: int = 10) -> int:
    """Matmul FLOPs of one training sample: forward 2mn per layer, backward 4mn (2mn for the first layer,
    whose input needs no gradient)."""
    widths = [in_features, *hidden, classes]
    layers = list(zip(widths[:-1], widths[1:], strict=True))
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


# --- the worker side: one path, one epoch per turn ------------------------------------------------------------
# A worker reads "go" on stdin before each epoch and answers "epoch <seconds>" on its stdout; everything else it
# prints (Lightning's logs and progress bar) goes to stderr.


class Turns:
    def __init__(self) -> None:
        self.replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def wait(self) -> None:
        self.replies.write("ready\n")
        if sys.stdin.readline().strip() != "go":
            sys.exit(0)

    def done(self, seconds: float) -> None:
        self.replies.write(f"epoch {seconds!r}\n")


def run_turns(run_epoch, epochs: int, device: torch.device, turns: Turns) -> None:
    for epoch in range(epochs):
        turns.wait()
        sync(device)
        start = time.perf_counter()
        run_epoch(epoch)
        sync(device)
        turns.done(time.perf_counter() - start)


def train_step(net, optimizer, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    optimizer.step()


def classic_loop(args, train_idx, device, turns: Turns) -> None:
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

    run_turns(run_epoch, args.epochs, device, turns)


def plain_loop(args, train_idx, device, turns: Turns, fused: bool = False) -> None:
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

    run_turns(run_epoch, args.epochs, device, turns)


def mlplab_trainer(args, device, turns: Turns, precision: str) -> None:
    """(c) `python train.py`'s data path, module and Trainer, with the tutorial's recipe: the benchmark's batch
    size, constant LR 1e-3, no augmentation or label smoothing (the default recipe's extras are timed apart)."""
    import lightning as L
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from mlplab.config import validate
    from mlplab.pipeline import build
    from mlplab.timing import EpochTimer

    class TakeTurns(L.Callback):
        """Waits for its turn before each epoch; reports the epoch's training time once its validation is done."""

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            turns.wait()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            turns.done(next(cb for cb in trainer.callbacks if isinstance(cb, EpochTimer)).epoch_seconds[-1])

    overrides = [
        f"data.data_dir={args.data_dir}", f"data.batch_size={args.batch_size}", f"data.val_size={args.val_size}",
        "scheduler=none",
        "optimizer.lr=1e-3", "data.augment.enabled=false", "regularization.label_smoothing=0",
        f"trainer.max_epochs={args.epochs}", f"trainer.precision={precision}",
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}", "trainer.devices=1",
        "trainer.enable_model_summary=false", "callbacks.early_stopping=null", "logger=csv",
        f"compile={args.compile}", f"compile_options.dynamic={args.dynamic}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.output_dir = str(Path(args.out) / f"mlplab_run_{precision}")
    validate(cfg)
    datamodule, module, trainer = build(cfg)
    trainer.callbacks.insert(0, TakeTurns())  # waits before EpochTimer starts its clock
    trainer.fit(module, datamodule=datamodule)


def worker(args) -> None:
    turns = Turns()
    device = torch.device(args.device)
    _, labels = load_split(args.data_dir, "mnist", train=True)
    train_idx, _ = split_train_val(len(labels), args.val_size, seed=0)
    path = args.worker
    if path == "a":
        classic_loop(args, train_idx, device, turns)
    elif path in ("b", "b_fused"):
        plain_loop(args, train_idx, device, turns, fused=path == "b_fused")
    else:
        mlplab_trainer(args, device, turns, "32-true" if path == "c32" else args.precision)


# --- the conductor: start the workers, give turns, summarize --------------------------------------------------


def start_worker(path: str, argv: list[str], out: Path) -> subprocess.Popen:
    log = open(out / f"{path}.log", "w")
    return subprocess.Popen(
        [sys.executable, __file__, *argv, "--worker", path, "--out", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1,
    )


def expect(proc: subprocess.Popen, path: str, out: Path, word: str) -> str:
    line = proc.stdout.readline()
    if not line.startswith(word):
        tail = (out / f"{path}.log").read_text().strip().splitlines()[-15:]
        sys.exit(f"path {path} stopped before its epoch ended; the end of {out / (path + '.log')}:\n" + "\n".join(tail))
    return line


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
    parser.add_argument("--val-size", type=int, default=5000, help="images held out of training, as data.val_size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network in (c)")
    parser.add_argument("--dynamic", action="store_true", help="with --compile: dynamic shapes (default: static)")
    parser.add_argument("--precision", default="auto", help="Lightning precision for (c); (c32) is always 32-true")
    parser.add_argument("--paths", default="a,b,b_fused,c32,c", help="which paths to time, comma-separated")
    parser.add_argument("--out", default=None, help="where the workers' logs and (c)'s run dirs go (default: a temp dir)")
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    out = Path(args.out or tempfile.mkdtemp(prefix="mlplab-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    paths = args.paths.split(",")
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        sys.exit(f"--paths: {','.join(unknown)} not known; choose from {','.join(PATHS)}")
    device = torch.device(args.device)
    peak = matmul_gflops(device)
    argv = [f"--data-dir={args.data_dir}", f"--batch-size={args.batch_size}", f"--epochs={args.epochs}",
            f"--device={args.device}", f"--precision={args.precision}", f"--val-size={args.val_size}"]
    argv += ["--compile"] * args.compile + ["--dynamic"] * args.dynamic
    workers = {path: start_worker(path, argv, out) for path in paths}
    for path, proc in workers.items():  # the set-ups (untimed) run side by side; every one ends before epoch 1
        expect(proc, path, out, "ready")
    seconds: dict[str, list[float]] = {path: [] for path in paths}
    for epoch in range(args.epochs):
        for path, proc in workers.items():
            if epoch > 0:
                expect(proc, path, out, "ready")
            proc.stdin.write("go\n")
            seconds[path].append(float(expect(proc, path, out, "epoch").split()[1]))
        print(f"epoch {epoch + 1}/{args.epochs}: " + ", ".join(f"{p} {s[-1]:.2f} s" for p, s in seconds.items()),
              file=sys.stderr, flush=True)
    for proc in workers.values():
        proc.stdin.close()
        proc.wait()

    from mlplab.pipeline import fastest_precision

    precision = args.precision
    if precision == "auto":
        precision = f"auto = {fastest_precision('gpu' if device.type == 'cuda' else 'cpu')}"
    _, labels = load_split(args.data_dir, "mnist", train=True)
    samples, flops = len(labels) - args.val_size, flops_per_sample()
    rows = {p: summarize(PATHS[p].format(precision=precision), seconds[p], samples, flops) for p in paths}

    threads = torch.get_num_threads()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(f"\nmachine: {gpu or platform.processor() or platform.machine()}, {os.cpu_count()} cores "
          f"({threads} torch threads), torch {torch.__version__}; matmul fp32 {peak:.0f} GFLOP/s")
    print(f"batch {args.batch_size}, {args.epochs} epochs of {samples} samples, MLP 784-512-256-10, Adam 1e-3, "
          f"device {device.type}, compile (c, c32) {args.compile}; paths took turns epoch by epoch\n")
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
