"""Run the search server: ``python server_main.py ROOT PORT UPLOAD_MB`` (for tests).

Builds the test index in ROOT (ROOT/index, images in ROOT/media) with the small real test
encoder (tests/index/real_encoder.py) unless it is there, then serves it with ``create_app``:
the models load once, in this process.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import uvicorn

from modalign.index import Index
from modalign.serve.app import create_app


def main() -> None:
    path = Path(__file__).parents[1] / "index" / "real_encoder.py"
    spec = importlib.util.spec_from_file_location("real_encoder", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    helpers = module.load_helper_module()
    encoder, root = helpers.SmallRealEncoder(), Path(sys.argv[1])
    if not (root / "index" / "CURRENT").is_file():
        helpers.build_test_index(root, encoder)
    app = create_app(Index.load(root / "index"), encoder, max_upload_mb=float(sys.argv[3]))
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")


if __name__ == "__main__":
    main()
