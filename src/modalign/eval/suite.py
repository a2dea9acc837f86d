"""The whole evaluation of one split: retrieval, diagnostics, gap mitigation, zero-shot, probes.

:func:`evaluate_split` composes the pure metric functions and keeps what the report and
``modalign compare`` need (per-query values, similarity samples, spectra). Every number is filed
under a :class:`~modalign.types.MetricKey` ``(split, subject, metric, variant)`` whose subject is

- a :class:`~modalign.types.Direction` for directional metrics (retrieval, hubness),
- a :class:`~modalign.types.Pair` for symmetric pair diagnostics (similarities, modality gap),
- a modality name for single-modality metrics (uniformity, effective rank, zero-shot, probes).

Retrieval after per-modality mean centring (post-hoc gap mitigation) has the variant
``centered`` (flat: ``test/image_to_text/recall@1~centered``).

Example:
    >>> x = np.eye(4, dtype=np.float32)
    >>> ev = evaluate_split(EmbeddingSet({"a": x, "b": x}, ids=list("wxyz")), "test", n_boot=20)
    >>> ab = Direction("a", "b")
    >>> ev.value(ab, "recall@1"), ev.value(ab, "recall@1", CENTERED)
    (1.0, 1.0)
    >>> sorted(k.flatten() for k in ev.metrics)[:2]
    ['test/a/dim_std_mean', 'test/a/dim_std_min']
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from modalign.eval import diagnostics as dg
from modalign.eval.bootstrap import bootstrap_intervals
from modalign.eval.probe import probe_metrics
from modalign.eval.retrieval import (
    PerQueryRetrieval,
    evaluate_retrieval_per_query,
    summarize_retrieval,
)
from modalign.eval.zeroshot import zero_shot_metrics, zero_shot_scores
from modalign.threads import step_threads, threads_for_flops
from modalign.types import Direction, EmbeddingSet, MetricKey, Pair, Subject

#: Metrics that get bootstrap intervals (every retrieval metric that is a per-query statistic).
INTERVAL_METRICS = ("recall@", "precision@", "ndcg@", "mrr", "map", "mean_rank", "median_rank")
SubjectT = TypeVar("SubjectT", Direction, Pair, str)

#: The variant of the retrieval metrics after per-modality mean centring.
CENTERED = "centered"


@dataclass(frozen=True)
class ClassSpec:
    """Class prototypes for zero-shot classification.

    Args:
        names: C class names.
        prototypes: (C, D) or per-template (T, C, D) embeddings of the class prompts in the shared
            space (usually made by the text modality); every labelled modality is classified
            against them.
    """

    names: list[str]
    prototypes: np.ndarray


@dataclass
class SplitEvaluation:
    """Everything measured on one split, keyed by :class:`~modalign.types.MetricKey` and subject."""

    split: str
    metrics: dict[MetricKey, float] = field(default_factory=dict)
    intervals: dict[MetricKey, tuple[float, float]] = field(default_factory=dict)
    retrieval: dict[Direction, tuple[list[str], PerQueryRetrieval]] = field(default_factory=dict)
    similarity: dict[Pair, dict[str, np.ndarray]] = field(default_factory=dict)
    k_occurrence: dict[Direction, np.ndarray] = field(default_factory=dict)
    spectra: dict[str, np.ndarray] = field(default_factory=dict)
    projection: dict[str, np.ndarray] = field(default_factory=dict)
    confusion: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def key(self, subject: Subject, metric: str, variant: str | None = None) -> MetricKey:
        """The key of ``metric`` of ``subject`` on this split."""
        return MetricKey(self.split, subject, metric, variant)

    def value(self, subject: Subject, metric: str, variant: str | None = None) -> float:
        """The value of ``metric`` of ``subject`` (NaN when it was not measured)."""
        return self.metrics.get(self.key(subject, metric, variant), math.nan)

    def interval(self, subject: Subject, metric: str) -> tuple[float, float]:
        """The 95% interval of ``metric`` of ``subject`` ((NaN, NaN) when there is none)."""
        return self.intervals.get(self.key(subject, metric), (math.nan, math.nan))

    def subjects(self, metric: str, kind: type[SubjectT]) -> list[SubjectT]:
        """Subjects of type ``kind`` with a plain ``metric``, in the order they were measured."""
        return [
            k.subject
            for k in self.metrics
            if k.metric == metric and k.variant is None and isinstance(k.subject, kind)
        ]

    def add(self, subject: Subject, values: dict[str, float], variant: str | None = None) -> None:
        """File ``values`` (metric -> value) under ``subject``."""
        self.metrics.update({self.key(subject, k, variant): v for k, v in values.items()})


def evaluate_split(
    emb: EmbeddingSet,
    split: str,
    ks: Sequence[int] = (1, 5, 10),
    classes: ClassSpec | None = None,
    n_boot: int = 1000,
    center: bool = True,
    chunk_size: int | None = None,
    max_pairs: int = 200_000,
) -> SplitEvaluation:
    """Run every evaluation that ``emb`` supports on one split.

    Args:
        emb: embeddings of the split. split: the split of every key.
        ks: retrieval cut-offs. classes: enables zero-shot (labels needed in ``emb``).
        n_boot: bootstrap replicates for intervals (0 to skip). center: also evaluate after
            per-modality mean centring. chunk_size: retrieval chunk. max_pairs: diagnostics sampling.

    Returns:
        A :class:`SplitEvaluation`.
    """
    ev = SplitEvaluation(split)
    with step_threads(_threads(emb), blas=True):
        _add_retrieval(ev, emb, ks, n_boot, chunk_size)
        if center and len(emb.modalities) > 1:
            centred = EmbeddingSet(
                dg.center_modalities(emb.embeddings), emb.ids, emb.groups, emb.labels
            )
            _add_retrieval(ev, centred, ks, 0, chunk_size, variant=CENTERED)
        _add_pair_diagnostics(ev, emb, max_pairs)
        _add_modality_diagnostics(ev, emb, max_pairs)
        if emb.labels is not None:
            _add_supervised(ev, emb, classes)
    return ev


def _threads(emb: EmbeddingSet) -> int:
    """Threads for the evaluation: one for small sets (see ``modalign.threads``), judged by the
    largest product, a retrieval chunk's (up to 4,096, N) x (N, D) scores."""
    n, dim = len(emb), max(x.shape[1] for x in emb.embeddings.values())
    return threads_for_flops(2.0 * min(n, 4096) * n * dim)


