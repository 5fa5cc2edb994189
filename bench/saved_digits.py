"""The README's three commands with 20 digits that MNIST never showed: train, serve and save, fine-tune.

    python bench/saved_digits.py logs/train/runs/<run>                 # work dir: logs/saved_digits
    python bench/saved_digits.py <run> --per-class 5 --work logs/saved5 finetune.freeze=backbone   # + overrides

A user's own digits are stood in for by bench/font_digits.py's (fonts, thickened, slanted, on noisy paper):
two of each digit from its train/ part are sent to ``serve.py``'s ``POST /samples?label=<digit>``, as the page's
Save button sends a drawing; then the fine-tuning command the page shows (``GET /info``), plus any overrides given
here, runs on the saved folder, and eval.py scores the MNIST model and the fine-tuned one (its best checkpoint on
validation and its last.ckpt) on the 1,000 test/ pictures. Results: docs/benchmarks.md ("Fine-tuning on saved
digits").
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from load_test import ROOT, start_server


def run(command: list[str], cwd: Path, log: Path) -> float:
    """Run a command, its output appended to ``log``, and return its wall time."""
    print("$", shlex.join(command), flush=True)
    start = time.perf_counter()
    with log.open("a") as output:
        subprocess.run(command, cwd=cwd, check=True, env=os.environ | {"PYTHONWARNINGS": "ignore"}, stdout=output,
                       stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="an MNIST run dir (python train.py)")
    parser.add_argument("--work", default="logs/saved_digits")
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--fonts", help="bench/font_digits.py's folder (default: made in the work dir)")
    parser.add_argument("overrides", nargs="*", help="added to the page's fine-tuning command")
    args = parser.parse_intermixed_args()  # overrides after the options too
    work = Path(args.work).resolve()
    fonts = Path(args.fonts).resolve() if args.fonts else work / "font_digits"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    if not fonts.is_dir():
        run([sys.executable, str(ROOT / "bench" / "font_digits.py"), str(fonts)], ROOT, log)

    server, port = start_server(str(Path(args.run_dir).resolve()), f"save_dir={work / 'my_digits'}",
                                f"hydra.run.dir={work / 'serve'}")
    try:
        for digit in range(10):
            for picture in sorted((fonts / "train" / str(digit)).glob("*.png"))[: args.per_class]:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/samples?label={digit}", data=picture.read_bytes(),
                                                 headers={"Content-Type": "image/png"})
                with urllib.request.urlopen(request, timeout=30) as reply:
                    counts = json.loads(reply.read())["counts"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=30) as reply:
            info = json.loads(reply.read())
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    print("saved:", counts)

    python = [sys.executable]
    finetune = shlex.split(info["finetune_command"])[1:] + args.overrides + [f"hydra.run.dir={work / 'finetuned'}"]
    seconds = run([*python, *finetune], ROOT, log)
    finetuned = json.loads((work / "finetuned" / "metrics.json").read_text())
    scores = {}
    for name, ckpt in (("MNIST model", info["checkpoint"]), ("fine-tuned, best on validation", finetuned["best_ckpt"]),
                       ("fine-tuned, last.ckpt", work / "finetuned" / "checkpoints" / "last.ckpt")):
        eval_dir = work / f"eval_{len(scores)}"
        run([*python, "eval.py", f"ckpt_path={ckpt}", "data=image_folder", f"data.root={fonts}", f"hydra.run.dir={eval_dir}"], ROOT, log)
        scores[name] = json.loads((eval_dir / "metrics.json").read_text())["test/acc"]
    print(f"fine-tuning command: {shlex.join(['python', *finetune])}")
    print(f"fine-tuning on {sum(counts.values())} saved pictures: {seconds:.1f} s (whole command); best epoch "
          f"{Path(finetuned['best_ckpt']).name}; the saved folder's own test split: {finetuned['test/acc']:.3f}")
    print("font digits test/ (1,000 pictures): " + ", ".join(f"{name} {acc:.4f}" for name, acc in scores.items()))


if __name__ == "__main__":
    main()
