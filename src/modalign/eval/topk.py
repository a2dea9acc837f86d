"""Exact top-k inner-product search, streamed over query blocks and gallery tiles.

This is the one exact search of modalign: :func:`modalign.eval.retrieval.top_k` (report examples,
hubness) and the ``exact`` index backend both call :func:`top_k_tensor`.

**How it stays near the matrix-multiply bound (the tricks).**

* *Blocks and tiles.* Queries go in blocks of about 1,024 rows, the gallery in tiles of
  ``tile`` rows; each (block, tile) score matrix is written into one preallocated buffer
  (``torch.mm(out=...)``), so no (Q, N) matrix is ever built and no page is faulted in per block
  (a fresh (335, 100,000) scores tensor per chunk cost as much as its matmul). Peak memory is
  ``workers * block * tile`` floats beside the gallery.
* *Running top-k merge.* The first tile's ``k + 1`` best start the block's running ``k + 1``
  best, so the gallery is read once and each tile's scores stay in cache while they are reduced.
* *Skip what cannot enter (the threshold skip).* After the first tile, a score at or below its
  row's running ``(k+1)``-th score cannot change the result, and after a few tiles almost all are:
  a full ``topk`` of every tile (a quarter of the time) is replaced by one ``amax`` over groups
  of ``GROUP`` columns (a tenth of the ``topk``), a gather of the few groups whose maximum is
  above the row's threshold, and one small ``topk`` over those scores and the running best. On
  100,000 random unit rows and top-10 a row meets about ``11 / j`` new candidates in tile ``j``,
  about 30 in all. A tile where the hit groups hold more than ``1 / _DENSE_SHARE`` of it (a
  tile smaller than ``k + 1``, or a gallery sorted by score) takes the full ``topk`` instead, and
  so does every tile of a worker with several intra-op threads (``workers=1``, or 64 queries or
  fewer), where the skip's small ops would wait on each other's threads.
* *One intra-op thread per worker.* Query blocks go to ``workers`` Python threads, each running
  its matmuls and reductions with one intra-op thread: no barrier after every operation, so a core
  taken by another process slows one worker, not all (as in :mod:`modalign.losses.tiled`).
  ``benchmarks/bench_search.py --exact`` measures this against two threads per operation.

**Ties.** Results are exact: the returned scores are the ``k`` largest, in descending order, and
among equal scores the lower gallery index comes first, including at the ``k``-th place. ``topk``
alone does not promise which of several tied items it keeps, so one extra candidate (``k + 1``)
is carried: when the ``k``-th and ``k + 1``-th scores differ the set is determined by the values;
the rare rows where they are equal are recomputed in full with a stable sort. The threshold skip
keeps this exact: a skipped score is at most the running ``(k+1)``-th score, itself at most the
final one, so it can only equal the final ``(k+1)``-th score, never beat it: the ``k + 1`` best
scores are the same, and a skipped score tied at the ``k``-th place makes the row tied, so
recomputed.

Example:
    >>> g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [1.0, 0.0]])
    >>> s, i = top_k_tensor(g[:1], g, 3)
    >>> i.tolist(), [round(x, 2) for x in s[0].tolist()]
    ([[0, 3, 2]], [1.0, 1.0, 0.8])

References:
    Johnson, Douze and Jégou, 2019, "Billion-scale similarity search with GPUs" (blocked
    exhaustive search with a running k-selection; faiss ``IndexFlatIP`` on the CPU does the same
    with BLAS blocks and heaps).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

#: Queries per block: large enough that a (block, D) x (D, tile) product runs near the GEMM rate.
DEFAULT_BLOCK = 1024
#: Gallery rows per tile: a (1024, 4096) fp32 scores tile is 16 MiB per worker.
DEFAULT_TILE = 4096
#: Columns per group of a tile whose maximum is compared with the running (k+1)-th score.
GROUP = 64
#: A tile goes to the dense merge when its hit groups hold more than 1 / _DENSE_SHARE of it.
_DENSE_SHARE = 4
_NO_INDEX = torch.iinfo(torch.int64).max  # sorts after every real index


@dataclass
class _Scratch:
    """A worker's reused (block, tile) scores buffer, and whether it takes the threshold skip."""

    scores: Tensor
    skip: bool


def default_workers() -> int:
    """Worker threads for a search: one per intra-op thread torch would use (at least 1)."""
    return max(1, torch.get_num_threads())


