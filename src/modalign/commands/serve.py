"""``modalign serve INDEX``: the search API and web page on uvicorn (extra ``modalign[serve]``)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from modalign.errors import ConfigError

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve an index: HTTP API (OpenAPI at /docs) and a search page at /",
        description="Loads the index and the run it was built with, then serves them. Listens on "
        "loopback unless --host says otherwise.",
    )
    p.add_argument("index", help="index folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest upload in MiB (default 10)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from modalign.serve.app import create_app
    except ImportError as err:
        raise ConfigError(
            f"serving needs the serve extra: pip install 'modalign[serve]' ({err.name} missing)"
        ) from None
    from modalign.index.query import load_encoder
    from modalign.index.store import Index

    if not 0 < args.port < 65536 or args.max_upload_mb <= 0:
        raise ConfigError("--port must be in 1..65535 and --max-upload-mb positive")
    index = Index.load(args.index)
    encoder = load_encoder(index)
    if encoder is None:
        logging.getLogger(__name__).warning(
            "the index records no run: only --id style queries work"
        )
    if args.host not in LOOPBACK:
        logging.getLogger(__name__).warning(
            "listening on %s: reachable from other machines", args.host
        )
    app = create_app(index, encoder, max_upload_mb=args.max_upload_mb)
    print(
        f"modalign serve: http://{args.host}:{args.port}/ ({len(index)} items; API docs at /docs)"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
