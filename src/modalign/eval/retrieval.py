"""Exact cross-modal retrieval metrics, streamed over query chunks.

A query ``q`` and a gallery item ``g`` are positives when their group ids are equal; a query may
have several positives. Scores are cosine similarities (rows are L2-normalised, so dot products).

**How ranks are computed (the trick).** No full (Q, N) score matrix and no full sort is ever
built. For each chunk of queries the (chunk, N) scores are computed with one matmul; the scores of
each query's positives are gathered (the gallery is sorted by group, so a query's positives form
one contiguous range), the positives are then overwritten with ``-inf``, and the rank of the
``i``-th best positive is ``i + #{negatives scoring strictly higher}``. Counting is exact, so every
metric below is exact; peak memory is O(chunk * N) for the scores plus O(Q * len(ks)) for the
per-query results.

**Both directions from one matrix.** ``a -> b`` and ``b -> a`` rank the same scores: the
scores of ``b -> a`` are the transpose of those of ``a -> b``. When every group has at most one
row in each modality (the common one-caption-per-image case), :func:`evaluate_retrieval_per_query`
computes each (chunk of ``a``, all of ``b``) block once and counts both directions in it: a row's
negatives along the block's rows, a column's negatives down its columns (the column's positive
score is found first, from the thin band of ``a @ b.T`` that holds the positive pairs). That is one
matmul instead of two, with the same scores, so the same ranks and metrics as ranking each
direction on its own (a test checks this; if the band's scores ever differed from the blocks',
each direction is ranked on its own instead).

**Ties.** A negative that scores exactly the same as a positive is ranked *before* it
(pessimistic tie-breaking: a collapsed space, where everything scores the same, gets recall 0,
never a perfect score), and tied positives are ranked in a fixed order, so the ``i``-th positive
always has rank >= ``i``. ``torch.topk``/``argsort`` based tools (CLIP_benchmark, open_clip) break ties by
index order instead; with continuous embeddings the two agree, and they differ only on exactly
equal scores (for example exact duplicate rows in *different* groups).

**Metrics** (each the mean over queries of a per-query value; ranks are 1-based):

- ``recall@k``: 1 if at least one positive is in the top ``k`` else 0 (the "hit rate" used in
  CLIP-like papers and by CLIP_benchmark, ``recall > 0``, and open_clip's ``R@k``).
- ``precision@k``: number of positives in the top ``k``, divided by ``k``.
- ``ndcg@k``: binary-relevance nDCG, gain ``1 / log2(rank + 1)``, ideal = all positives first.
- ``mrr``: mean of ``1 / rank`` of the first positive.
- ``map``: mean over queries of average precision over *all* positives in the gallery,
  ``AP = mean_i(i / rank_i)``.
- ``mean_rank``, ``median_rank``: of the first positive (open_clip floors the median of its
  0-based ranks and adds 1; ``median_rank`` here is the plain median, so it may end in .5).

Example:
    >>> g = np.eye(3, dtype=np.float32)
    >>> m = retrieval_metrics(g, g, np.arange(3), np.arange(3), ks=(1,))
    >>> m["recall@1"], m["mrr"], m["median_rank"]
    (1.0, 1.0, 1.0)

References:
    Manning, Raghavan & Schütze, 2008, "Introduction to Information Retrieval", ch. 8 (precision,
    MAP, nDCG). CLIP_benchmark ``metrics/zeroshot_retrieval.py``; open_clip ``get_clip_metrics``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from modalign.eval.topk import top_k_tensor
from modalign.losses.functional import check_pairing
from modalign.types import Direction, EmbeddingSet, MetricKey

#: Above this many positives per query, ranks are found by sorting rows instead of one pass each.
SORT_THRESHOLD = 16


@dataclass(frozen=True)
class PerQueryRetrieval:
    """Per-query retrieval results: the raw material for means, bootstraps and paired tests.

    Args:
        ks: the cut-offs, in the order of the columns of ``hits`` and ``ndcg``.
        first_rank: int64 (Q,) 1-based rank of the best-scoring positive.
        average_precision: float64 (Q,) AP over all of the query's positives.
        hits: int64 (Q, len(ks)) number of positives within the top ``k``.
        ndcg: float64 (Q, len(ks)) nDCG@k.
        n_positives: int64 (Q,) positives of each query in the gallery.
        n_gallery: number of gallery items searched.
    """

    ks: tuple[int, ...]
    first_rank: np.ndarray
    average_precision: np.ndarray
    hits: np.ndarray
    ndcg: np.ndarray
    n_positives: np.ndarray
    n_gallery: int = 0

    def __len__(self) -> int:
        return len(self.first_rank)

    def values(self) -> dict[str, np.ndarray]:
        """Per-query value of every metric, keyed like :func:`summarize_retrieval`'s output.

        ``median_rank`` is not a mean of per-query values, so it maps to the ranks themselves.
        """
        rank = self.first_rank.astype(np.float64)
        out: dict[str, np.ndarray] = {}
        for k in self.ks:
            out[f"recall@{k}"] = (self.first_rank <= k).astype(np.float64)
        for j, k in enumerate(self.ks):
            out[f"precision@{k}"] = self.hits[:, j] / k
        for j, k in enumerate(self.ks):
            out[f"ndcg@{k}"] = self.ndcg[:, j]
        out["mrr"] = 1.0 / rank
        out["map"] = self.average_precision
        out["mean_rank"] = rank
        out["median_rank"] = rank
        return out


def summarize_retrieval(per_query: PerQueryRetrieval) -> dict[str, float]:
    """Average per-query results into metrics (``median_rank`` is a median, the rest are means).

    Example:
        >>> pq = PerQueryRetrieval((1,), np.array([1, 3]), np.array([1.0, 0.5]),
        ...     np.array([[1], [0]]), np.array([[1.0], [0.0]]), np.array([1, 2]))
        >>> summarize_retrieval(pq)["mrr"]
        0.6666666666666666
    """
    if len(per_query) == 0:
        raise ValueError("no queries to summarise")
    reduce = {"median_rank": np.median}
    return {k: float(reduce.get(k, np.mean)(v)) for k, v in per_query.values().items()}


def retrieval_metrics(
    queries: np.ndarray | Tensor,
    gallery: np.ndarray | Tensor,
    query_groups: np.ndarray | None = None,
    gallery_groups: np.ndarray | None = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Exact retrieval metrics of ``queries`` against ``gallery``, streamed over query chunks.

    Args:
        queries: (Q, D) L2-normalised query embeddings.
        gallery: (N, D) L2-normalised gallery embeddings.
        query_groups: (Q,) ints; ``None`` with ``gallery_groups=None`` pairs row i with row i.
        gallery_groups: (N,) ints; equal group ids are positives.
        ks: cut-offs for recall, precision and nDCG.
        chunk_size: queries per chunk; default keeps a chunk's scores near 128 MiB.

    Returns:
        ``{"recall@1": ..., "precision@1": ..., "ndcg@1": ..., "mrr", "map", "mean_rank",
        "median_rank"}`` (see the module docstring for definitions).

    Example:
        >>> q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
        >>> g = np.array([[0.0, 1.0], [0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
        >>> m = retrieval_metrics(q, g, np.array([0, 1]), np.array([0, 0, 1]), ks=(1, 2))
        >>> m["recall@1"], m["recall@2"], m["mean_rank"], round(m["map"], 4)
        (0.0, 0.5, 2.5, 0.4583)
    """
    return summarize_retrieval(
        retrieval_per_query(queries, gallery, query_groups, gallery_groups, ks, chunk_size)
    )


