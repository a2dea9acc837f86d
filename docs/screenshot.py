"""Take docs/search-page.png: the search page in headless Chromium, showing results.

Indexes the Tux Paint animal stamps (Debian ``tuxpaint-stamps-default``, read in place): images
embedded with EfficientNet-Lite0 and captions with all-MiniLM-L6-v2, each through a fixed
random projection to 256 dimensions (the test encoder of ``tests/index/real_encoder.py``; a
trained run's model takes its place once ``modalign.load`` exists). The page then searches
"items like" one stamp among the images: EfficientNet's own image similarity, so the result
is meaningful without a trained model.

Usage:
    python docs/screenshot.py [--out docs/search-page.png] [--query-id animals/mammals/cat]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMPS = Path("/usr/share/tuxpaint/stamps")


def load_test_encoder_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "real_encoder", ROOT / "tests" / "index" / "real_encoder.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def build_index(folder: Path) -> Path:
    from modalign.data.tuxpaint import scan_stamps
    from modalign.index import Index

    rows = [
        r for r in scan_stamps(STAMPS / "animals", include_svg=False) if r["image"] and r["caption"]
    ]
    encoder = load_test_encoder_module().SmallRealEncoder(dim=256)
    index = Index(model_id=encoder.model_id)
    ids = [f"animals/{r['id']}" for r in rows]
    images = encoder.encode("image", [r["image"] for r in rows])
    index.add(ids, "image", images, [{"source": r["image"], "caption": r["caption"]} for r in rows])
    texts = encoder.encode("text", [r["caption"] for r in rows])
    index.add(
        [f"{i}#caption" for i in ids], "text", texts, [{"caption": r["caption"]} for r in rows]
    )
    return index.save(folder / "index")


def shoot(url: str, out: Path, query_id: str) -> None:
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
            driver.execute_script(
                f"search({{id: {query_id!r}}}, 'items like {query_id.split('/')[-1]}')"
            )
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
    p.add_argument("--query-id", default="animals/mammals/cat")
    p.add_argument("--port", type=int, default=8765)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_index(Path(tmp))
        proc = subprocess.Popen(
            [sys.executable, "-m", "modalign", "serve", str(folder), "--port", str(args.port)]
        )
        try:
            wait_ready(args.port)
            shoot(f"http://127.0.0.1:{args.port}/", args.out, args.query_id)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(args.out)


if __name__ == "__main__":
    main()
