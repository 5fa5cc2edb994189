"""How fast a drawing page answers its first request, and what it costs to install: Gradio against FastAPI + uvicorn.

    python bench/web_start.py --python /tmp/gradio-venv/bin/python --framework gradio
    python bench/web_start.py --python .venv/bin/python --framework fastapi

Each try starts a fresh process with ``--python`` that imports the framework, builds the same small app (a
drawing input, a label output, a button; for FastAPI a page and a JSON route), starts its server on 127.0.0.1
and is timed from process start until ``GET /`` answers 200, and until the import alone finished. torch is left
out: both would import it the same way. Results: docs/benchmarks.md ("The drawing page: Gradio or FastAPI").
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_gradio(port: int) -> None:
    import gradio as gr

    print(f"imported {time.perf_counter():.3f}", flush=True)
    with gr.Blocks() as page:
        drawing = gr.Sketchpad(type="numpy")
        label = gr.Label(num_top_classes=3)
        gr.Button("predict").click(lambda image: {"0": 1.0}, drawing, label)
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=False, quiet=True)


def serve_fastapi(port: int) -> None:
    import fastapi
    import uvicorn
    from fastapi.responses import HTMLResponse

    print(f"imported {time.perf_counter():.3f}", flush=True)
    app = fastapi.FastAPI()
    app.get("/", response_class=HTMLResponse)(lambda: "<canvas></canvas><button>predict</button>")
    app.post("/predict")(lambda: {"top": [["0", 1.0]]})
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def one_try(python: str, framework: str) -> tuple[float, float]:
    """(seconds to import, seconds to the first 200 of ``GET /``), both from process start."""
    port = free_port()
    env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": ""}
    start = time.perf_counter()
    child = subprocess.Popen([python, __file__, "--serve", framework, "--port", str(port)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        imported = float(child.stdout.readline().split()[1])  # the child's perf_counter: system-wide on Linux
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as reply:
                    if reply.status == 200:
                        return imported - start, time.perf_counter() - start
            except OSError:
                if child.poll() is not None:
                    raise SystemExit(f"the {framework} server exited with status {child.returncode}") from None
                time.sleep(0.02)
    finally:
        child.terminate()
        child.wait()


def installed_mib(python: str) -> float:
    """Size of the interpreter's site-packages."""
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    return sum(p.stat().st_size for p in Path(site).rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--framework", choices=("gradio", "fastapi"), default="fastapi")
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--serve", choices=("gradio", "fastapi"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        (serve_gradio if args.serve == "gradio" else serve_fastapi)(args.port)
        return
    one_try(args.python, args.framework)  # warm the file cache: every try after it reads from memory
    tries = [one_try(args.python, args.framework) for _ in range(args.tries)]
    imports, firsts = zip(*tries, strict=True)
    print(f"{args.framework}: import {statistics.median(imports):.2f} s, first response "
          f"{statistics.median(firsts):.2f} s (median of {args.tries}; min {min(firsts):.2f}, max {max(firsts):.2f}); "
          f"site-packages {installed_mib(args.python):.0f} MiB ({args.python})")


if __name__ == "__main__":
    main()