@torch.no_grad()
def top_k_tensor(
    queries: Tensor,
    gallery: Tensor,
    k: int,
    block: int | None = None,
    tile: int = DEFAULT_TILE,
    workers: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The ``k`` best gallery rows by inner product for every query: scores and indices.

    Args:
        queries: (Q, D) float32 (or float64). gallery: (N, D), the same dtype (rows need not
            be normalised).
        k: results per query; more than N returns N.
        block: queries per block (default about 1,024, split evenly over the workers).
        tile: gallery rows per tile.
        workers: worker threads with one intra-op thread each; 1 runs in the calling thread with
            torch's own threads (default: ``torch.get_num_threads()``).

    Returns:
        ``(scores, indices)``: the queries' dtype and int64, each (Q, min(k, N)), best first,
        lower index first among equal scores.

    Example:
        >>> s, i = top_k_tensor(torch.eye(3), torch.eye(3), 1)
        >>> i.ravel().tolist()
        [0, 1, 2]
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n_q, n = queries.shape[0], gallery.shape[0]
    k = min(k, n)
    out_v = torch.empty(n_q, k, dtype=queries.dtype)  # (Q, k)
    out_i = torch.empty(n_q, k, dtype=torch.int64)
    if n_q == 0 or k == 0:
        return out_v, out_i
    workers = max(1, min(workers or default_workers(), math.ceil(n_q / 64)))
    block = block or min(DEFAULT_BLOCK, math.ceil(n_q / workers))
    spans = [(i, min(i + block, n_q)) for i in range(0, n_q, block)]
    tile = max(1, min(tile, n))

    def run(r0: int, r1: int, scratch: _Scratch) -> None:
        v, i = _block_top_k(queries[r0:r1], gallery, k, tile, scratch)
        out_v[r0:r1], out_i[r0:r1] = v, i

    width = -(-tile // GROUP) * GROUP  # whole groups: the last tile is padded with -inf

    def make_scratch() -> _Scratch:  # called in the thread that will use it
        # The threshold skip is a dozen small ops per tile: split over several OpenMP threads
        # they wait on each other whenever one is descheduled (3x slower than the full topk
        # at a load of 5 on 2 cores), so only a worker with one intra-op thread takes it.
        skip = torch.get_num_threads() == 1
        return _Scratch(torch.empty(block, width, dtype=queries.dtype), skip)

    _run_blocks(spans, workers, make_scratch, run)
    return out_v, out_i


def _run_blocks(
    spans: list[tuple[int, int]],
    workers: int,
    make_scratch: Callable[[], _Scratch],
    run: Callable[[int, int, _Scratch], None],
) -> None:
    """``run(r0, r1, scratch)`` for every span, on ``workers`` threads of one intra-op thread."""
    if workers <= 1 or len(spans) <= 1:
        scratch = make_scratch()
        for r0, r1 in spans:
            run(r0, r1, scratch)
        return
    jobs, take = iter(spans), threading.Lock()

    def work() -> None:
        scratch = make_scratch()
        with torch.no_grad():  # grad mode is per thread
            while True:
                with take:
                    span = next(jobs, None)
                if span is None:
                    return
                run(*span, scratch)

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(min(workers, len(spans))) as pool:
            for f in [pool.submit(work) for _ in range(min(workers, len(spans)))]:
                f.result()
    finally:
        torch.set_num_threads(previous)


def _block_top_k(
    q: Tensor, g: Tensor, k: int, tile: int, scratch: _Scratch
) -> tuple[Tensor, Tensor]:
    """Top-k of one query block (c, D) over every gallery tile, merged as it goes."""
    c, n = q.shape[0], g.shape[0]
    keep = min(k + 1, n)  # one spare candidate tells whether the k-th place is tied
    best_v = torch.full((c, keep), -math.inf, dtype=q.dtype)  # (c, k + 1) running best
    best_i = torch.full((c, keep), _NO_INDEX, dtype=torch.int64)
    for j0 in range(0, n, tile):
        w = min(tile, n - j0)
        s = torch.mm(q, g[j0 : j0 + w].T, out=scratch.scores[:c, :w])  # (c, w)
        floor = best_v.amin(dim=1)  # (c,) running keep-th score: nothing at or below it enters
        hits = _groups_above(scratch.scores[:c], w, floor) if scratch.skip and j0 else None
        if hits is None:  # first tile, no skip, or too many groups beat the running keep-th
            best_v, best_i = _merge_dense(s, j0, best_v, best_i)
        elif hits[0].numel():
            _merge_sparse(scratch.scores[:c], w, j0, hits, floor, (best_v, best_i))
    best_v, best_i = _sort_scores_then_index(best_v, best_i)
    if keep > k:
        tied = torch.nonzero(best_v[:, k - 1] == best_v[:, k]).ravel()
        for r in tied.tolist():  # rare: several rows equal to the k-th score
            best_v[r, :k], best_i[r, :k] = _exact_row(q[r], g, k)
    return best_v[:, :k], best_i[:, :k]


def _merge_dense(s: Tensor, j0: int, best_v: Tensor, best_i: Tensor) -> tuple[Tensor, Tensor]:
    """Merge a whole (c, w) scores tile into the running (c, keep) best: the tile's ``keep``
    best, then one ``topk`` over the ``2 keep`` candidates of every row."""
    keep = best_v.shape[1]
    v, i = torch.topk(s, min(keep, s.shape[1]), dim=1, sorted=False)  # (c, <= keep)
    cand_v, cand_i = torch.cat([best_v, v], dim=1), torch.cat([best_i, i + j0], dim=1)
    best_v, pick = torch.topk(cand_v, keep, dim=1, sorted=False)
    return best_v, cand_i.gather(1, pick)


def _groups_above(scores: Tensor, w: int, floor: Tensor) -> tuple[Tensor, Tensor] | None:
    """(rows, groups) of the ``GROUP``-column groups of a tile whose maximum is above the row's
    ``floor``, or None when they hold too much of the tile for the sparse merge to pay.

    Args:
        scores: (c, >= w) scratch rows, the tile in the first ``w`` columns; the columns from
            ``w`` to the next multiple of ``GROUP`` are set to -inf here (whole groups).
        w: tile width. floor: (c,) running keep-th score of each row.

    Returns:
        ``(rows, groups)``, each (m,), in row-major order; or None.
    """
    c, wp = scores.shape[0], -(-w // GROUP) * GROUP
    scores[:, w:wp] = -math.inf
    group_max = torch.amax(scores[:, :wp].view(c, wp // GROUP, GROUP), dim=2)  # (c, wp / G)
    # "not <=" rather than ">": a NaN score counts as above, as it would for a dense topk
    hit = torch.logical_not(group_max <= floor[:, None])  # (c, wp / G)
    rows, groups = torch.nonzero(hit, as_tuple=True)  # (m,) each
    if rows.numel() * GROUP * _DENSE_SHARE > c * w:
        return None
    return rows, groups


def _merge_sparse(
    scores: Tensor,
    w: int,
    j0: int,
    hits: tuple[Tensor, Tensor],
    floor: Tensor,
    best: tuple[Tensor, Tensor],
) -> None:
    """Merge the scores above ``floor`` in the hit groups of a tile into ``best``, in place.

    Those few scores are packed into an (h, width) matrix, one row per row that has any (width
    = the most any row has; -inf after a row's own), and one ``topk`` over it beside the rows'
    running best picks their new best.

    Args:
        scores, w: as for :func:`_groups_above` (after it). j0: gallery index of column 0.
        hits: its ``(rows, groups)``. floor: (c,). best: running (c, keep) scores and indices.
    """
    rows, groups = hits  # (m,) each, sorted by row
    best_v, best_i = best
    per_scores_row = scores.shape[1] // GROUP  # scores: contiguous (c, width), width = n G
    vals = scores.view(-1, GROUP).index_select(0, rows * per_scores_row + groups)  # (m, G)
    at, col = torch.nonzero(torch.logical_not(vals <= floor[rows, None]), as_tuple=True)  # (e,)
    row, e = rows[at], at.numel()  # (e,) still sorted by row
    if e == 0:
        return
    hit_rows, per_row = torch.unique_consecutive(row, return_counts=True)  # (h,) each
    h, width = hit_rows.numel(), int(per_row.max())
    local = torch.repeat_interleave(torch.arange(h), per_row, output_size=e)  # (e,) in 0..h-1
    slot = torch.arange(e) - (torch.cumsum(per_row, 0) - per_row)[local]  # (e,) place in row
    cand_v = torch.full((h, width), -math.inf, dtype=scores.dtype)
    cand_v[local, slot] = vals[at, col]
    cand_i = torch.full((h, width), _NO_INDEX, dtype=torch.int64)
    tile_col = groups[at] * GROUP + col  # (e,); the -inf padding past w never wins a tie
    cand_i[local, slot] = torch.where(tile_col < w, tile_col + j0, _NO_INDEX)
    all_v = torch.cat([best_v[hit_rows], cand_v], dim=1)  # (h, keep + width)
    all_i = torch.cat([best_i[hit_rows], cand_i], dim=1)
    top_v, pick = torch.topk(all_v, best_v.shape[1], dim=1, sorted=False)  # (h, keep)
    best_v[hit_rows], best_i[hit_rows] = top_v, all_i.gather(1, pick)


def _sort_scores_then_index(v: Tensor, i: Tensor) -> tuple[Tensor, Tensor]:
    """Order each row by score descending, then index ascending (two stable sorts)."""
    i, by_index = torch.sort(i, dim=1, stable=True)
    v = v.gather(1, by_index)
    v, by_score = torch.sort(v, dim=1, descending=True, stable=True)
    return v, i.gather(1, by_score)


def _exact_row(q: Tensor, g: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top-k of one query by a full stable sort (for rows tied at the k-th place)."""
    s = g @ q  # (N,)
    v, order = torch.sort(s, descending=True, stable=True)
    return v[:k], order[:k]