def retrieval_per_query(
    queries: np.ndarray | Tensor,
    gallery: np.ndarray | Tensor,
    query_groups: np.ndarray | None = None,
    gallery_groups: np.ndarray | None = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
) -> PerQueryRetrieval:
    """Per-query ranks behind :func:`retrieval_metrics` (same arguments).

    Raises:
        ValueError: on shape mismatches, non-finite values, or a query without any positive.

    Example:
        >>> g = np.eye(2, dtype=np.float32)
        >>> retrieval_per_query(g, g[::-1], np.array([0, 1]), np.array([1, 0]), ks=(1,)).first_rank.tolist()
        [1, 1]
    """
    q, g = _as_tensor(queries, "queries"), _as_tensor(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but the gallery has {g.shape[1]}")
    qg, gg = _groups(q.shape[0], g.shape[0], query_groups, gallery_groups)
    g_sorted, gg_sorted = _sort_by_group(g, gg)  # positives of a group are now contiguous
    start = np.searchsorted(gg_sorted, qg, side="left")
    count = np.searchsorted(gg_sorted, qg, side="right") - start
    if (count == 0).any():
        bad = int(np.flatnonzero(count == 0)[0])
        raise ValueError(f"query {bad} (group {qg[bad]}) has no positive in the gallery")
    ks = _check_ks(ks)
    chunk = _default_chunk(chunk_size, g.shape[0])
    # One scores buffer and one comparison mask, reused by every chunk: fresh (chunk, N) tensors
    # per chunk cost as much system time (page faults) as the matmuls themselves at N = 200,000.
    work = _Workspace(min(chunk, q.shape[0]), g.shape[0])
    parts = [
        _chunk_stats(
            _chunk_ranks(
                q[i : i + chunk], g_sorted, start[i : i + chunk], count[i : i + chunk], work
            ),
            count[i : i + chunk],
            ks,
        )
        for i in range(0, q.shape[0], chunk)
    ]
    return _per_query_from_chunks(parts, count, ks, g.shape[0])


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(k) for k in ks)
    if not out or min(out) < 1:
        raise ValueError(f"ks must be positive integers, got {out}")
    return out


