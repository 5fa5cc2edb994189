"""How fast a command answers before anything trains: wall and CPU seconds of whole `python train.py ...` commands.

    python bench/startup.py                      # this checkout
    python bench/startup.py --tree /tmp/before   # another checkout of mlplab (its src/ first on the path)

CPU seconds (user + sys of the child) move less than wall time on a shared machine; both are printed.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = [
    "optimizer=adamx",                                        # a refused option
    "optimizer.lrr=1",                                        # a refused key
    "model.dropout=1.5",                                      # a refused value
    "--help",
    "--cfg job",
    "--cfg job optimizer.lr=0.01 hydra.job.chdir=false",      # accepted keys and a Hydra setting
]


def timed(command: list[str], tree: Path) -> tuple[float, float]:
    env = os.environ | {"PYTHONPATH": str(tree / "src")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print("| command | wall s (median, min-max) | CPU s (median) |\n| --- | ---: | ---: |")
    for text in COMMANDS:
        runs = [timed([sys.executable, "train.py", *text.split()], args.tree) for _ in range(args.runs)]
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        print(f"| `python train.py {text}` | {statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f}) "
              f"| {statistics.median(cpus):.2f} |")


if __name__ == "__main__":
    main()
