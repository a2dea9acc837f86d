"""Typed, frozen run configuration: YAML files plus ``--set section.key=value`` overrides.

Every key is checked against the dataclass fields: an unknown key is an error that lists the
valid keys, and an override's value is converted to the field's type (or rejected).

Example:
    >>> cfg = load_config(None, ["train.lr=3e-4", "data.features.text=/data/t.npy", "loss.name=siglip"])
    >>> cfg.train.lr, cfg.data.features, cfg.loss.name
    (0.0003, {'text': '/data/t.npy'}, 'siglip')
    >>> load_config(None, ["train.lrr=1"])
    Traceback (most recent call last):
    ...
    modalign.errors.ConfigError: unknown key 'train.lrr'; valid keys in 'train': accumulate, batch_size, chunk_size, device, early_stopping, epochs, grad_clip, log_every, lr, min_lr_ratio, num_threads, num_workers, sampler, seed, tensorboard, warmup_steps, weight_decay
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dacite
import yaml

from modalign.errors import ConfigError


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r}: must be {rule}")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@dataclass(frozen=True)
class EncoderConfig:
    """Which registered encoder reads a modality, and its constructor options."""

    name: str = "precomputed"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HeadConfig:
    """Projection head from encoder features to the shared space (see ``modalign.model.heads``)."""

    kind: Literal["linear", "mlp"] = "mlp"
    hidden_dim: int = 1024
    dropout: float = 0.1
    input_norm: Literal["layer", "batch", "none"] | None = (
        None  # None: layer for mlp, none for linear
    )
    bias: bool = False  # linear heads: add a bias (a fitted init needs it to centre features)
    init: str = "auto"  # a key of modalign.model.init.HEAD_INITS ("auto", "cca", "random")
    init_pca_dim: int | None = None  # PCA width before the CCA (None: full rank)
    init_reg: float = 0.1  # covariance shrinkage of the CCA, relative to the mean eigenvalue
    # use another modality's head (one module, trained by both): for modalities whose features
    # live in one space, e.g. spoken descriptions transcribed and embedded by the captions' text
    # encoder; set per modality (``model.heads.<m>.share``), the other fields are then unused
    share: str | None = None

    def __post_init__(self) -> None:
        _require(self.hidden_dim >= 1, "model.head.hidden_dim", self.hidden_dim, ">= 1")
        _require(0 <= self.dropout < 1, "model.head.dropout", self.dropout, "in [0, 1)")
        _require(
            _finite(self.init_reg) and self.init_reg >= 0,
            "model.head.init_reg",
            self.init_reg,
            ">= 0",
        )
        d = self.init_pca_dim
        _require(d is None or d >= 1, "model.head.init_pca_dim", d, ">= 1 or null")


@dataclass(frozen=True)
class DataConfig:
    """Where the paired data is and how it is split.

    ``features`` maps a modality to a feature file (.npy with .ids.json, or .safetensors) whose
    ids are the manifest's cells. ``modalities`` defaults to every modality column.
    ``frame_cache`` is the folder where raw encoders with a fixed front end (``audio_conv``) keep
    their decoded frames between epochs and runs ("auto": ``~/.cache/modalign/frames``, or
    ``$MODALIGN_CACHE_DIR/frames``; null: decode every file every epoch).
    """

    manifest: str = ""
    features: dict[str, str] = field(default_factory=dict)
    modalities: tuple[str, ...] = ()
    split_fractions: dict[str, float] = field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1}
    )
    split_seed: int = 0
    negatives: str = ""  # a CSV (id, negatives) of explicit negatives, e.g. from `modalign mine`
    skip_bad_rows: bool = False
    min_rows: int = 8
    frame_cache: str | None = "auto"

    def __post_init__(self) -> None:
        fr = self.split_fractions
        for name, value in fr.items():
            _require(
                name in ("train", "val", "test"),
                f"data.split_fractions.{name}",
                value,
                "a fraction of train, val or test (unknown split name)",
            )
            _require(
                _finite(value) and value >= 0,
                f"data.split_fractions.{name}",
                value,
                "a finite fraction >= 0",
            )
        _require(
            sum(fr.values()) > 0,
            "data.split_fractions",
            fr,
            "a mapping with at least one positive fraction",
        )
        _require(self.min_rows >= 1, "data.min_rows", self.min_rows, ">= 1")


@dataclass(frozen=True)
class ModelConfig:
    """Per-modality encoders and heads, and the shared space's width.

    ``head`` applies to every modality; ``heads.<modality>`` overrides some of its keys for one
    modality (a 6,000-wide fingerprint may want another head than a 384-wide sentence vector).
    ``head.init`` and its settings apply to the whole model.
    """

    embed_dim: int = 256
    encoders: dict[str, EncoderConfig] = field(default_factory=dict)
    head: HeadConfig = field(default_factory=HeadConfig)
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.embed_dim >= 1, "model.embed_dim", self.embed_dim, ">= 1")
        for modality in self.heads:
            self.head_for(modality)  # type-check every override at load time

    def head_for(self, modality: str) -> HeadConfig:
        """The head config of ``modality``: ``head`` with ``heads.<modality>`` applied.

        Example:
            >>> m = ModelConfig(head=HeadConfig(kind="linear"), heads={"fp": {"kind": "mlp"}})
            >>> m.head_for("fp").kind, m.head_for("text").kind
            ('mlp', 'linear')
        """
        override = self.heads.get(modality)
        if not override:
            return self.head
        _check_keys(override, HeadConfig, f"model.heads.{modality}")
        merged = {**dataclasses.asdict(self.head), **override}
        try:
            return dacite.from_dict(HeadConfig, merged, config=dacite.Config(strict=True))
        except dacite.DaciteError as err:
            raise ConfigError(f"model.heads.{modality}: {err}") from None


@dataclass(frozen=True)
class LossConfig:
    """The contrastive objective over the modalities.

    ``objective`` names how modalities combine (``modalign.losses.objectives``: ``all_pairs``, or
    ``anchor`` to align every modality with ``anchor`` only); ``name`` is the pair loss
    (``modalign.losses.LOSSES``). ``pairs`` lists modality pairs to align (default: every pair,
    or every pair with the anchor). ``anchor`` also picks the pair a fitted head start uses.
    ``init_temperature`` and ``init_bias`` default to the loss's registered values (0.07 for
    InfoNCE as in CLIP; 0.1 and -10 for SigLIP as in its paper). ``tile_size`` bounds the loss's
    memory (None: the engine's default).

    Several modalities (``modalign.losses.objectives``): ``weights`` weighs pairs of
    ``all_pairs``/``anchor`` (``{"image-caption": 2.0}``; unlisted pairs weigh 1); ``symile`` and
    ``gram`` see all modalities at once. Modality gap: ``learn_temperature: false`` fixes the
    temperature; ``final_temperature`` moves it geometrically from the initial one to this value
    over ``temperature_steps`` optimiser steps (not learnt); ``uniformity`` adds that weight
    times the uniformity term of Wang and Isola (2020) per modality. ``options`` are the pair
    loss's own hyperparameters (``hn_nce``: ``alpha``, ``beta``; ``debiased``: ``tau_plus``).
    """

    name: str = "infonce"
    objective: str = "all_pairs"
    anchor: str | None = None
    pairs: tuple[tuple[str, str], ...] = ()
    weights: dict[str, float] = field(default_factory=dict)
    init_temperature: float | None = None
    learn_temperature: bool = True
    final_temperature: float | None = None
    temperature_steps: int = 1000
    uniformity: float = 0.0
    max_scale: float = 100.0
    init_bias: float | None = None
    tile_size: int | None = None
    options: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(
            self.tile_size is None or self.tile_size >= 1,
            "loss.tile_size",
            self.tile_size,
            "a positive integer or null",
        )
        _require(
            _finite(self.max_scale) and self.max_scale > 0,
            "loss.max_scale",
            self.max_scale,
            "positive and finite",
        )
        t = self.init_temperature
        _require(
            t is None or (_finite(t) and t > 0), "loss.init_temperature", t, "positive and finite"
        )
        b = self.init_bias
        _require(b is None or _finite(b), "loss.init_bias", b, "finite or null")
        t = self.final_temperature
        _require(t is None or t > 0, "loss.final_temperature", t, "positive")
        _require(
            self.temperature_steps >= 1, "loss.temperature_steps", self.temperature_steps, ">= 1"
        )
        _require(self.uniformity >= 0, "loss.uniformity", self.uniformity, ">= 0")
        for pair, w in self.weights.items():
            _require(w >= 0, f"loss.weights.{pair}", w, ">= 0")


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Stop when ``metric`` on the val split has not improved for ``patience`` epochs.

    ``metric`` is a full key (``val/image_to_text/recall@1``) or a bare metric name
    (``recall@1``), which means its mean over every retrieval direction on the val split.
    """

    metric: str = "recall@1"
    mode: Literal["max", "min"] = "max"
    patience: int = 5

    def __post_init__(self) -> None:
        _require(self.patience >= 1, "train.early_stopping.patience", self.patience, ">= 1")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: AdamW, linear warm-up then cosine decay, clipping, accumulation."""

    epochs: int = 20
    batch_size: int = 256
    chunk_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    accumulate: int = 1
    seed: int = 0
    num_workers: int = 0
    num_threads: int | None = None  # intra-op threads; None: chosen per epoch (modalign/threads.py)
    device: str = "auto"
    log_every: int = 10
    tensorboard: bool = True
    sampler: str = "unique_groups"  # a key of modalign.data.samplers.SAMPLERS
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)

    def __post_init__(self) -> None:
        for key in ("epochs",):
            _require(getattr(self, key) >= 0, f"train.{key}", getattr(self, key), ">= 0")
        for key in ("batch_size", "accumulate", "log_every"):
            _require(getattr(self, key) >= 1, f"train.{key}", getattr(self, key), ">= 1")
        _require(
            self.chunk_size is None or self.chunk_size >= 1,
            "train.chunk_size",
            self.chunk_size,
            ">= 1 or null",
        )
        _require(_finite(self.lr) and self.lr > 0, "train.lr", self.lr, "positive and finite")
        wd = self.weight_decay
        _require(_finite(wd) and wd >= 0, "train.weight_decay", wd, ">= 0 and finite")
        _require(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, ">= 0")
        clip = self.grad_clip
        _require(
            clip is None or (clip > 0 and not math.isnan(clip)),
            "train.grad_clip",
            clip,
            "positive (the largest gradient norm) or null for no clipping",
        )
        _require(self.num_workers >= 0, "train.num_workers", self.num_workers, ">= 0")
        _require(
            self.num_threads is None or self.num_threads >= 1,
            "train.num_threads",
            self.num_threads,
            ">= 1 or null",
        )
        _require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", self.min_lr_ratio, "in [0, 1]")
        _require(
            self.device == "auto" or _is_device(self.device),
            "train.device",
            self.device,
            "auto, cpu, cuda or cuda:N",
        )


def _is_device(name: str) -> bool:
    import torch

    try:
        torch.device(name)
    except RuntimeError:
        return False
    return True


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation after training: retrieval cut-offs, chunking, which splits."""

    ks: tuple[int, ...] = (1, 5, 10)
    chunk_size: int = 1024
    splits: tuple[str, ...] = ("val", "test")

    def __post_init__(self) -> None:
        _require(
            bool(self.ks) and all(type(k) is int and k >= 1 for k in self.ks),
            "eval.ks",
            list(self.ks),
            "a non-empty list of integers >= 1",
        )
        _require(self.chunk_size >= 1, "eval.chunk_size", self.chunk_size, ">= 1")
        for split in self.splits:
            _require(
                split in ("train", "val", "test"),
                "eval.splits",
                list(self.splits),
                "a list of train, val, test",
            )
        _require(
            bool(self.splits),
            "eval.splits",
            list(self.splits),
            "a non-empty list of train, val, test",
        )


@dataclass(frozen=True)
class Config:
    """A whole run."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    codebook: CodebookConfig = field(default_factory=lambda: CodebookConfig())


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults), apply ``key=value`` overrides, type-check.

    Relative data paths written in the file are relative to the file's folder; relative paths
    given as overrides are relative to the current directory (where the user typed them). The
    result holds absolute paths.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        if path.is_dir():
            raise ConfigError(f"{path}: is a folder, not a config file")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
            why = " ".join(str(err).split())
            raise ConfigError(f"{path}: invalid YAML ({why})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        raw = loaded or {}
    _check_keys(raw, Config, "")
    if path is not None:  # anchor the file's own paths before overrides add theirs
        raw = to_dict(resolve_paths(from_dict(raw, origin=str(path)), path.parent))
    for item in overrides or []:
        apply_override(raw, item)
    cfg = from_dict(raw, origin=str(path) if path else "--set")
    return resolve_paths(cfg, Path.cwd())


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with ``key=value`` overrides applied (type-checked; relative paths anchored to the
    current directory, as on the command line).

    Example:
        >>> with_overrides(Config(), ["train.epochs=3"]).train.epochs
        3
    """
    raw = to_dict(cfg)
    for item in overrides:
        apply_override(raw, item)
    return resolve_paths(from_dict(raw, origin="--set"), Path.cwd())


def from_dict(raw: dict[str, Any], origin: str = "config") -> Config:
    """Build a ``Config`` from a plain mapping, with type checks."""
    _check_keys(raw, Config, "")
    try:
        return dacite.from_dict(
            Config,
            raw,
            config=dacite.Config(strict=True, cast=[tuple], type_hooks={float: _to_float}),
        )
    except dacite.WrongTypeError as err:
        value = _raw_value(raw, err.field_path or "", err.value)
        raise ConfigError(
            f"{origin}: {err.field_path} = {value!r}: must be {_type_text(err.field_type)}"
        ) from None
    except dacite.DaciteError as err:
        raise ConfigError(f"{origin}: {err}") from None


def _raw_value(raw: dict[str, Any], dotted: str, default: Any) -> Any:
    """The value the user wrote at ``dotted`` (dacite reports it after casting)."""
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _type_text(tp: Any, plural: bool = False) -> str:
    """A type as a person would say it: ``tuple[int, ...]`` -> ``a list of integers``.

    Example:
        >>> _type_text(tuple[int, ...]), _type_text(dict[str, str]), _type_text(float | None)
        ('a list of integers', 'a mapping of names to strings', 'a number or null')
    """
    base = _strip_optional(tp)
    if base is not tp:
        return f"{_type_text(base, plural)} or null"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    simple = {int: "integer", float: "number", str: "string", bool: "boolean"}
    if tp in simple:
        return (
            simple[tp] + "s" if plural else f"an {simple[tp]}" if tp is int else f"a {simple[tp]}"
        )
    if origin is tuple:
        inner = (
            _type_text(args[0], plural=True)
            if len(args) == 2 and args[1] is Ellipsis
            else f"{len(args)} values"
        )
        return f"lists of {inner}" if plural else f"a list of {inner}"
    if origin is dict:
        return f"a mapping of names to {_type_text(args[1], plural=True)}"
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if dataclasses.is_dataclass(tp):
        return "sections (mappings of keys)" if plural else "a section (a mapping of keys)"
    return "values" if plural else "a value"


def _to_float(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | str):
        try:
            return float(value)
        except ValueError:
            return value  # dacite reports the wrong type with the field's name
    return value


def to_dict(cfg: Config) -> dict[str, Any]:
    """A plain, YAML-friendly mapping (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return typing.cast(dict[str, Any], plain(dataclasses.asdict(cfg)))


def save_config(cfg: Config, path: Path) -> None:
    """Write the fully resolved config as YAML, atomically."""
    from modalign.io import write_atomic

    write_atomic(path, lambda f: yaml.safe_dump(to_dict(cfg), f, sort_keys=False))


def resolve_paths(cfg: Config, base: Path) -> Config:
    """Anchor relative data paths (manifest, feature files) to ``base``."""

    def anchor(p: str) -> str:
        return p if not p or Path(p).is_absolute() else str((base / p).resolve())

    data = dataclasses.replace(
        cfg.data,
        manifest=anchor(cfg.data.manifest),
        features={k: anchor(v) for k, v in cfg.data.features.items()},
        frame_cache=cfg.data.frame_cache
        if cfg.data.frame_cache in (None, "auto")
        else anchor(cfg.data.frame_cache),
        negatives=anchor(cfg.data.negatives),
    )
    return dataclasses.replace(cfg, data=data)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override to ``raw`` in place, converting value to the field's type."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    parts = key.strip().split(".")
    node: dict[str, Any] = raw
    tp: Any = Config
    for depth, part in enumerate(parts):
        tp = _child_type(tp, part, ".".join(parts[:depth]), key)
        if depth == len(parts) - 1:
            node[part] = _parse_value(text.strip(), tp, key)
        else:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override {key!r}: {'.'.join(parts[: depth + 1])} is not a section"
                )
            node = child


def _child_type(tp: Any, part: str, where: str, key: str) -> Any:
    tp = _strip_optional(tp)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        if part not in hints:
            valid = ", ".join(sorted(hints))
            raise ConfigError(
                f"unknown key {key!r}; valid keys in {where or 'the config'!r}: {valid}"
            )
        return hints[part]
    if typing.get_origin(tp) is dict:
        return typing.get_args(tp)[1]
    raise ConfigError(f"override {key!r}: {where!r} holds a value, not a section")


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _parse_value(text: str, tp: Any, key: str) -> Any:
    optional = _strip_optional(tp) is not tp
    base = _strip_optional(tp)
    if optional and text.lower() in ("none", "null", "~"):
        return None
    try:
        if base is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
                raise ValueError(text)
            return lowered in ("true", "yes", "1", "on")
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        if base is str:
            return text
        if typing.get_origin(base) is Literal:
            if text not in typing.get_args(base):
                raise ValueError(text)
            return text
        return yaml.safe_load(text)  # lists, mappings, Any: YAML syntax, checked by dacite
    except (ValueError, yaml.YAMLError):
        raise ConfigError(f"override {key!r}: {text!r} is not {_type_text(tp)}") from None


def _check_keys(raw: Any, tp: Any, where: str) -> None:
    if raw is not None and typing.get_origin(_strip_optional(tp)) is tuple:
        _check_list(raw, _strip_optional(tp), tp, where)
    tp = _strip_optional(tp)
    if not isinstance(raw, dict):
        return
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        for key, value in raw.items():
            if key not in hints:
                full = f"{where}.{key}" if where else str(key)
                valid = ", ".join(sorted(hints))
                raise ConfigError(
                    f"unknown key {full!r}; valid keys in {where or 'the config'!r}: {valid}"
                )
            _check_keys(value, hints[key], f"{where}.{key}" if where else key)
    elif typing.get_origin(tp) is dict:
        for key, value in raw.items():
            _check_keys(value, typing.get_args(tp)[1], f"{where}.{key}")


def _check_list(raw: Any, tp: Any, declared: Any, where: str) -> None:
    """A list field holds a list (of lists, for nested tuples): dacite would ``tuple()`` anything."""
    args = typing.get_args(tp)
    inner = args[0] if len(args) == 2 and args[1] is Ellipsis else None
    ok = isinstance(raw, list | tuple) and (
        inner is None
        or typing.get_origin(inner) is not tuple
        or all(isinstance(v, list | tuple) for v in raw)
    )
    if not ok:
        raise ConfigError(f"{where} = {raw!r}: must be {_type_text(declared)}")


# --------------------------------------------------------------------------- codebook section
# Owned by modalign.quantize (discrete unified representations); ``modalign train`` runs the
# codebook trainer instead of the contrastive one when ``codebook.method`` is set.


@dataclass(frozen=True)
class QuantizerConfig:
    """The shared codebook (CMG): size, multi-modal EMA, commitment, matching, restarts."""

    codes: int = 400
    dim: int = 256
    decay: float = 0.99
    epsilon: float = 1e-5
    commitment: float = 0.25
    self_weight: float = 0.5  # a modality's own share of its EMA target
    matching_weight: float = 1.0  # cross-modal code matching
    restart_after: int = 300  # steps unused before a code restarts (0: never)
    init_from_data: bool = True

    def __post_init__(self) -> None:
        _require(self.codes >= 2, "codebook.quantizer.codes", self.codes, ">= 2")
        _require(self.dim >= 1, "codebook.quantizer.dim", self.dim, ">= 1")
        _require(0 < self.decay < 1, "codebook.quantizer.decay", self.decay, "in (0, 1)")
        _require(
            0 <= self.self_weight <= 1,
            "codebook.quantizer.self_weight",
            self.self_weight,
            "in [0, 1]",
        )


@dataclass(frozen=True)
class DisentangleConfig:
    """DCID's parts: CLUB (with its own optimiser), cross-modal CPC, reconstruction."""

    hidden_dim: int = 256
    specific_dim: int = 64
    club_weight: float = 0.1
    club_lr: float = 1e-3
    club_steps: int = 3  # inner steps of the CLUB estimators per batch
    cpc_weight: float = 1.0
    cpc_steps: int = 1  # future steps predicted
    cpc_self_weight: float = 0.1
    recon_weight: float = 1.0

    def __post_init__(self) -> None:
        _require(self.club_steps >= 0, "codebook.disentangle.club_steps", self.club_steps, ">= 0")
        _require(self.cpc_steps >= 1, "codebook.disentangle.cpc_steps", self.cpc_steps, ">= 1")


@dataclass(frozen=True)
class FCIDConfig:
    """FCID's coarse level: InfoNCE of pooled audio/visual to text (the anchors)."""

    temperature: float = 0.1
    align_weight: float = 1.0
    anchors: tuple[str, ...] = ("text",)  # non-temporal modalities the others align to

    def __post_init__(self) -> None:
        _require(self.temperature > 0, "codebook.fcid.temperature", self.temperature, "positive")


@dataclass(frozen=True)
class TOCConfig:
    """Training-free codebook optimisation defaults (``modalign codebook toc``)."""

    lam: float = 0.7
    bottom_share: float = 0.0

    def __post_init__(self) -> None:
        _require(0 <= self.lam <= 1, "codebook.toc.lam", self.lam, "in [0, 1]")


@dataclass(frozen=True)
class CodebookConfig:
    """Discrete unified representations (modalign.quantize); method None: not a codebook run.

    ``cmg``: the shared codebook alone (multi-modal EMA, commitment, code matching, plain
    reconstruction); ``dcid``: + CLUB and cross-modal CPC (CMG's full model); ``fcid``: the
    fine/coarse variant of Huang et al. Optimisation (epochs, lr, batch size, seed, device) comes
    from the ``train`` section, the paired data from ``data`` (``features`` are .npz sequences).
    """

    method: Literal["cmg", "dcid", "fcid"] | None = None
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    disentangle: DisentangleConfig = field(default_factory=DisentangleConfig)
    fcid: FCIDConfig = field(default_factory=FCIDConfig)
    toc: TOCConfig = field(default_factory=TOCConfig)
