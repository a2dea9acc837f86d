"""``modalign index build|add|remove``: a persistent index of items embedded by a trained run.

modalign index build RUN --manifest items.csv --out INDEX [--backend exact|flat|ivf|hnsw|ivfpq]
modalign index add INDEX --manifest more.csv
modalign index remove INDEX --ids ID [ID ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from modalign.commands import add_features_option, open_feature_files


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("index", help="build, grow or shrink a search index of a trained run")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    build = verbs.add_parser("build", help="embed every item of a manifest into a new index")
    build.add_argument("run_dir", type=Path, help="a trained run folder")
    build.add_argument("--manifest", type=Path, required=True, help="the items (one row each)")
    build.add_argument("--out", type=Path, required=True, help="the index folder to write")
    build.add_argument("--backend", default="exact", help="exact, flat, ivf, hnsw or ivfpq")
    build.add_argument("--chunk", type=int, default=4096, help="items embedded at a time")
    add_features_option(build)
    add = verbs.add_parser("add", help="embed a manifest's items into an existing index")
    add.add_argument("index", type=Path, help="the index folder")
    add.add_argument("--manifest", type=Path, required=True)
    add.add_argument("--chunk", type=int, default=4096)
    add_features_option(add)
    remove = verbs.add_parser("remove", help="drop items from an index by id")
    remove.add_argument("index", type=Path, help="the index folder")
    remove.add_argument("--ids", nargs="+", required=True, help="item ids (ROW:MODALITY)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from modalign.index.store import Index

    if args.verb == "remove":
        index = Index.load(args.index)
        index.remove(args.ids)
        index.save(args.index)
        print(json.dumps({"index": str(args.index), "removed": len(args.ids), "items": len(index)}))
        return 0
    if args.verb == "build":
        from modalign.errors import ConfigError

        if (args.out / "CURRENT").exists():
            raise ConfigError(f"{args.out}: already holds an index; use `modalign index add`")
        index = Index(backend=args.backend, run=str(args.run_dir.resolve()))
        run_dir, out = args.run_dir, args.out
    else:
        index = Index.load(args.index)
        run_dir, out = Path(index.run or ""), args.index
    counts = _fill(index, run_dir, args)
    index.save(out)
    print(json.dumps({"index": str(out), "added": counts, "items": len(index)}))
    return 0


def _fill(index: Any, run_dir: Path, args: argparse.Namespace) -> dict[str, int]:
    from modalign.data.manifest import read_manifest, read_table
    from modalign.errors import ConfigError
    from modalign.index.build import add_manifest
    from modalign.model.load import load

    if args.chunk < 1:
        raise ConfigError(f"--chunk {args.chunk}: must be >= 1")
    model = load(run_dir)
    columns = read_table(args.manifest)
    manifest = read_manifest(args.manifest, [m for m in model.modalities if m in columns])
    return add_manifest(index, model, manifest, open_feature_files(args.features), args.chunk)
