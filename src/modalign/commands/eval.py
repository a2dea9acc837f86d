"""``modalign eval RUN_DIR`` or ``modalign eval --embeddings FILE.npz --out DIR``.

Writes ``metrics.json`` (flat :class:`~modalign.types.MetricKey` keys such as
``test/image_to_text/recall@1``, ``...~centered`` after mean centring), ``intervals.json`` (95% bootstrap
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
        "--class-names",
        type=Path,
        help="text file, one class name per line: zero-shot against these classes (for a run, "
        "its manifest's label column holds them; its text modality embeds the prompts)",
    )
    p.add_argument(
        "--template",
        action="append",
        default=[],
        help='a run\'s zero-shot prompt with {} for the class name (repeatable; default "{}")',
    )
    p.add_argument("--text-modality", help="a run's modality that embeds the class prompts")
    p.add_argument(
        "--baselines",
        action="store_true",
        help="a run: also fit random, Procrustes and CCA maps on its train features and report "
        "them beside the model (baselines.json)",
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
    from modalign.types import headline_keys

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
        k.flatten(): round(ev.metrics[k], 4)
        for ev in evaluations
        for k in headline_keys(ev.metrics, split=None)
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
    from modalign.model.inference import embed_split, load_run

    cfg, model, data = load_run(args.run_dir)
    splits = args.splits or cfg.eval.splits
    sets = {split: embed_split(model, data, split, cfg.eval.chunk_size) for split in splits}
    classes = None
    if args.class_names is not None or args.template:
        classes = _run_classes(args, data.label_names, sets)
    if args.baselines:
        _write_baselines(args.out or args.run_dir, data, splits, tuple(args.ks))
    return sets, classes, args.out or args.run_dir


def _run_classes(args: argparse.Namespace, label_names: list[str], sets: dict[str, Any]) -> Any:
    """Zero-shot classes of a run: the class-names file (or its label names), its labels
    re-indexed to them, prototypes from the run's text modality."""
    import numpy as np

    from modalign.commands.zeroshot import read_classes
    from modalign.eval.suite import ClassSpec
    from modalign.model.load import load

    if not label_names:
        raise DataError(
            f"{args.run_dir}: its manifest has no label column to score zero-shot against"
        )
    names = read_classes(None, args.class_names) if args.class_names else label_names
    missing = sorted(set(label_names) - set(names))
    if missing:
        raise DataError(
            f"{args.class_names}: labels {missing[:5]} of the manifest are not class names here"
        )
    remap = np.array([names.index(n) for n in label_names] + [-1], dtype=np.int64)  # -1 -> -1
    for emb in sets.values():
        if emb.labels is not None:
            emb.labels[:] = remap[emb.labels]
    protos = load(args.run_dir).class_prototypes(names, args.template or ["{}"], args.text_modality)
    return ClassSpec(names, protos)


def _write_baselines(out: Path, data: Any, splits: Any, ks: tuple[int, ...]) -> None:
    from modalign.eval.baselines import score_baselines
    from modalign.io import write_json_atomic

    write_json_atomic(out / "baselines.json", score_baselines(data, splits, ks))


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
    from modalign.report import (
        baseline_section,
        evaluation_sections,
        training_section,
        write_report,
    )

    metrics: dict[str, float] = {}
    if merge and (out / "metrics.json").is_file():
        metrics = _read_metrics(out / "metrics.json")
    begin_evaluation(out)
    for ev in evaluations:
        metrics.update({k.flatten(): v for k, v in ev.metrics.items()})
    write_json_atomic(out / "metrics.json", metrics)
    write_json_atomic(
        out / "intervals.json",
        {k.flatten(): list(v) for ev in evaluations for k, v in ev.intervals.items()},
    )
    save_per_query(
        out / "per_query.npz",
        {(ev.split, d): r for ev in evaluations for d, r in ev.retrieval.items()},
    )
    if report:
        sections = []
        if (out / "metrics.jsonl").is_file():
            sections.append(training_section(out / "metrics.jsonl"))
        if (out / "baselines.json").is_file() and merge:
            baselines = json.loads((out / "baselines.json").read_text())
            sections.append(baseline_section(metrics, baselines))
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