def _default_chunk(chunk_size: int | None, n_gallery: int) -> int:
    """Queries per chunk: ``chunk_size``, else a chunk's scores stay near 128 MiB."""
    return chunk_size or max(1, min(4096, (1 << 25) // max(1, n_gallery)))


def _as_tensor(x: np.ndarray | Tensor, name: str) -> Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x).float()
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contain NaN or inf; select present rows first")
    return t


def _sort_by_group(g: Tensor, gg: np.ndarray) -> tuple[Tensor, np.ndarray]:
    if len(gg) < 2 or bool((np.diff(gg) >= 0).all()):
        return g, gg  # already sorted: no copy of the gallery
    order = np.argsort(gg, kind="stable")
    return g[torch.from_numpy(order)], gg[order]


def _groups(
    n_q: int, n_g: int, qg: np.ndarray | None, gg: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    check_pairing(n_q, n_g, qg, gg)
    if qg is None or gg is None:
        return np.arange(n_q), np.arange(n_g)
    qg, gg = np.asarray(qg).astype(np.int64), np.asarray(gg).astype(np.int64)
    if qg.shape != (n_q,) or gg.shape != (n_g,):
        raise ValueError(
            f"groups have shapes {qg.shape} and {gg.shape}, expected ({n_q},) and ({n_g},)"
        )
    return qg, gg


class _Workspace:
    """Preallocated (chunk, N) scores and boolean mask for :func:`_chunk_ranks`."""

    def __init__(self, rows: int, n: int) -> None:
        self.scores = torch.empty(rows, n)
        self.mask = torch.empty(rows, n, dtype=torch.bool)


@torch.no_grad()
def _chunk_ranks(
    q: Tensor,
    g_sorted: Tensor,
    start: np.ndarray,
    count: np.ndarray,
    work: _Workspace | None = None,
) -> np.ndarray:
    """Ranks (c, P) of each query's positives, best first; padding columns hold a huge rank."""
    c = q.shape[0]
    work = work or _Workspace(c, g_sorted.shape[0])
    scores = torch.mm(q, g_sorted.T, out=work.scores[:c])  # (c, N)
    p = int(count.max())
    j = torch.arange(p)
    st, ct = torch.from_numpy(start), torch.from_numpy(count)
    valid = j[None, :] < ct[:, None]  # (c, P)
    idx = torch.where(valid, st[:, None] + j[None, :], st[:, None])  # invalid -> a real positive
    pos = scores.gather(1, idx).masked_fill(~valid, -math.inf)
    pos = pos.sort(dim=1, descending=True).values  # (c, P), best positive first
    scores.scatter_(1, idx, -math.inf)  # now only negatives remain
    if p <= SORT_THRESHOLD:
        # numpy's compare-and-count is 6x faster than torch's ge + sum(1) over bool, whose
        # reduction widens every element to int64 (same counts)
        s, mask, best = scores.numpy(), work.mask[:c].numpy(), pos.numpy()
        higher = torch.from_numpy(
            np.stack(
                [
                    np.count_nonzero(np.greater_equal(s, best[:, i : i + 1], out=mask), axis=1)
                    for i in range(p)
                ],
                axis=1,
            )
        )
    else:  # one sort per row beats P passes over the row
        ascending = scores.sort(dim=1).values
        higher = scores.shape[1] - torch.searchsorted(ascending, pos.contiguous(), right=False)
    ranks = (j[None, :] + 1 + higher).numpy().astype(np.int64)
    ranks[~valid.numpy()] = 1 << 40  # padding: past any cut-off, contributes nothing
    return ranks


def _chunk_stats(
    ranks: np.ndarray, count: np.ndarray, ks: tuple[int, ...]
) -> tuple[np.ndarray, ...]:
    """Reduce a chunk's positive ranks (c, P) to per-query values, so ranks never pile up."""
    valid = np.arange(ranks.shape[1])[None, :] < count[:, None]
    order = np.arange(1, ranks.shape[1] + 1, dtype=np.float64)[None, :]
    ap = np.where(valid, order / ranks, 0.0).sum(1) / count
    hits = np.stack([(valid & (ranks <= k)).sum(1) for k in ks], axis=1).astype(np.int64)
    gain = np.where(valid, 1.0 / np.log2(ranks + 1.0), 0.0)
    ndcg = np.stack([_ndcg(gain, ranks, count, k) for k in ks], axis=1)
    return ranks[:, 0].copy(), ap, hits, ndcg


def _match(sa: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """Index in ``sb`` of each group of ``sa`` (both sorted, unique; int64), -1 where absent.

    Example:
        >>> _match(np.array([1, 2, 5]), np.array([0, 2, 5])).tolist()
        [-1, 1, 2]
    """
    at = np.minimum(np.searchsorted(sb, sa), len(sb) - 1)
    return np.where(sb[at] == sa, at, -1).astype(np.int64)


def _positive_scores(a: Tensor, b: Tensor, pos_a: np.ndarray, tile: int) -> Tensor:
    """(Nb,) score of each ``b`` row with its positive ``a`` row (+inf where it has none).

    Rows and columns are sorted by group, so the positive pairs of a tile of ``a`` rows lie in
    one narrow range of ``b`` columns: only that band of ``a @ b.T`` is multiplied.
    """
    out = torch.full((b.shape[0],), math.inf)
    for t0 in range(0, a.shape[0], tile):
        cols = pos_a[t0 : t0 + tile]
        rows = np.flatnonzero(cols >= 0)
        if len(rows) == 0:
            continue
        lo, hi = int(cols[rows].min()), int(cols[rows].max()) + 1
        band = torch.mm(a[t0 : t0 + tile], b[lo:hi].T)  # (tile, hi - lo)
        idx = torch.from_numpy(cols[rows])
        out[idx] = band[torch.from_numpy(rows), idx - lo]
    return out


@torch.no_grad()
def _pair_ranks(
    a: Tensor, b: Tensor, pos_a: np.ndarray, chunk: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """1-based rank of every row's positive, both ways, from one pass over ``a @ b.T``.

    Args:
        a: (Na, D), b: (Nb, D) rows sorted by group, at most one row per group in each.
        pos_a: (Na,) int64 row of ``b`` in the group of each ``a`` row, -1 if none.
        chunk: rows of ``a`` per block.

    Returns:
        ranks (Na,) of ``a`` rows among ``b`` and (Nb,) of ``b`` rows among ``a`` (rows without a
        positive get 1 and must be dropped), or None when a block's score of a positive pair
        differs from the band's (the caller then ranks each direction on its own).
    """
    thr_b = _positive_scores(a, b, pos_a, tile=256)  # (Nb,)
    rank_a = np.ones(a.shape[0], dtype=np.int64)
    higher_b = np.zeros(b.shape[0], dtype=np.int64)
    work = _Workspace(min(chunk, a.shape[0]), b.shape[0])
    for r0 in range(0, a.shape[0], chunk):
        scores = work.scores[: min(chunk, a.shape[0] - r0)]
        torch.mm(a[r0 : r0 + chunk], b.T, out=scores)  # (c, Nb)
        c = scores.shape[0]
        rows = np.flatnonzero(pos_a[r0 : r0 + c] >= 0)
        r, k = torch.from_numpy(rows), torch.from_numpy(pos_a[r0 : r0 + c][rows])
        pos = scores[r, k]  # (m,) positive pairs of this block
        if not torch.equal(pos, thr_b[k]):
            return None
        scores[r, k] = -math.inf  # only negatives remain, for both directions
        thr_a = torch.full((c,), math.inf)
        thr_a[r] = pos
        s, mask = scores.numpy(), work.mask[:c].numpy()
        # counting by adding the mask's bytes into int32 is 2-3x faster than count_nonzero
        np.greater_equal(s, thr_a.numpy()[:, None], out=mask)
        rank_a[r0 : r0 + c] += np.add.reduce(mask.view(np.uint8), axis=1, dtype=np.int32)
        np.greater_equal(s, thr_b.numpy()[None, :], out=mask)
        higher_b += np.add.reduce(mask.view(np.uint8), axis=0, dtype=np.int32)
    return rank_a, higher_b + 1


def _single_positive(
    first_rank: np.ndarray, ks: tuple[int, ...], n_gallery: int
) -> PerQueryRetrieval:
    """Per-query results when every query has exactly one positive, of rank ``first_rank``."""
    count = np.ones(len(first_rank), dtype=np.int64)
    first, ap, hits, ndcg = _chunk_stats(first_rank[:, None], count, ks)
    return PerQueryRetrieval(ks, first, ap, hits, ndcg, count, n_gallery)


def pair_retrieval_per_query(
    a: np.ndarray | Tensor,
    b: np.ndarray | Tensor,
    groups_a: np.ndarray,
    groups_b: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
) -> tuple[tuple[np.ndarray, PerQueryRetrieval], tuple[np.ndarray, PerQueryRetrieval]] | None:
    """Both directions ``a -> b`` and ``b -> a`` from one score matrix (see the module docstring).

    Queries of ``a -> b`` are the rows of ``a`` whose group has a row in ``b`` (the gallery is all
    of ``b``), and the other way round; results equal two calls of :func:`retrieval_per_query`.

    Args:
        a: (Na, D), b: (Nb, D) L2-normalised embeddings.
        groups_a: (Na,), groups_b: (Nb,) int group ids, each at most once per side.
        ks, chunk_size: as :func:`retrieval_metrics` (chunks of ``a`` rows).

    Returns:
        ``((rows_a, per_query_a_to_b), (rows_b, per_query_b_to_a))``, ``rows_*`` the query rows
        (indices into ``a`` and ``b``, ascending); None when a group repeats within a side, a side
        is empty, or the shared scores cannot be used (rank each direction on its own then).

    Example:
        >>> x = np.eye(3, dtype=np.float32)
        >>> (ra, ab), (rb, ba) = pair_retrieval_per_query(x, x[:2], np.arange(3), np.arange(2))
        >>> ra.tolist(), ab.first_rank.tolist(), ba.n_gallery
        ([0, 1], [1, 1], 3)
    """
    ga, gb = np.asarray(groups_a).astype(np.int64), np.asarray(groups_b).astype(np.int64)
    if len(ga) == 0 or len(gb) == 0 or len(np.unique(ga)) < len(ga) or len(np.unique(gb)) < len(gb):
        return None
    ta, tb = _as_tensor(a, "queries"), _as_tensor(b, "gallery")
    if ta.shape[1] != tb.shape[1]:
        raise ValueError(f"queries have dimension {ta.shape[1]} but the gallery has {tb.shape[1]}")
    ks = _check_ks(ks)
    oa, ob = np.argsort(ga, kind="stable"), np.argsort(gb, kind="stable")
    pos_a = _match(ga[oa], gb[ob])
    ranks = _pair_ranks(_take(ta, oa), _take(tb, ob), pos_a, _default_chunk(chunk_size, len(gb)))
    if ranks is None:
        return None
    out = []
    for order, rank, has, n_gallery in (
        (oa, ranks[0], pos_a >= 0, len(gb)),
        (ob, ranks[1], _match(gb[ob], ga[oa]) >= 0, len(ga)),
    ):
        rank_orig, has_orig = np.empty_like(rank), np.empty_like(has)
        rank_orig[order], has_orig[order] = rank, has  # back to the callers' row order
        rows = np.flatnonzero(has_orig)
        out.append((rows, _single_positive(rank_orig[rows], ks, n_gallery)))
    return out[0], out[1]


def _take(t: Tensor, order: np.ndarray) -> Tensor:
    """Rows of ``t`` in ``order`` (no copy when the order is already the identity)."""
    if bool((order == np.arange(len(order))).all()):
        return t
    return t[torch.from_numpy(order)]


def _per_query_from_chunks(
    parts: list[tuple[np.ndarray, ...]], count: np.ndarray, ks: tuple[int, ...], n_gallery: int
) -> PerQueryRetrieval:
    first, ap, hits, ndcg = (np.concatenate(col) for col in zip(*parts, strict=True))
    return PerQueryRetrieval(ks, first, ap, hits, ndcg, count.astype(np.int64), n_gallery)


def _ndcg(gain: np.ndarray, ranks: np.ndarray, count: np.ndarray, k: int) -> np.ndarray:
    dcg = np.where(ranks <= k, gain, 0.0).sum(1)
    ideal_terms = 1.0 / np.log2(np.arange(1, k + 1) + 1.0)  # (k,)
    ideal = np.cumsum(ideal_terms)[np.minimum(count, k) - 1]
    return dcg / ideal


def top_k(
    queries: np.ndarray | Tensor,
    gallery: np.ndarray | Tensor,
    k: int,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best gallery items per query, streamed: scores and indices, each (Q, k).

    Used for example retrievals (report, demo) and by the exact index backend; the blocked,
    tiled search is :func:`modalign.eval.topk.top_k_tensor`. Exact, best first; among equal
    scores the lower gallery index comes first.

    Args:
        queries: (Q, D). gallery: (N, D). k: results per query (at most N).
        chunk_size: queries per block (default about 1,024).

    Example:
        >>> g = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]], dtype=np.float32)
        >>> top_k(g[:1], g, 2)[1].tolist()
        [[0, 2]]
    """
    q, g = _as_tensor(queries, "queries"), _as_tensor(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but the gallery has {g.shape[1]}")
    scores, idx = top_k_tensor(q, g, k, block=chunk_size)
    return scores.numpy(), idx.numpy()


def unique_present_rows(emb: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Indices of present (non-NaN) rows, keeping one row of each exact duplicate within a group.

    When several captions share one image, a table with one row per caption repeats the image's
    embedding. Those copies are one image: as a gallery they would fill the top-k with the same
    item, and as queries they would count one image several times. CLIP_benchmark evaluates over
    unique images; this is the same convention, found from the data. Identical rows in *different*
    groups are kept (they are distinct items that happen to tie).

    Args:
        emb: (N, D) embeddings, NaN rows missing. groups: (N,) int group ids.

    Returns:
        int64 sorted indices of the rows to keep.

    Example:
        >>> e = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [np.nan, np.nan]], dtype=np.float32)
        >>> unique_present_rows(e, np.array([0, 0, 1, 1])).tolist()
        [0, 2]
    """
    present = np.flatnonzero(~np.isnan(emb).any(axis=1))
    if len(present) == 0:
        return present.astype(np.int64)
    rows = np.ascontiguousarray(emb[present]).view(np.uint8).reshape(len(present), -1)
    keys = np.concatenate([groups[present].astype(np.int64)[:, None].view(np.uint8), rows], axis=1)
    keys = np.ascontiguousarray(keys).view(np.dtype((np.void, keys.shape[1]))).ravel()
    _, first = np.unique(keys, return_index=True)
    return present[np.sort(first)].astype(np.int64)


def evaluate_retrieval_per_query(
    emb: EmbeddingSet, ks: Sequence[int] = (1, 5, 10), chunk_size: int | None = None
) -> dict[Direction, tuple[np.ndarray, PerQueryRetrieval]]:
    """Per-query retrieval results for every ordered pair of modalities.

    Queries are the unique present rows of the query modality whose group has at least one present
    gallery row; the gallery is the unique present rows of the gallery modality (see
    :func:`unique_present_rows`); any gallery item of the query's group is a hit.

    Returns:
        ``{Direction("image", "text"): (query_rows, per_query), ...}`` where ``query_rows`` are
        the item indices (rows of ``emb``) of the queries, in the order of ``per_query``.
        Directions with no query or no gallery item are left out.

    Example:
        >>> x = np.eye(2, dtype=np.float32)
        >>> r = evaluate_retrieval_per_query(EmbeddingSet({"a": x, "b": x}, ids=["0", "1"]), ks=(1,))
        >>> list(r), r[Direction("a", "b")][0].tolist()
        ([Direction(query='a', gallery='b'), Direction(query='b', gallery='a')], [0, 1])
    """
    groups = emb.group_ids()
    keep = {m: unique_present_rows(emb.embeddings[m], groups) for m in emb.modalities}
    found: dict[Direction, tuple[np.ndarray, PerQueryRetrieval]] = {}
    out: dict[Direction, tuple[np.ndarray, PerQueryRetrieval]] = {}
    for qm in emb.modalities:
        for gm in emb.modalities:
            direction = Direction(qm, gm)
            if qm != gm and direction not in found:  # b -> a may come with a -> b
                found.update(_retrieve_pair(emb, groups, keep, direction, ks, chunk_size))
            if direction in found:
                out[direction] = found[direction]
    return out


def _retrieve_pair(
    emb: EmbeddingSet,
    groups: np.ndarray,
    keep: dict[str, np.ndarray],
    direction: Direction,
    ks: Sequence[int],
    chunk_size: int | None,
) -> dict[Direction, tuple[np.ndarray, PerQueryRetrieval]]:
    """``direction``'s results, with the reverse direction's when one score matrix serves both."""
    qm, gm = direction.query, direction.gallery
    ra, rb = keep[qm], keep[gm]
    qa, gb = emb.embeddings[qm], emb.embeddings[gm]
    shared = pair_retrieval_per_query(qa[ra], gb[rb], groups[ra], groups[rb], ks, chunk_size)
    if shared is not None:
        (rows_a, pq_a), (rows_b, pq_b) = shared
        both = {direction: (ra[rows_a], pq_a), Direction(gm, qm): (rb[rows_b], pq_b)}
        return {d: r for d, r in both.items() if len(r[1])}
    rows_q = ra[np.isin(groups[ra], groups[rb])]
    if len(rows_q) == 0:
        return {}
    pq = retrieval_per_query(qa[rows_q], gb[rb], groups[rows_q], groups[rb], ks, chunk_size)
    return {direction: (rows_q, pq)}


def evaluate_retrieval(
    emb: EmbeddingSet, split: str, ks: Sequence[int] = (1, 5, 10), chunk_size: int | None = None
) -> dict[str, float]:
    """Retrieval metrics for every ordered pair of modalities, as flat keys (for JSON files).

    Args:
        emb: the embeddings of one split. split: name used as the first key part.
        ks: cut-offs. chunk_size: queries per chunk (see :func:`retrieval_metrics`).

    Returns:
        ``{MetricKey(split, direction, metric).flatten(): value}`` (e.g.
        ``test/image_to_text/recall@1``), with ``n_queries`` and ``n_gallery`` among the metrics.

    Example:
        >>> x = np.eye(3, dtype=np.float32)
        >>> m = evaluate_retrieval(EmbeddingSet({"image": x, "text": x}, ids=list("abc")), "test")
        >>> m["test/image_to_text/recall@1"], m["test/text_to_image/n_queries"]
        (1.0, 3.0)
    """
    out: dict[str, float] = {}
    for direction, (_, pq) in evaluate_retrieval_per_query(emb, ks, chunk_size).items():
        metrics = {**summarize_retrieval(pq), "n_queries": len(pq), "n_gallery": pq.n_gallery}
        out.update({MetricKey(split, direction, k).flatten(): float(v) for k, v in metrics.items()})
    return out
