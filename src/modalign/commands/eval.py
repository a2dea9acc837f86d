"""``modalign eval RUN_DIR`` or ``modalign eval --embeddings FILE.npz --out DIR``.

Writes ``metrics.json`` (keys ``{split}/{subject}/{metric}``), ``intervals.json`` (95% bootstrap
intervals of the retrieval metrics), ``per_query.npz`` (for ``modalign compare``) and a
self-contained ``report.html``, then ``eval_complete.json`` last (the outputs are one unit: see
``modalign.eval.files``). A run folder gets them in place (metrics merged into its
``metrics.json``), under the folder's lock; an embeddings file is evaluated as split ``all``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from modalign.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="measure how well an embedding space is aligned, and where it fails",
        description="Retrieval in every direction, diagnostics (similarity distributions, modality gap, "
        "collapse, hubness), zero-shot and probes when labels are given, bootstrap intervals, and a "
        "readable report.html.",
    )
    p.add_argument("run_dir", type=Path, nargs="?", help="a trained run folder")
    p.add_argument(
        "--embeddings", type=Path, help="evaluate this .npz instead of a run (needs --out)"
    )
    p.add_argument(
        "--out", type=Path, help="output folder for --embeddings (default: the run folder)"
    )
    p.add_argument(
        "--splits", nargs="+", help="splits of the run to evaluate (default: the config's)"
    )
    p.add_argument(
        "--class-names", type=Path, help="text file, one class name per line (zero-shot)"
    )
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10], help="retrieval cut-offs")
    p.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap replicates (0: no intervals)"
    )
    p.add_argument("--no-center", action="store_true", help="skip the mean-centred re-evaluation")
    p.add_argument("--no-report", action="store_true", help="write metrics only")
    p.add_argument("--chunk-size", type=int, default=None, help="queries per retrieval chunk")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from modalign.eval.suite import evaluate_split
    from modalign.io import hold_folder

    _check_args(args)
    out = args.out or args.run_dir
    with hold_folder(out, "eval"):  # not while a train (or another eval) writes the folder
        sets, classes, out = _load_inputs(args)
        evaluations = [
            evaluate_split(
                emb,
                split,
                tuple(args.ks),
                classes,
                args.bootstrap,
                not args.no_center,
                args.chunk_size,
            )
            for split, emb in sets.items()
        ]
        _write_outputs(out, evaluations, merge=args.embeddings is None, report=not args.no_report)
    headline = {
        k: round(v, 4)
        for ev in evaluations
        for k, v in ev.metrics.items()
        if k.endswith("/recall@1") and "_centered/" not in k
    }
    print(json.dumps({"out": str(out), **headline}))
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Options a person can get wrong, refused before any work (one line each)."""
    from modalign.data.manifest import SPLITS

    if (args.run_dir is None) == (args.embeddings is None):
        raise ConfigError("give either a run folder or --embeddings FILE.npz (with --out DIR)")
    if args.embeddings is not None and args.out is None:
        raise ConfigError("--embeddings needs --out DIR for the results")
    if args.run_dir is not None and not (args.run_dir / "config.yaml").is_file():
        raise DataError(f"{args.run_dir}: not a run folder (no config.yaml)")
    bad_k = [k for k in args.ks if k < 1]
    if bad_k:
        raise ConfigError(f"--ks {bad_k[0]}: retrieval cut-offs must be >= 1")
    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap {args.bootstrap}: must be >= 0 (0: no intervals)")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise ConfigError(f"--chunk-size {args.chunk_size}: must be >= 1")
    for split in args.splits or []:
        if split not in SPLITS:
            raise ConfigError(f"--splits {split!r}: not a split (one of {', '.join(SPLITS)})")
    if args.class_names is not None and not args.class_names.is_file():
        raise DataError(f"{args.class_names}: class names file not found")


def _load_inputs(args: argparse.Namespace) -> tuple[dict[str, Any], Any, Path]:
    from modalign.eval.files import load_embeddings_npz

    if args.embeddings is not None:
        emb, protos = load_embeddings_npz(args.embeddings)
        return (
            {"all": emb},
            _class_spec(args.class_names, protos, emb.labels, args.embeddings),
            args.out,
        )
    if not args.run_dir.is_dir():
        raise DataError(f"{args.run_dir}: not a run folder")
    from modalign.model.inference import embed_run  # lazy: training pulls in the model stack

    return embed_run(args.run_dir, args.splits), None, args.out or args.run_dir


def _class_spec(names_file: Path | None, protos: Any, labels: Any, source: Path) -> Any:
    from modalign.eval.suite import ClassSpec

    if protos is None:
        if names_file is not None:
            raise ConfigError(
                f"--class-names given but {source} has no 'classes' array of class prototypes"
            )
        return None
    if labels is None:
        raise DataError(
            f"{source}: 'classes' given but no 'label' array to score zero-shot against"
        )
    n = protos.shape[-2]
    names = [f"class {i}" for i in range(n)]
    if names_file is not None:
        try:
            text = names_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{names_file}: cannot read the class names ({err})") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if len(names) != n:
            raise DataError(
                f"{names_file}: {len(names)} class names, but 'classes' in {source} has {n} classes"
            )
    if labels.max() >= n:
        raise DataError(f"{source}: label {int(labels.max())} is out of range for {n} classes")
    return ClassSpec(names, protos)


def _write_outputs(out: Path, evaluations: list[Any], merge: bool, report: bool) -> None:
    from modalign.eval.files import begin_evaluation, finish_evaluation, save_per_query
    from modalign.io import write_json_atomic
    from modalign.report.html import evaluation_sections, training_section, write_report

    metrics: dict[str, float] = {}
    if merge and (out / "metrics.json").is_file():
        metrics = _read_metrics(out / "metrics.json")
    begin_evaluation(out)
    for ev in evaluations:
        metrics.update(ev.metrics)
    write_json_atomic(out / "metrics.json", metrics)
    write_json_atomic(
        out / "intervals.json", {k: list(v) for ev in evaluations for k, v in ev.intervals.items()}
    )
    save_per_query(
        out / "per_query.npz",
        {f"{ev.split}/{p}": r for ev in evaluations for p, r in ev.retrieval.items()},
    )
    if report:
        sections = []
        if (out / "metrics.jsonl").is_file():
            sections.append(training_section(out / "metrics.jsonl"))
        for ev in evaluations:
            sections += [
                type(s)(f"{s.title} ({ev.split})", s.html) for s in evaluation_sections(ev)
            ]
        write_report(
            out / "report.html",
            f"modalign evaluation: {out.name}",
            sections,
            subtitle=", ".join(ev.split for ev in evaluations),
        )
    finish_evaluation(out)
    log.info("wrote %s", out)


def _read_metrics(path: Path) -> dict[str, float]:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the run's metrics ({err})") from None
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: expected a JSON object of metrics")
    return metrics
