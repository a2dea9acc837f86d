"""Exact top-k inner-product search, streamed over query blocks and gallery tiles.

This is the one exact search of modalign: :func:`modalign.eval.retrieval.top_k` (report examples,
hubness) and the ``exact`` index backend both call :func:`top_k_tensor`.

**How it stays near the matrix-multiply bound (the tricks).**

* *Blocks and tiles.* Queries go in blocks of about 1,024 rows, the gallery in tiles of
  ``tile`` rows; each (block, tile) score matrix is written into one preallocated buffer
  (``torch.mm(out=...)``), so no (Q, N) matrix is ever built and no page is faulted in per block
  (a fresh (335, 100,000) scores tensor per chunk cost as much as its matmul). Peak memory is
  ``workers * block * tile`` floats beside the gallery.
* *Running top-k merge.* Each tile's ``k + 1`` best are merged into the block's running
  ``k + 1`` best with one small ``topk`` over ``2k + 2`` columns, so the gallery is read once and
  the tile's scores stay in cache while they are reduced.
* *One intra-op thread per worker.* Query blocks go to ``workers`` Python threads, each running
  its matmuls and reductions with one intra-op thread: no barrier after every operation, so a core
  taken by another process slows one worker, not all (as in :mod:`modalign.losses.tiled`).
  ``benchmarks/bench_search.py --exact`` measures this against two threads per operation.

**Ties.** Results are exact: the returned scores are the ``k`` largest, in descending order, and
among equal scores the lower gallery index comes first, including at the ``k``-th place. ``topk``
alone does not promise which of several tied items it keeps, so one extra candidate (``k + 1``)
is carried: when the ``k``-th and ``k + 1``-th scores differ the set is determined by the values;
the rare rows where they are equal are recomputed in full with a stable sort.

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
_NO_INDEX = torch.iinfo(torch.int64).max  # sorts after every real index


@dataclass
class _Scratch:
    """A worker's reused (block, tile) scores buffer."""

    scores: Tensor


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
        queries: (Q, D) float32. gallery: (N, D) float32 (rows need not be normalised).
        k: results per query; more than N returns N.
        block: queries per block (default about 1,024, split evenly over the workers).
        tile: gallery rows per tile.
        workers: worker threads with one intra-op thread each; 1 runs in the calling thread with
            torch's own threads (default: ``torch.get_num_threads()``).

    Returns:
        ``(scores, indices)``: float32 and int64, each (Q, min(k, N)), best first, lower index
        first among equal scores.

    Example:
        >>> s, i = top_k_tensor(torch.eye(3), torch.eye(3), 1)
        >>> i.ravel().tolist()
        [0, 1, 2]
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n_q, n = queries.shape[0], gallery.shape[0]
    k = min(k, n)
    out_v = torch.empty(n_q, k, dtype=torch.float32)  # (Q, k)
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

    _run_blocks(spans, workers, lambda: _Scratch(torch.empty(block, tile)), run)
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
    best_v = torch.full((c, keep), -math.inf)  # (c, k + 1) running best
    best_i = torch.full((c, keep), _NO_INDEX, dtype=torch.int64)
    for j0 in range(0, n, tile):
        w = min(tile, n - j0)
        s = torch.mm(q, g[j0 : j0 + w].T, out=scratch.scores[:c, :w])  # (c, w)
        v, i = torch.topk(s, min(keep, w), dim=1, sorted=False)  # (c, <= k + 1)
        cand_v, cand_i = torch.cat([best_v, v], dim=1), torch.cat([best_i, i + j0], dim=1)
        best_v, pick = torch.topk(cand_v, keep, dim=1, sorted=False)
        best_i = cand_i.gather(1, pick)
    best_v, best_i = _sort_scores_then_index(best_v, best_i)
    if keep > k:
        tied = torch.nonzero(best_v[:, k - 1] == best_v[:, k]).ravel()
        for r in tied.tolist():  # rare: several rows equal to the k-th score
            best_v[r, :k], best_i[r, :k] = _exact_row(q[r], g, k)
    return best_v[:, :k], best_i[:, :k]


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
