"""``modalign encode RUN --manifest M --out emb.npz``: embed new items with a trained run.

The output is the embeddings .npz that ``modalign eval --embeddings`` reads: one (N, D) array
per modality (NaN rows where a cell is empty), ``id``, and ``group`` and ``label`` (class
indices; the class names in ``label_names``) when the manifest has those columns.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from modalign.commands import add_features_option, open_feature_files
from modalign.errors import ConfigError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "encode",
        help="embed the items of a manifest with a trained run (writes an embeddings .npz)",
        description="Texts, image and audio paths go through the encoders the run trained on, "
        "then its heads; modalities trained on your own features read them from --features.",
    )
    p.add_argument("run_dir", type=Path, help="a trained run folder")
    p.add_argument(
        "--manifest", type=Path, required=True, help="items to embed (CSV/TSV/JSONL/Parquet)"
    )
    p.add_argument("--out", type=Path, required=True, help="the .npz to write")
    add_features_option(p)
    p.add_argument("--batch-size", type=int, default=64, help="items per forward pass")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from modalign.data.manifest import read_manifest
    from modalign.eval.files import save_embeddings_npz
    from modalign.model.load import encode_manifest, load

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: must be >= 1")
    stores = open_feature_files(args.features)
    model = load(args.run_dir)
    manifest = read_manifest(
        args.manifest, [m for m in model.modalities if m in _columns(args.manifest)]
    )
    emb = encode_manifest(model, manifest, stores, args.batch_size)
    names = sorted({x for x in manifest.labels or [] if x is not None})
    save_embeddings_npz(args.out, emb, names or None)
    counts = {m: int(emb.present(m).sum()) for m in emb.modalities}
    print(json.dumps({"out": str(args.out), "rows": len(emb), "embedded": counts}))
    return 0


def _columns(path: Path) -> list[str]:
    from modalign.data.manifest import read_table

    return list(read_table(path))
