"""float32 vs int8 ONNX (export.py format=onnx [quantize=int8]): test accuracy, agreement, file size, CPU latency.

    python bench/int8.py logs/train/runs/<run>/checkpoints/last.ckpt            # DATA_DIR: the checkpoint's dataset
    python bench/int8.py <ckpt> --threads 2 --out /tmp/int8

Both files are written the way export.py writes them (mlplab.export), then run with onnxruntime on the CPU: the whole
official test set for accuracy, and the median latency of one image and of a batch of 256 (after warm-up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import onnxruntime
import torch

from mlplab.checkpoint_reader import load_trained
from mlplab.data.datamodule import load_split
from mlplab.export import INPUT, metadata, quantize_int8, save_onnx, standalone


def median_ms(session: onnxruntime.InferenceSession, images, repeats: int) -> float:
    for _ in range(max(repeats // 10, 5)):
        session.run(None, {INPUT: images})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {INPUT: images})
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "./data"))
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mlplab-int8"))
    args = parser.parse_args()

    trained = load_trained(args.ckpt)
    args.out.mkdir(parents=True, exist_ok=True)
    fp32, int8 = args.out / "model.onnx", args.out / "model.int8.onnx"
    model = standalone(trained)
    example = torch.rand(8, *trained.info.image_shape)
    with torch.no_grad():
        save_onnx(model, example, fp32, metadata(trained))
    quantize_int8(fp32, int8)

    images, labels = load_split(args.data_dir, trained.dataset, train=False)
    images = (images.float() / 255).unsqueeze(1).numpy()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    rows, predictions = [], {}
    for name, path in (("float32", fp32), ("int8", int8)):
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        predictions[name] = torch.from_numpy(session.run(None, {INPUT: images})[0]).argmax(1)
        accuracy = float((predictions[name] == labels).float().mean())
        one, batch = median_ms(session, images[:1], 2000), median_ms(session, images[:256], 200)
        rows.append(f"| {name} | {path.stat().st_size / 1e3:.1f} kB | {accuracy:.4f} | {one:.3f} ms | {batch:.2f} ms "
                    f"({256 / batch * 1e3:,.0f} images/s) |")
    agreement = float((predictions["float32"] == predictions["int8"]).float().mean())
    print(f"{args.ckpt} on {trained.dataset} test ({len(labels)} images), onnxruntime {onnxruntime.__version__}, "
          f"{args.threads} thread(s); int8 gives float32's class on {agreement:.2%} of them")
    print("| model | file | test accuracy | latency, 1 image | latency, batch of 256 |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
