"""The types everything downstream of the model speaks: embeddings per modality, metric keys.

:class:`EmbeddingSet`: row ``i`` of every array is item ``i``. A row of NaN means the modality is
missing for that item. Rows that are present are L2-normalised. Optional ``groups`` mark items
that are positives of each other (several captions of one image); without groups, item ``i`` is
positive only with item ``i``.

:class:`MetricKey`: what a measured number is about (split, subject, metric, variant). Code passes
keys as objects; :meth:`MetricKey.flatten` makes the flat string of ``metrics.json``,
``metrics.jsonl``, ``intervals.json`` and ``per_query.npz``, and :meth:`MetricKey.parse` is the
only way back. The flat forms are::

    {split}/{query}_to_{gallery}/{metric}     a retrieval direction    test/image_to_text/recall@1
    {split}/{a}_vs_{b}/{metric}               a pair (symmetric)       test/image_vs_text/modality_gap
    {split}/{modality}/{metric}               one modality             test/image/uniformity
    {split}/{metric}                          no subject               train/loss
    ...~{variant}                             a variant of the above   test/image_to_text/recall@1~centered

The variant marks the same measurement on transformed embeddings (``centered``: after
per-modality mean centring), so the split and subject stay those of the plain measurement.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeAlias, TypeVar

import numpy as np

from modalign.errors import DataError


@dataclass(frozen=True)
class EmbeddingSet:
    """Embeddings of N items in several modalities.

    Args:
        embeddings: modality name -> float32 array (N, D); NaN rows mark missing items.
        ids: N item ids.
        groups: optional int64 (N,) group id per item; equal ids are positives of each other.
        labels: optional int64 (N,) class label per item (zero-shot, probes).

    Example:
        >>> e = EmbeddingSet({"a": np.eye(2, dtype=np.float32), "b": np.eye(2, dtype=np.float32)}, ids=["x", "y"])
        >>> e.modalities, len(e)
        (['a', 'b'], 2)
        >>> e.present("a").tolist()
        [True, True]
    """

    embeddings: dict[str, np.ndarray]
    ids: list[str]
    groups: np.ndarray | None = None
    labels: np.ndarray | None = None
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name, arr in self.embeddings.items():
            if arr.ndim != 2 or arr.shape[0] != n:
                raise DataError(f"embeddings[{name!r}] has shape {arr.shape}, expected ({n}, D)")
        for name, extra in (("groups", self.groups), ("labels", self.labels)):
            if extra is not None and extra.shape != (n,):
                raise DataError(f"{name} has shape {extra.shape}, expected ({n},)")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def modalities(self) -> list[str]:
        """Modality names, in insertion order."""
        return list(self.embeddings)

    def present(self, modality: str) -> np.ndarray:
        """Boolean (N,) mask of items that have ``modality``."""
        return ~np.isnan(self.embeddings[modality]).any(axis=1)

    def group_ids(self) -> np.ndarray:
        """Group id per item: ``groups`` if given, else each item its own group."""
        return self.groups if self.groups is not None else np.arange(len(self), dtype=np.int64)


# --------------------------------------------------------------------------- metric keys

KEY_SEP = "/"  #: between split, subject and metric
VARIANT_SEP = "~"  #: before the variant, at the end
DIRECTION_SEP = "_to_"  #: between query and gallery modality
PAIR_SEP = "_vs_"  #: between the two modalities of a pair


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a modality (or a key's free subject), or None if it can.

    A name is refused when it is empty, starts or ends with whitespace, or contains a separator
    of the flat key form: ``/``, ``~``, ``_to_`` or ``_vs_``; ``to`` and ``vs`` also count as
    separators at either end (``x_to``, ``to_x``), since ``x_to`` + ``_to_`` + ``y`` reads back
    as ``x`` to ``to_y``.

    Example:
        >>> name_problem("caption"), name_problem("speech_to_text")
        (None, "contains '_to_' (the direction separator of metric keys)")
    """
    if not name or name.strip() != name:
        return "is empty or starts or ends with whitespace"
    for sep, role in ((KEY_SEP, "part"), (VARIANT_SEP, "variant")):
        if sep in name:
            return f"contains {sep!r} (the {role} separator of metric keys)"
    padded = f"_{name}_"  # a name ending in "_to" would meet the separator as "_to_"
    for sep, role in ((DIRECTION_SEP, "direction"), (PAIR_SEP, "pair")):
        if sep in padded:
            where = "contains" if sep in name else f"starts or ends with {sep.strip('_')!r}, like"
            return f"{where} {sep!r} (the {role} separator of metric keys)"
    return None


def _require_name(name: str, what: str) -> None:
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(f"{what} {name!r} {problem}")


def _require_part(part: str, what: str) -> None:
    if not part or part.strip() != part or KEY_SEP in part or VARIANT_SEP in part:
        raise ValueError(f"{what} {part!r} must be non-empty, unpadded, without '/' or '~'")


@dataclass(frozen=True)
class Direction:
    """Retrieval with ``query`` items against a gallery of ``gallery`` items."""

    query: str
    gallery: str

    def __post_init__(self) -> None:
        _require_name(self.query, "modality")
        _require_name(self.gallery, "modality")

    def __str__(self) -> str:
        return f"{self.query}{DIRECTION_SEP}{self.gallery}"

    @property
    def label(self) -> str:
        """``query → gallery``, for people."""
        return f"{self.query} → {self.gallery}"


