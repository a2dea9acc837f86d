"""``modalign embed``: run frozen encoders over a manifest into feature stores (cached, resumable).

Two ways to say what to embed::

    modalign embed run.yaml [--set data.features.image=feats/image.npy]
    modalign embed --manifest pairs.csv --encoder image=efficientnet_lite0 --encoder text=sentence_transformer \\
        --option image.size=224 --out-dir feats

With a config, every modality whose ``model.encoders`` entry is a raw, frozen encoder is embedded
into ``data.features[modality]`` (default ``OUT_DIR/<modality>.npy``); ``--encoder`` adds to or
replaces those entries.

On several processes (``torchrun --nproc-per-node=N -m modalign embed ...``, or ``--nnodes``
with a shared cache folder) each process computes every N-th batch into the shared cache and the
first one writes the stores, identical to a single process's.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from modalign.commands import add_override_option
from modalign.errors import ConfigError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "embed", help="compute features of a manifest with frozen encoders (cached, resumable)"
    )
    p.add_argument(
        "config", nargs="?", help="YAML config (data.manifest, data.features, model.encoders)"
    )
    add_override_option(p)
    p.add_argument("--manifest", help="manifest to embed (overrides data.manifest)")
    p.add_argument(
        "--encoder",
        action="append",
        default=[],
        metavar="MODALITY=NAME",
        help="encoder for a modality",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="MODALITY.KEY=VALUE",
        help="encoder option (YAML value)",
    )
    p.add_argument(
        "--out-dir", default="features", help="folder for feature files not named by data.features"
    )
    p.add_argument("--cache-dir", help="cache folder (default OUT_DIR/cache)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="items per forward pass (default: each encoder's preferred size)",
    )
    p.add_argument(
        "--shard-size",
        type=int,
        default=256,
        help="items per cache shard: at most this much work is lost to a kill",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers (default: 2 for files, 0 for texts)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave out files that cannot be decoded (counted)",
    )
    p.set_defaults(run=run)


def _split(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
    return key.strip(), value.strip()


def _plan(
    args: argparse.Namespace,
) -> tuple[str, dict[str, tuple[str, dict[str, Any]]], dict[str, str]]:
    """Manifest path, modality -> (encoder name, options), modality -> output path."""
    manifest, specs, outputs = "", {}, {}
    if args.config is not None or args.overrides:
        from modalign.config import load_config

        cfg = load_config(args.config, args.overrides)
        manifest, outputs = cfg.data.manifest, dict(cfg.data.features)
        specs = {m: (e.name, dict(e.options)) for m, e in cfg.model.encoders.items()}
    for item in args.encoder:
        modality, name = _split(item, "--encoder")
        same = modality in specs and specs[modality][0] == name
        specs[modality] = (
            name,
            specs[modality][1] if same else {},
        )  # a new encoder drops old options
    for item in args.option:
        key, value = _split(item, "--option")
        modality, dot, option = key.partition(".")
        if not dot or modality not in specs:
            raise ConfigError(
                f"--option {item!r}: expected MODALITY.KEY=VALUE for a modality given to --encoder"
            )
        specs[modality][1][option] = yaml.safe_load(value)
    manifest = args.manifest or manifest
    if not manifest:
        raise ConfigError("no manifest: give --manifest or a config with data.manifest")
    return manifest, specs, outputs


def run(args: argparse.Namespace) -> int:
    from modalign import distributed

    distributed.init_from_env()  # under torchrun: each process embeds a share of the batches
    try:
        return _run(args, distributed.rank() == 0)
    finally:
        distributed.shutdown()


def _run(args: argparse.Namespace, main: bool) -> int:
    from modalign.data.manifest import read_manifest
    from modalign.encoders import ENCODERS, build_encoder
    from modalign.features.extract import embed_manifest

    for flag, value in (("--batch-size", args.batch_size), ("--shard-size", args.shard_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: must be >= 1")
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers {args.workers}: must be >= 0")
    manifest_path, specs, outputs = _plan(args)
    wanted = {
        m: s
        for m, s in specs.items()
        if s[0] in ENCODERS and ENCODERS.get(s[0]).input_kind == "raw"
    }
    if not wanted:
        raise ConfigError(
            "nothing to embed: give --encoder MODALITY=NAME with a raw encoder (e.g. efficientnet_lite0)"
        )
    manifest = read_manifest(manifest_path)
    encoders = {m: build_encoder(name, m, None, options) for m, (name, options) in wanted.items()}
    out = {m: Path(outputs.get(m) or Path(args.out_dir) / f"{m}.npy") for m in encoders}
    results = embed_manifest(
        manifest,
        encoders,
        out,
        cache_dir=args.cache_dir or Path(args.out_dir) / "cache",
        batch_size=args.batch_size,
        num_workers=args.workers,
        shard_size=args.shard_size,
        progress=not args.no_progress,
        skip_unreadable=args.skip_unreadable,
    )
    if main:
        _print_results(results)
    return 0


def _print_results(results: dict[str, Any]) -> None:
    print(
        f"{'modality':<14}{'items':>7}{'cached':>8}{'computed':>10}{'skipped':>9}{'seconds':>9}  path"
    )
    for m, r in results.items():
        skipped = sum(r.skipped.values())
        print(
            f"{m:<14}{r.n_items:>7}{r.n_cached:>8}{r.n_computed:>10}{skipped:>9}{r.seconds:>9.1f}  {r.path}"
        )
        for reason, count in r.skipped.items():
            print(f"  {m}: skipped {count} item(s): {reason}")
