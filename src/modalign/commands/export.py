"""``modalign export RUN --format onnx|sentence-transformers --out DIR``: a run for other tools.

``onnx`` writes one graph per modality (``DIR/<modality>.onnx``) and ``DIR/export.json``
(inputs and preprocessing of each graph); ``sentence-transformers`` writes the text tower as a
folder ``SentenceTransformer(DIR)`` loads. See ``modalign.model.export``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a trained run's towers as ONNX graphs or a sentence-transformers folder",
        description="Each tower (source encoder, head, normalisation) becomes one ONNX graph "
        "checked against torch under onnxruntime; or the text tower becomes a "
        "sentence-transformers model folder. Needs the export extra: pip install 'modalign[export]'.",
    )
    p.add_argument("run_dir", type=Path, help="a trained run folder")
    p.add_argument(
        "--format",
        required=True,
        metavar="FORMAT",
        help="onnx or sentence-transformers",
    )
    p.add_argument("--out", type=Path, required=True, help="the folder to write")
    p.add_argument(
        "--modality",
        action="append",
        default=None,
        help="export only this modality (repeatable; default: every one for onnx, the text "
        "modality for sentence-transformers)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from modalign.model.export import export_run
    from modalign.model.load import load

    model = load(args.run_dir, device="cpu")
    description = export_run(model, args.format, args.out, args.modality)
    files = sorted(p.name for p in Path(args.out).iterdir())
    summary = {"out": str(args.out), "format": description["format"], "files": files}
    if "graphs" in description:
        summary["max_abs_diff"] = {m: g["max_abs_diff"] for m, g in description["graphs"].items()}
    print(json.dumps(summary))
    return 0
