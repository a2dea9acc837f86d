"""Take docs/search-page.png: the search page in headless Chromium, showing results.

Runs the demo (smoke setting) on generated drawings, coloured shapes with captions and tones
(the stamps that ``tests/test_demo.py`` draws; no third-party artwork enters the repository),
serves the index the demo builds, and searches it with a text typed into the page: the trained
run embeds the text, and the page shows the images nearest to it.

Usage:
    python docs/screenshot.py [--out docs/search-page.png] [--query "a blue circle"]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_index(folder: Path) -> Path:
    """The demo's index over generated stamps (trained run included)."""
    sys.path.insert(0, str(ROOT))
    from tests.test_demo import draw_stamps

    from modalign.demo import run_demo

    root = draw_stamps(folder / "stamps", copies=5)
    run_demo(folder / "out", root=root, cache=folder / "cache", smoke=True)
    return folder / "out" / "index"


def shoot(url: str, out: Path, query: str) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "serve"))
    from test_page import new_browser, texts  # type: ignore[import-not-found]

    with tempfile.TemporaryDirectory() as profile:
        driver = new_browser(profile)
        try:
            driver.set_window_size(1100, 760)
            driver.get(url)
            deadline = time.monotonic() + 60
            while "items" not in texts(driver, "#status")[0] and time.monotonic() < deadline:
                time.sleep(0.2)
            driver.execute_script(
                "document.querySelector('#modality').value = 'image'; document.querySelector('#k').value = '20';"
            )
            driver.execute_script(f"search({{text: {query!r}}}, {query!r})")
            while time.monotonic() < deadline and driver.execute_script(
                "const i = [...document.querySelectorAll('#results img')]; return i.length < 20 || !i.every(x => x.complete && x.naturalWidth);"
            ):
                time.sleep(0.2)
            driver.save_screenshot(str(out))
        finally:
            driver.quit()


def wait_ready(port: int) -> None:
    import urllib.request

    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the server did not start")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "search-page.png")
    p.add_argument("--query", default="a blue circle")
    p.add_argument("--port", type=int, default=8765)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_index(Path(tmp))
        proc = subprocess.Popen(
            [sys.executable, "-m", "modalign", "serve", str(folder), "--port", str(args.port)]
        )
        try:
            wait_ready(args.port)
            shoot(f"http://127.0.0.1:{args.port}/", args.out, args.query)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(args.out)


if __name__ == "__main__":
    main()
