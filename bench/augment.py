"""Time mlplab's hand-written batched augmentation against kornia's ``augmentation`` module, same transforms.

Four pipelines of growing size, each as mlplab's ``BatchAugment`` (one sampling grid, one ``grid_sample``, one
masked fill) and as kornia (``AugmentationSequential`` of RandomHorizontalFlip, RandomAffine,
RandomElasticTransform, RandomErasing with the same ranges; kornia's elastic alpha is in grid units, so
alpha_pixels * 2 / 28, and its kernel covers +-3 sigma like ours). The two take turns call by call, round robin over the pipelines, on the same
batch of real MNIST training images (DATA_DIR) or random ones, so a shared machine's changing speed falls on
both alike. Prints the median milliseconds per batch and, for scale, one training step of the default MLP.
Also checks that both mirror an image the same way (hflip=1, nothing else).

    pip install kornia && DATA_DIR=../shared/data python bench/augment.py --batch-size 512 --reps 50
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mlplab.choices import DATASETS  # noqa: E402
from mlplab.data.augment import BatchAugment  # noqa: E402
from mlplab.data.datamodule import load_split  # noqa: E402
from mlplab.models import MLP  # noqa: E402

ALPHA, SIGMA = 8.0, 4.0  # elastic distortion in pixels, as in data.augment.elastic_alpha / elastic_sigma
AFFINE = dict(translate=0.1, degrees=10.0, scale=0.1)
PIPELINES = {
    "affine": dict(AFFINE),
    "flip + affine": dict(AFFINE, hflip=0.5),
    "flip + affine + elastic": dict(AFFINE, hflip=0.5, elastic_alpha=ALPHA, elastic_sigma=SIGMA),
    "flip + affine + elastic + erasing": dict(AFFINE, hflip=0.5, elastic_alpha=ALPHA, elastic_sigma=SIGMA, erasing=0.5),
}


def kornia_pipeline(settings: dict, fill: float, size: int):
    import kornia.augmentation as K

    steps = []
    if settings.get("hflip"):
        steps.append(K.RandomHorizontalFlip(p=settings["hflip"]))
    t, s = settings["translate"], settings["scale"]
    steps.append(K.RandomAffine(degrees=settings["degrees"], translate=(t, t), scale=(1 - s, 1 + s), p=1.0))
    if settings.get("elastic_alpha"):
        radius = int(3 * SIGMA)
        alpha = settings["elastic_alpha"] * 2 / size
        steps.append(K.RandomElasticTransform(kernel_size=(2 * radius + 1,) * 2, sigma=(SIGMA, SIGMA), alpha=(alpha, alpha), p=1.0))
    if settings.get("erasing"):
        steps.append(K.RandomErasing(scale=(0.02, 0.2), ratio=(0.3, 3.3), value=0.0, p=settings["erasing"]))
    sequential = K.AugmentationSequential(*steps)
    # kornia pads warps with zeros and erases with a value in [0, 1]: shift so that zero is the background, as mlplab does.
    return lambda images: sequential(images - fill) + fill


def timed(fn, images: torch.Tensor) -> float:
    start = time.perf_counter()
    fn(images)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    import kornia

    torch.manual_seed(0)
    info = DATASETS["mnist"]
    data_dir = os.environ.get("DATA_DIR")
    if data_dir and (Path(data_dir) / "MNIST" / "raw").is_dir():
        raw, _ = load_split(data_dir, "mnist", train=True)
        images = ((raw[: args.batch_size].float() / 255 - info.mean) / info.std).unsqueeze(1)
        source = "real MNIST"
    else:
        images = torch.randn(args.batch_size, 1, 28, 28)
        source = "random"
    fill = -info.mean / info.std
    print(f"torch {torch.__version__}, kornia {kornia.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, batch {args.batch_size} x 1 x 28 x 28 ({source}), {args.reps} reps")

    flipped_ours = BatchAugment(translate=0, degrees=0, scale=0, hflip=1.0)(images, fill=fill)
    import kornia.augmentation as K

    flipped_kornia = K.RandomHorizontalFlip(p=1.0)(images)
    print(f"hflip=1 alone: largest difference ours vs kornia {(flipped_ours - flipped_kornia).abs().max():.2e}")

    net = MLP(784, 10, [512, 256])
    optimizer = torch.optim.Adam(net.parameters(), lr=4e-3, fused=True)
    labels = torch.randint(0, 10, (args.batch_size,))

    def train_step(batch: torch.Tensor) -> None:
        optimizer.zero_grad()
        F.cross_entropy(net(batch), labels).backward()
        optimizer.step()

    pairs = {name: (BatchAugment(**settings), kornia_pipeline(settings, fill, images.shape[-1])) for name, settings in PIPELINES.items()}
    times = {(name, side): [] for name in PIPELINES for side in (0, 1)}
    for rep in range(args.reps + 5):  # round robin over pipelines and sides; the first 5 rounds warm up
        for name, (ours, theirs) in pairs.items():
            for side, fn in enumerate((lambda x, ours=ours: ours(x, fill=fill), theirs)):
                elapsed = timed(fn, images)
                if rep >= 5:
                    times[name, side].append(elapsed)
    print("\n| pipeline | mlplab BatchAugment ms | kornia ms | kornia / mlplab |\n|---|---|---|---|")
    for name in PIPELINES:
        a, b = statistics.median(times[name, 0]), statistics.median(times[name, 1])
        print(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.1f}x |")
    for _ in range(3):
        train_step(images)
    step = statistics.median(timed(train_step, images) for _ in range(args.reps))
    print(f"\nfor scale: one training step of MLP 784-512-256-10 (fp32, fused Adam) at this batch: {step:.2f} ms")


if __name__ == "__main__":
    main()
