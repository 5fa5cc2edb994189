"""The README's picture of serve.py's page: a digit drawn with the mouse in headless Chromium, and the page's answer.

    python serve.py ckpt_path=<run dir> port=8765 &
    python docs/serve_screenshot.py http://127.0.0.1:8765 docs/figures/serve.png

Needs playwright (in .[dev]) and a Chromium (`apt-get install chromium`; another: --chromium <path>).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_serve import draw  # noqa: E402  (the browser test's mouse strokes: one way to draw on the page)

FOUR = [[(0.36, 0.16), (0.24, 0.56), (0.74, 0.56)], [(0.60, 0.24), (0.58, 0.86)]]  # strokes, in canvas fractions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("output")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args()
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=args.chromium, headless=True)
        page = browser.new_page(viewport={"width": 760, "height": 560}, device_scale_factor=1)
        page.goto(args.url)
        page.wait_for_function("document.querySelectorAll('#label option').length > 0")
        draw(page, FOUR)
        page.wait_for_function("window.answered === 2")  # the answer to the whole drawing (one per stroke)
        page.screenshot(path=args.output, full_page=True)
        print(args.output, page.locator("#top").inner_text().replace("\n", " "))
        browser.close()


if __name__ == "__main__":
    main()