@dataclass(frozen=True)
class Pair:
    """Two modalities measured symmetrically, written in the order the evaluation lists them."""

    a: str
    b: str

    def __post_init__(self) -> None:
        _require_name(self.a, "modality")
        _require_name(self.b, "modality")

    def __str__(self) -> str:
        return f"{self.a}{PAIR_SEP}{self.b}"

    @property
    def label(self) -> str:
        """``a vs b``, for people."""
        return f"{self.a} vs {self.b}"

    def directions(self) -> tuple[Direction, Direction]:
        """Both retrieval directions between the two modalities."""
        return Direction(self.a, self.b), Direction(self.b, self.a)


#: What a metric is about: a direction, a pair, one modality (or another name), or nothing.
Subject: TypeAlias = Direction | Pair | str | None


def _parse_subject(text: str) -> Direction | Pair | str:
    if DIRECTION_SEP in text:
        query, _, gallery = text.partition(DIRECTION_SEP)
        return Direction(query, gallery)
    if PAIR_SEP in text:
        a, _, b = text.partition(PAIR_SEP)
        return Pair(a, b)
    _require_name(text, "subject")
    return text


@dataclass(frozen=True)
class MetricKey:
    """The name of one measured number: split, subject, metric and an optional variant.

    Args:
        split: ``train``, ``val``, ``test``, ``all``, ...
        subject: a :class:`Direction`, a :class:`Pair`, a modality name, or None (e.g. ``train/loss``).
        metric: ``recall@1``, ``modality_gap``, ``loss``, ...
        variant: None for the plain measurement; ``centered`` after per-modality mean centring.

    Raises:
        ValueError: a part contains a separator of the flat form (see :func:`name_problem`).

    Example:
        >>> key = MetricKey("test", Direction("image", "text"), "recall@1", variant="centered")
        >>> key.flatten()
        'test/image_to_text/recall@1~centered'
        >>> MetricKey.parse("test/image_vs_text/modality_gap").subject
        Pair(a='image', b='text')
        >>> MetricKey.parse("train/loss")
        MetricKey(split='train', subject=None, metric='loss', variant=None)
    """

    split: str
    subject: Subject
    metric: str
    variant: str | None = None

    def __post_init__(self) -> None:
        _require_part(self.split, "split")
        _require_part(self.metric, "metric")
        if self.variant is not None:
            _require_part(self.variant, "variant")
        if isinstance(self.subject, str):
            _require_name(self.subject, "subject")

    def flatten(self) -> str:
        """The flat string form (the only place keys are joined)."""
        parts = [self.split, *([] if self.subject is None else [str(self.subject)]), self.metric]
        flat = KEY_SEP.join(parts)
        return flat if self.variant is None else f"{flat}{VARIANT_SEP}{self.variant}"

    __str__ = flatten

    @classmethod
    def parse(cls, key: str) -> MetricKey:
        """Read a flat key back (the only place keys are taken apart).

        Raises:
            ValueError: ``key`` is not a metric key (e.g. ``step`` or ``lr`` of ``metrics.jsonl``).
        """
        body, has_variant, variant = key.partition(VARIANT_SEP)
        parts = body.split(KEY_SEP)
        if len(parts) == 2:
            return cls(parts[0], None, parts[1], variant if has_variant else None)
        if len(parts) == 3:
            subject = _parse_subject(parts[1])
            return cls(parts[0], subject, parts[2], variant if has_variant else None)
        raise ValueError(f"{key!r} is not a metric key (split/subject/metric[~variant])")

    @classmethod
    def try_parse(cls, key: str) -> MetricKey | None:
        """:meth:`parse`, or None where ``key`` is not a metric key."""
        try:
            return cls.parse(key)
        except ValueError:
            return None


KeyT = TypeVar("KeyT", str, MetricKey)


def headline_keys(
    keys: Iterable[KeyT], split: str | None = "test", metric: str = "recall@1"
) -> list[KeyT]:
    """The keys of ``metric`` for every retrieval direction of ``split`` (plain variant), in order.

    The one filter for headline numbers (printed results, training curves, early stopping).
    Keys may be flat strings (which are returned as strings) or :class:`MetricKey` objects;
    strings that are not metric keys (``step``, ``lr``) are passed over.

    Args:
        keys: flat keys or MetricKeys, e.g. a ``metrics.json`` dict.
        split: only this split; None for every split.
        metric: the metric name.

    Example:
        >>> headline_keys(["val/a_to_b/recall@1", "val/a_to_b/recall@10", "test/b_to_a/recall@1",
        ...     "val/a_to_b/recall@1~centered", "val/a_vs_b/recall@1", "lr", "val/b_to_a/recall@1"],
        ...     split="val")
        ['val/a_to_b/recall@1', 'val/b_to_a/recall@1']
    """
    out = []
    for key in keys:
        parsed = key if isinstance(key, MetricKey) else MetricKey.try_parse(key)
        if (
            parsed is not None
            and isinstance(parsed.subject, Direction)
            and parsed.metric == metric
            and parsed.variant is None
            and split in (None, parsed.split)
        ):
            out.append(key)
    return out
