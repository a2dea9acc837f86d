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
    modalign.errors.ConfigError: unknown key 'train.lrr'; valid keys in 'train': accumulate, batch_size, chunk_size, device, early_stopping, epochs, grad_clip, log_every, lr, min_lr_ratio, num_threads, num_workers, seed, tensorboard, warmup_steps, weight_decay
"""

from __future__ import annotations

import dataclasses
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
    init: Literal["random", "cca"] = "random"  # "cca": see modalign.model.init
    init_pca_dim: int | None = None  # PCA width before the CCA (None: full rank)
    init_reg: float = 0.1  # covariance shrinkage of the CCA, relative to the mean eigenvalue


@dataclass(frozen=True)
class DataConfig:
    """Where the paired data is and how it is split.

    ``features`` maps a modality to a feature file (.npy with .ids.json, or .safetensors) whose
    ids are the manifest's cells. ``modalities`` defaults to every modality column.
    """

    manifest: str = ""
    features: dict[str, str] = field(default_factory=dict)
    modalities: tuple[str, ...] = ()
    split_fractions: dict[str, float] = field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1}
    )
    split_seed: int = 0
    skip_bad_rows: bool = False
    min_rows: int = 8


@dataclass(frozen=True)
class ModelConfig:
    """Per-modality encoders and heads, and the shared space's width."""

    embed_dim: int = 256
    encoders: dict[str, EncoderConfig] = field(default_factory=dict)
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass(frozen=True)
class LossConfig:
    """The contrastive objective over pairs of modalities.

    ``pairs`` lists modality pairs to align (default: every pair). ``init_temperature`` defaults
    to 0.07 for InfoNCE (CLIP) and 0.1 for SigLIP; ``init_bias`` to -10 for SigLIP (the paper's
    values). ``tile_size`` bounds the loss's memory (None: the engine's default).
    """

    name: str = "infonce"
    pairs: tuple[tuple[str, str], ...] = ()
    init_temperature: float | None = None
    learn_temperature: bool = True
    max_scale: float = 100.0
    init_bias: float | None = None
    tile_size: int | None = None

    def __post_init__(self) -> None:
        _require(
            self.tile_size is None or self.tile_size >= 1,
            "loss.tile_size",
            self.tile_size,
            "a positive integer or null",
        )
        _require(self.max_scale > 0, "loss.max_scale", self.max_scale, "positive")
        t = self.init_temperature
        _require(t is None or t > 0, "loss.init_temperature", t, "positive")


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
        _require(self.lr > 0, "train.lr", self.lr, "positive")
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
            bool(self.ks) and min(self.ks) >= 1,
            "eval.ks",
            list(self.ks),
            "a non-empty list of integers >= 1",
        )
        _require(self.chunk_size >= 1, "eval.chunk_size", self.chunk_size, ">= 1")


@dataclass(frozen=True)
class Config:
    """A whole run."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


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
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML ({err})") from None
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


def from_dict(raw: dict[str, Any], origin: str = "config") -> Config:
    """Build a ``Config`` from a plain mapping, with type checks."""
    _check_keys(raw, Config, "")
    try:
        return dacite.from_dict(
            Config,
            raw,
            config=dacite.Config(strict=True, cast=[tuple], type_hooks={float: _to_float}),
        )
    except dacite.DaciteError as err:
        raise ConfigError(f"{origin}: {err}") from None


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
        raise ConfigError(f"override {key!r}: {text!r} is not a valid {_type_name(tp)}") from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_keys(raw: Any, tp: Any, where: str) -> None:
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
