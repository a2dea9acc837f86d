"""``modalign codes RUN --manifest M --out codes.npz``: discrete codes of new items."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from modalign.commands import add_features_option, feature_paths
from modalign.errors import ConfigError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "codes",
        help="write the shared-codebook codes (and quantised features) of a manifest's items",
        description="Encodes every filled cell of the run's modalities in M with a trained codebook "
        "run. The .npz holds, per modality m: m/ids (row ids), m/codes (N, T) and m/quantized "
        "(N, T, D); toc_dimensions when `modalign codebook toc` has run.",
    )
    p.add_argument("run_dir", type=Path, help="a codebook run folder")
    p.add_argument("--manifest", type=Path, required=True, help="manifest whose cells are item ids")
    p.add_argument("--out", type=Path, required=True, help="output .npz")
    add_features_option(p, "sequence file of a modality (default: the run's data.features)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from modalign.data.manifest import read_table
    from modalign.errors import DataError
    from modalign.io import atomic_path
    from modalign.quantize.data import read_paired, read_sequences
    from modalign.quantize.trainer import load_run
    from modalign.quantize.transfer import encode_items

    run_ = load_run(args.run_dir)
    paths = feature_paths(args.features, dict(run_.cfg.data.features))
    columns = read_table(args.manifest)
    present = [m for m in run_.model.modalities if m in columns]
    if not present:
        raise DataError(
            f"{args.manifest}: no column for any of the run's modalities ({', '.join(run_.model.modalities)})"
        )
    arrays: dict[str, np.ndarray] = {}
    rows = read_paired(args.manifest, present, label_column=None)
    for m in present:
        if m not in paths:
            raise ConfigError(f"no sequence file for modality {m!r}: pass --features {m}=PATH")
        index = rows.rows_with(m)
        quantized, codes = encode_items(
            run_.model, m, rows.features(m, read_sequences(paths[m]), index)
        )
        arrays[f"{m}/ids"] = np.asarray([rows.ids[i] for i in index])
        arrays[f"{m}/codes"], arrays[f"{m}/quantized"] = codes, quantized
    toc = run_.toc_dimensions()
    if toc is not None:
        arrays["toc_dimensions"] = toc
    with atomic_path(args.out) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    print(json.dumps({"out": str(args.out), **{m: len(arrays[f"{m}/ids"]) for m in present}}))
    return 0
