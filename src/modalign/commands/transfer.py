"""``modalign transfer RUN --manifest M --label-column label --train-modality A --test-modality B``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from modalign.commands import add_features_option, feature_paths


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "transfer",
        help="cross-modal generalisation: a classifier on one modality's codes, tested on another's",
        description="Fits a logistic regression on the time-pooled codes of A's labelled train rows "
        "and tests it on B's test rows (B's labels are used only to score), beside B's labelled "
        "upper bound and chance; both directions. Train/test rows come from the manifest's split "
        "column (train vs the rest), else a seeded split. Writes transfer.json and report.html.",
    )
    p.add_argument("run_dir", type=Path, help="a codebook run folder")
    p.add_argument("--manifest", type=Path, required=True, help="manifest with labels")
    p.add_argument(
        "--label-column", default="label", help="column holding the class (default label)"
    )
    p.add_argument("--train-modality", required=True, help="modality A")
    p.add_argument("--test-modality", required=True, help="modality B")
    add_features_option(p, "sequence file of a modality (default: the run's data.features)")
    p.add_argument(
        "--toc", action="store_true", help="use only the dimensions kept by `codebook toc`"
    )
    p.add_argument(
        "--test-share", type=float, default=0.3, help="test share without a split column"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN/transfer)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from modalign.io import write_json_atomic
    from modalign.quantize.trainer import load_run
    from modalign.quantize.transfer import transfer_direction, write_transfer_report

    run_ = load_run(args.run_dir)
    a, b = args.train_modality, args.test_modality
    feats, labels, train = labelled_code_features(run_, args, [a, b])
    rows = transfer_direction(feats, labels, train, a, b, args.seed)
    rows += transfer_direction(feats, labels, train, b, a, args.seed)
    out = args.out or args.run_dir / "transfer"
    write_json_atomic(out / "transfer.json", {"toc": bool(args.toc), "results": rows})
    title = f"Cross-modal generalisation: {run_.cfg.codebook.method}{' + TOC' if args.toc else ''}"
    write_transfer_report(out / "report.html", rows, title)
    for r in rows:
        print(json.dumps({"method": run_.cfg.codebook.method, "toc": bool(args.toc), **r}))
    return 0


def labelled_code_features(
    run_: Any, args: argparse.Namespace, modalities: list[str]
) -> tuple[dict, dict, dict]:
    """Pooled code features, labels and train masks of each modality's labelled rows."""
    import numpy as np

    from modalign.errors import ConfigError, DataError
    from modalign.quantize.data import read_paired, read_sequences
    from modalign.quantize.transfer import encode_items, pooled_features

    for m in modalities:
        if m not in run_.model.modalities:
            raise ConfigError(
                f"modality {m!r} is not in the run ({', '.join(run_.model.modalities)})"
            )
    dims = run_.toc_dimensions() if args.toc else None
    if args.toc and dims is None:
        raise DataError(
            f"{args.run_dir / 'toc.json'}: not found; run `modalign codebook toc` first"
        )
    rows = read_paired(args.manifest, modalities, label_column=args.label_column)
    if rows.labels is None:
        raise DataError(f"{args.manifest}: no label column {args.label_column!r}")
    paths = feature_paths(args.features, dict(run_.cfg.data.features))
    rng = np.random.default_rng(args.seed)
    feats, labels, train = {}, {}, {}
    for m in modalities:
        index = np.array(
            [i for i in rows.rows_with(m) if rows.labels[i] is not None], dtype=np.int64
        )
        if len(index) < 2:
            raise DataError(f"{args.manifest}: fewer than 2 labelled rows with modality {m!r}")
        if m not in paths:
            raise ConfigError(f"no sequence file for modality {m!r}: pass --features {m}=PATH")
        quantized, _ = encode_items(
            run_.model, m, rows.features(m, read_sequences(paths[m]), index)
        )
        feats[m] = pooled_features(quantized, dims)
        labels[m] = np.asarray([rows.labels[i] for i in index])
        if rows.splits is not None:
            train[m] = np.asarray([rows.splits[i] == "train" for i in index])
        else:
            train[m] = rng.random(len(index)) >= args.test_share
        if train[m].all() or not train[m].any():
            raise DataError(f"{args.manifest}: modality {m!r} needs both train and test rows")
    return feats, labels, train
