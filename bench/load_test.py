"""A bounded load test of serve.py's JSON endpoint: a fixed number of requests, some malformed, then it stops.

    python bench/load_test.py logs/train/runs/<run>                     # 2000 requests, 8 at a time, 1 in 10 bad
    python bench/load_test.py <checkpoint> --requests 500 --concurrency 2

It starts ``python serve.py ckpt_path=<run or checkpoint>`` on a free port of 127.0.0.1, waits until it answers,
then sends the requests from ``--concurrency`` threads, each over its own keep-alive connection: MNIST test digits
(from DATA_DIR; else synthetic strokes) drawn as dark ink on a white 280x280 PNG, as the page's canvas sends them,
and every ``--bad-every``-th request a malformed one (empty, not an image, a blank canvas, broken JSON, bad
base64, over the size limit). It checks that every good request got 200, every bad one a 4xx with a one-line
``detail``, and none a 5xx or a dropped connection, and that the server still answers afterwards; it prints
requests/s, p50/p99 latency (good requests; bad ones separately) and the accuracy on the digits. Results:
docs/benchmarks.md ("serve.py under load").
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def drawings(count: int) -> tuple[list[bytes], list[int]]:
    """``count`` digits as the page's canvas sends them: dark ink on white, 280x280 PNG; and their labels."""
    data_dir = Path(os.environ.get("DATA_DIR", "data"))
    raw = data_dir / "MNIST" / "raw"
    if (raw / "t10k-images-idx3-ubyte").is_file():
        images = np.fromfile(raw / "t10k-images-idx3-ubyte", np.uint8, offset=16).reshape(-1, 28, 28)[:count]
        labels = np.fromfile(raw / "t10k-labels-idx1-ubyte", np.uint8, offset=8)[:count].tolist()
    else:  # a vertical stroke: a "1"
        images = np.zeros((count, 28, 28), np.uint8)
        images[:, 4:24, 13:15] = 255
        labels = [1] * count
    return [png(Image.fromarray(255 - image).resize((280, 280), Image.Resampling.BILINEAR)) for image in images], labels


BAD = [  # (name, body, content type)
    ("empty", b"", "image/png"),
    ("not an image", b"GIF89a but not really", "image/png"),
    ("blank canvas", png(Image.new("L", (280, 280), 255)), "image/png"),
    ("broken JSON", b'{"image": ', "application/json"),
    ("bad base64", b'{"image": "%%%"}', "application/json"),
    ("too large", b"\0" * 10_000_001, "application/octet-stream"),  # serve.yaml's max_upload_bytes + 1
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(ckpt_path: str, *overrides: str, cwd: Path = ROOT) -> tuple[subprocess.Popen, int]:
    """``python serve.py ckpt_path=... <overrides>`` on a free port, once it answers: (the process, its port)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), f"ckpt_path={ckpt_path}", f"port={port}", *overrides],
                              cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in server.stdout:
        if f"127.0.0.1:{port}" in line:
            break
    else:
        raise SystemExit(f"serve.py did not start (exit status {server.wait()})")
    threading.Thread(target=server.stdout.read, daemon=True).start()  # keep its pipe drained
    return server, port


class Worker(threading.local):
    """One keep-alive connection per thread, reopened when the server closes it (as it does after a 413)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection: http.client.HTTPConnection | None = None

    def post(self, body: bytes, content_type: str) -> tuple[int, bytes, float]:
        start = time.perf_counter()
        for attempt in range(2):
            if self.connection is None:
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self.connection.request("POST", "/predict", body, {"Content-Type": content_type})
                reply = self.connection.getresponse()
                return reply.status, reply.read(), time.perf_counter() - start
            except (ConnectionError, http.client.HTTPException):
                self.connection.close()
                self.connection = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt_path", help="a checkpoint or a run dir, as serve.py takes")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--bad-every", type=int, default=10, help="every n-th request is malformed (0: none)")
    args = parser.parse_args()

    pictures, labels = drawings(500)
    server, port = start_server(args.ckpt_path)
    worker = Worker(port)
    plan = [("bad", *BAD[(i // args.bad_every) % len(BAD)]) if args.bad_every and i % args.bad_every == args.bad_every - 1
            else ("good", i % len(pictures), pictures[i % len(pictures)], "image/png") for i in range(args.requests)]

    def send(item: tuple) -> tuple:
        kind, what, body, content_type = item
        status, reply, seconds = worker.post(body, content_type)
        return kind, what, status, reply, seconds

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(send, plan))
    wall = time.perf_counter() - start

    good = [r for r in results if r[0] == "good"]
    bad = [r for r in results if r[0] == "bad"]
    failures = [f"{what}: HTTP {status}" for kind, what, status, _, _ in good if status != 200]
    failures += [f"{what}: HTTP {status} {reply[:80]!r}" for kind, what, status, reply, _ in bad
                 if not (400 <= status < 500 and "\n" not in json.loads(reply)["detail"])]
    answers = [(json.loads(reply), labels[what]) for _, what, status, reply, _ in good if status == 200]
    correct = sum(answer["top"][0][0] == str(label) for answer, label in answers)
    unsure = sum(answer["not_sure"] for answer, _ in answers)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/info")
    alive = connection.getresponse().status == 200
    server.send_signal(signal.SIGINT)
    stopped = server.wait(timeout=30)

    def latency(rows: list) -> str:
        ms = sorted(1000 * r[4] for r in rows)
        return f"p50 {statistics.median(ms):.1f} ms, p99 {ms[min(len(ms) - 1, int(0.99 * len(ms)))]:.1f} ms"

    print(f"{len(results)} requests ({len(good)} good, {len(bad)} malformed), concurrency {args.concurrency}: "
          f"{len(results) / wall:.0f} requests/s over {wall:.1f} s")
    print(f"good: {latency(good)}; malformed: {latency(bad)} "
          f"(statuses {sorted({r[2] for r in bad})})")
    print(f"top-1 on the drawn test digits: {correct}/{len(good)}, \"not sure\" {unsure}; server answering afterwards: {alive}; "
          f"exit status after Ctrl-C: {stopped}")
    if failures or not alive:
        raise SystemExit(f"{len(failures)} wrong answers, e.g. {failures[:3]}")


if __name__ == "__main__":
    main()
