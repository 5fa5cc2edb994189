"""Time and peak memory of reading a large numeric CSV: mlplab's reader (pyarrow, streamed) against polars and pandas.

    python bench/csv_load.py                       # 1,000,000 rows x 100 columns in /tmp/mlplab-bench.csv
    python bench/csv_load.py --rows 100000 --readers mlplab

Each reader runs in a fresh process (peak RSS is per process), loads every column into one float32 array or tensor,
and reports seconds, peak RSS and peak RSS above the process's size before reading. The file is written once
(seeded) and reused. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def write_file(path: Path, rows: int, columns: int) -> None:
    rng = np.random.default_rng(0)
    header = ",".join([f"x{i}" for i in range(columns - 1)] + ["label"])
    with open(path, "w") as file:
        file.write(header + "\n")
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            block = rng.normal(size=(n, columns)).round(5)
            block[:, -1] = rng.integers(0, 10, n)
            np.savetxt(file, block, fmt="%.5g", delimiter=",")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(reader: str, path: Path) -> dict:
    import torch  # imported by every reader's process alike, so the baseline is comparable

    if reader == "mlplab":
        from mlplab.data.csv_data import read_header, read_numbers
    elif reader == "mlplab-datamodule":
        from mlplab.data.csv_data import CSVDataModule
    elif reader == "polars":
        import polars as pl
    elif reader == "pandas":
        import pandas as pd
    before = peak_mib()
    start = time.perf_counter()
    if reader == "mlplab":
        values, labels = read_numbers(path, read_header(path), "label")
    elif reader == "mlplab-datamodule":  # read, test and validation splits, standardization: what a run holds
        datamodule = CSVDataModule(path=str(path), label_column="label", val_size=5000)
        datamodule.setup("fit")
        values = datamodule.train_set[0]
    elif reader == "polars":
        values = torch.from_numpy(pl.read_csv(path, schema_overrides=None).to_numpy().astype(np.float32, copy=False))
    else:
        values = torch.from_numpy(pd.read_csv(path, dtype=np.float32, engine="c").to_numpy())
    seconds = time.perf_counter() - start
    return {"reader": reader, "rows": values.shape[0], "seconds": round(seconds, 2), "peak_rss_mib": round(peak_mib()),
            "peak_above_start_mib": round(peak_mib() - before), "result_mib": round(values.numel() * 4 / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=100)
    parser.add_argument("--path", type=Path, default=Path("/tmp/mlplab-bench.csv"))
    parser.add_argument("--readers", nargs="+", default=["mlplab", "polars", "pandas", "mlplab-datamodule"])
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: measure this reader
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.path)))
        return
    if not args.path.is_file():
        start = time.perf_counter()
        write_file(args.path, args.rows, args.columns)
        print(f"wrote {args.path} ({args.path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.0f} s")
    for reader in args.readers:
        out = subprocess.run([sys.executable, __file__, "--path", str(args.path), "--one", reader],
                             capture_output=True, text=True)
        print(out.stdout.strip() or f"{reader}: failed: {out.stderr.strip().splitlines()[-1:]}")


if __name__ == "__main__":
    main()