def _add_retrieval(
    ev: SplitEvaluation,
    emb: EmbeddingSet,
    ks: Sequence[int],
    n_boot: int,
    chunk_size: int | None,
    variant: str | None = None,
) -> None:
    for direction, (rows, pq) in evaluate_retrieval_per_query(emb, ks, chunk_size).items():
        metrics = {
            **summarize_retrieval(pq),
            "n_queries": float(len(pq)),
            "n_gallery": float(pq.n_gallery),
        }
        ev.add(direction, metrics, variant)
        if variant is None:  # per-query values and intervals of the plain evaluation only
            ev.retrieval[direction] = ([emb.ids[r] for r in rows], pq)
            values = {k: v for k, v in pq.values().items() if k.startswith(INTERVAL_METRICS)}
            for k, ci in bootstrap_intervals(values, n_boot).items() if n_boot else ():
                ev.intervals[ev.key(direction, k)] = ci


def _add_pair_diagnostics(ev: SplitEvaluation, emb: EmbeddingSet, max_pairs: int) -> None:
    groups = emb.group_ids()
    for a, b in itertools.permutations(emb.modalities, 2):
        ma, mb = emb.present(a), emb.present(b)
        if not (ma.any() and mb.any()):
            continue
        xa, xb = emb.embeddings[a][ma], emb.embeddings[b][mb]
        direction = Direction(a, b)
        if direction in ev.retrieval:
            ev.add(direction, dg.hubness(xa, xb, k=10))
            ev.k_occurrence[direction] = dg.k_occurrence(xa, xb, 10)
        if emb.modalities.index(a) > emb.modalities.index(b):
            continue  # symmetric diagnostics once per unordered pair
        samples = dg.similarity_samples(xa, xb, groups[ma], groups[mb], max_pairs)
        both = ma & mb
        stats = {**dg.similarity_stats(samples)} if len(samples["positive"]) else {}
        stats.update(dg.modality_gap(xa, xb, emb.embeddings[a][both], emb.embeddings[b][both]))
        ev.similarity[Pair(a, b)] = samples
        ev.add(Pair(a, b), stats)


def _add_modality_diagnostics(ev: SplitEvaluation, emb: EmbeddingSet, max_pairs: int) -> None:
    rng = np.random.default_rng(0)
    shown = {m: emb.embeddings[m][emb.present(m)] for m in emb.modalities}
    both = np.concatenate([x[rng.permutation(len(x))[:2000]] for x in shown.values()])
    mean = both.mean(axis=0)
    basis = np.linalg.svd(both - mean, full_matrices=False)[2][:2]  # shared 2-D PCA, (2, D)
    for m, x in shown.items():
        if len(x) < 2:
            continue
        stats = {**dg.effective_rank(x), "uniformity": dg.uniformity(x, max_pairs=max_pairs)}
        ev.add(m, stats)
        ev.spectra[m] = dg.singular_values(x)
        ev.projection[m] = (x[rng.permutation(len(x))[:1000]] - mean) @ basis.T
        warning = dg.collapse_warning(stats)
        if warning:
            ev.warnings.append(f"{m}: {warning}")


def _add_supervised(ev: SplitEvaluation, emb: EmbeddingSet, classes: ClassSpec | None) -> None:
    assert emb.labels is not None
    for m in emb.modalities:
        mask = emb.present(m) & (emb.labels >= 0)
        x, y = emb.embeddings[m][mask], emb.labels[mask]
        if len(np.unique(y)) < 2:
            continue
        if classes is not None:
            protos = classes.prototypes
            ev.add(m, zero_shot_metrics(x, y, protos))
            ev.confusion[m] = (y, zero_shot_scores(x, protos).argmax(axis=1))
            ev.class_names = list(classes.names)
        if int(np.bincount(np.unique(y, return_inverse=True)[1]).min()) >= 2:
            ev.add(m, probe_metrics(x, y))


__all__ = ["CENTERED", "ClassSpec", "SplitEvaluation", "evaluate_split"]
