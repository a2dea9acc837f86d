"""``modalign zeroshot RUN --manifest M --modality sound --classes a,b,c --out DIR``.

Classifies the items of one modality against class prompts embedded by the run's text modality
(each class name written into each ``--template``, templates averaged: CLIP's prompt
ensembling), and writes top-1/top-5, balanced and per-class accuracy, the confusion matrix,
``metrics.json`` and ``report.html`` (with linear-probe and k-NN accuracies beside, when every
class has enough items).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from modalign.commands import add_features_option, open_feature_files
from modalign.errors import ConfigError, DataError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "zeroshot",
        help="classify items of one modality zero-shot against class prompts, with a report",
        description="Embeds class names through the run's text modality and each item through its "
        "own modality, then scores nearest-prototype classification against a label column.",
    )
    p.add_argument("run_dir", type=Path, help="a trained run folder")
    p.add_argument("--manifest", type=Path, required=True, help="labelled items")
    p.add_argument("--modality", required=True, help="the modality of the items to classify")
    p.add_argument("--label-column", default="label", help="manifest column with class names")
    p.add_argument("--classes", help="comma-separated class names (as in the label column)")
    p.add_argument("--classes-file", type=Path, help="one class name per line")
    p.add_argument(
        "--template",
        action="append",
        default=[],
        help='prompt with {} for the class name, e.g. "a sound of a {}" (repeatable; default "{}")',
    )
    p.add_argument(
        "--text-modality", help="modality that embeds the prompts (default: the text one)"
    )
    add_features_option(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--bootstrap", type=int, default=0, help="bootstrap replicates")
    p.set_defaults(run=run)


def read_classes(classes: str | None, classes_file: Path | None) -> list[str]:
    """Class names from ``--classes a,b`` or ``--classes-file`` (exactly one of them)."""
    if (classes is None) == (classes_file is None):
        raise ConfigError("give the class names with --classes a,b,c or --classes-file FILE")
    if classes_file is not None:
        try:
            text = classes_file.read_text(encoding="utf-8")
        except OSError as err:
            raise DataError(f"{classes_file}: cannot read class names ({err.strerror})") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        names = [c.strip() for c in (classes or "").split(",") if c.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"need at least two distinct class names, got {names}")
    return names


def label_column(path: Path, column: str, classes: list[str]) -> np.ndarray:
    """Class index of every row's label (-1 where empty); an unknown label is an error."""
    from modalign.data.manifest import read_table

    table = read_table(path)
    if column not in table:
        raise DataError(f"{path}: no label column {column!r} (columns: {', '.join(table)})")
    index = {c: i for i, c in enumerate(classes)}
    out = np.full(len(table[column]), -1, dtype=np.int64)
    for row, value in enumerate(table[column]):
        if value is None:
            continue
        if value not in index:
            raise DataError(
                f"{path}, row {row + 1}, field {column!r}: label {value!r} is not one of the classes"
            )
        out[row] = index[value]
    return out


def run(args: argparse.Namespace) -> int:
    from modalign.commands.eval import _write_outputs
    from modalign.data.manifest import read_manifest
    from modalign.eval.suite import ClassSpec, evaluate_split
    from modalign.model.load import encode_manifest, load
    from modalign.types import EmbeddingSet

    classes = read_classes(args.classes, args.classes_file)
    model = load(args.run_dir)
    manifest = read_manifest(args.manifest, [args.modality])
    labels = label_column(args.manifest, args.label_column, classes)
    stores = open_feature_files(args.features)
    x = encode_manifest(model, manifest, stores).embeddings[args.modality]
    keep = ~np.isnan(x).any(axis=1) & (labels >= 0)
    if not keep.any():
        raise DataError(f"{args.manifest}: no row has both a {args.modality!r} cell and a label")
    protos = model.class_prototypes(classes, args.template or ["{}"], args.text_modality)
    ids = [manifest.ids[i] for i in np.flatnonzero(keep)]
    emb = EmbeddingSet({args.modality: x[keep]}, ids, None, labels[keep])
    ev = evaluate_split(emb, "all", classes=ClassSpec(classes, protos), n_boot=args.bootstrap)
    args.out.mkdir(parents=True, exist_ok=True)
    _write_outputs(args.out, [ev], merge=False, report=True)
    shown = {
        k.flatten(): round(v, 4) for k, v in ev.metrics.items() if k.metric.startswith("zero_shot")
    }
    print(json.dumps({"out": str(args.out), "items": int(keep.sum()), **shown}))
    return 0
