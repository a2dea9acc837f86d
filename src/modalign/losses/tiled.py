"""Memory-bounded InfoNCE and SigLIP: custom autograd functions that never build the logits matrix.

The plain references in ``modalign.losses.functional`` materialise the (B, B') logits, which is
what limits the batch size (B = 32768 needs 4 GiB per copy, and autograd keeps several). Here the
logits are produced one (T, T) tile at a time, reduced, and thrown away, so memory is
O(B * D + T^2) whatever B is.

The work is organised as a *block*: ``x`` holds the rows this process owns (all rows on one
process, the local shard under data parallelism) and ``y`` holds all columns. Both directions of
the symmetric InfoNCE come out of that single block, so each tile is computed once per pass.

Maths tricks used below, each explained where it is used:

* **Positives without a mask.** The positive part of either loss is linear in the logits, so it
  is ``scale * sum_i a_i <x_i, S_{g_i}>`` with ``S_g = sum of the y rows in group g`` (a segment
  sum, O(B * D)); the tile passes only see the dense, mask-free part. For paired rows (no
  groups) the positives sit on one diagonal, and their gradient is subtracted inside the tile
  (``_sub_diagonal_``) so that a nearly one-hot softmax does not cancel in fp32.
* **Running log-sum-exp.** Each tile updates the row and column log-sum-exp with
  ``logaddexp(running, tile)``, shifting by the tile's own maxima so nothing overflows.
* **One recomputed tile feeds both directions.** ``d loss / d logits`` is
  ``W_ij = w_i softmax_row_ij + v_j softmax_col_ij`` minus the positives, so one recomputed tile
  gives ``W @ y`` (gradient of x) and ``W.T @ x`` (gradient of y): InfoNCE costs four tile
  matmuls in all (one forward, three backward), 8 B^2 D flops.
* **SigLIP needs no second pass.** Its gradient ``sigmoid(logit)`` does not depend on any global
  normaliser, so the forward pass already accumulates the gradients (three matmuls, 6 B^2 D flops,
  the lower bound) and the backward pass only rescales them.
* **d loss / d scale for free.** ``sum_ij W_ij <x_i, y_j> = sum_i <x_i, (W @ y)_i>``: the scale's
  gradient is a dot product with the already accumulated ``W @ y``.
* **exp through sigmoid.** ``exp(t) = e^c sigmoid(t - c)`` to fp32 rounding for ``t <= 0``, and
  torch's sigmoid is the faster kernel (:func:`_shift`).
* **No barrier per operation.** Row blocks go to worker threads with one intra-op thread each
  (:func:`_run_row_blocks`), so a core lost to another process stalls one worker, not all.

References:
    Milakov and Gimelshein, 2018, "Online normalizer calculation for softmax" (running lse).
    Dao et al., 2022, "FlashAttention" (tiling with recomputation in the backward pass).
    Zhai et al., 2023, "Sigmoid Loss for Language Image Pre-Training" (SigLIP).
    Radford et al., 2021, CLIP; Yang et al., 2022, UniCL (multi-positive InfoNCE).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from modalign.losses.functional import check_pairing

DEFAULT_TILE = 1024
"""Tile side. Each worker thread holds two 1024 x 1024 fp32 tiles (8 MiB), so two workers stay in
a 32 MiB L3 cache, and a (1024, 512) x (512, 1024) product still runs near the core's peak;
see ``benchmarks/bench_loss.py --tile``."""

LseReducer = Callable[[Tensor], Tensor]


def _identity(t: Tensor) -> Tensor:
    return t


# ----------------------------------------------------------------------------------------------
# Positives: which (row, column) pairs are positive, and the counts both losses need.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Positives:
    """Positive pairs between the local rows and all columns of a block.

    ``row_ids``/``col_ids`` are compact group ids (``None``: paired rows, local row ``i`` is
    positive with column ``offset + i`` only). Counts are over the *global* batch.

    Attributes:
        row_ids: (n,) compact group id per local row, or None.
        col_ids: (m,) compact group id per column, or None.
        n_groups: number of compact groups (0 when paired).
        offset: global index of the first local row (paired case).
        row_pos: (n,) number of positive columns of each local row.
        row_group_rows: (n,) number of rows (all processes) in each local row's group.
        col_pos: (m,) number of positive rows (all processes) of each column.
        n_rows: number of rows over all processes.
        n_rows_with_pos: rows (all processes) that have at least one positive column.
    """

    row_ids: Tensor | None
    col_ids: Tensor | None
    n_groups: int
    offset: int
    row_pos: Tensor
    row_group_rows: Tensor
    col_pos: Tensor
    n_rows: int
    n_rows_with_pos: int

    @property
    def n_cols_with_pos(self) -> int:
        """Columns that have at least one positive row."""
        return int((self.col_pos > 0).sum())


def make_positives(
    n_cols: int,
    rows: slice,
    n_rows: int,
    all_row_groups: Tensor | None = None,
    col_groups: Tensor | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Positives:
    """Build the :class:`Positives` of a block from global group ids.

    Args:
        n_cols: number of columns (all processes).
        rows: which slice of the global rows this process owns.
        n_rows: number of rows over all processes.
        all_row_groups: (n_rows,) group ids of all rows, or None for paired rows.
        col_groups: (n_cols,) group ids of all columns, or None for paired rows.
        device, dtype: where the counts live and their float type (that of the embeddings).

    Returns:
        The positives of local rows ``rows`` against all columns.

    Example:
        >>> g = torch.tensor([0, 0, 1])
        >>> p = make_positives(3, slice(0, 3), 3, g, g)
        >>> p.row_pos.tolist(), p.n_rows_with_pos
        ([2.0, 2.0, 1.0], 3)
    """
    check_pairing(n_rows, n_cols, all_row_groups, col_groups)
    dtype = torch.float64 if dtype == torch.float64 else torch.float32  # counts overflow fp16
    if all_row_groups is None or col_groups is None:
        n = rows.stop - rows.start
        ones = torch.ones(n, dtype=dtype, device=device)
        col_ones = torch.ones(n_cols, dtype=dtype, device=device)
        return Positives(None, None, 0, rows.start, ones, ones, col_ones, n_rows, n_rows)
    # Compact ids shared by both sides: equal group ids map to the same small integer.
    uniq, inv = torch.unique(torch.cat([all_row_groups, col_groups]), return_inverse=True)
    row_all, col_ids = inv[:n_rows], inv[n_rows:]
    cols_per_group = torch.bincount(col_ids, minlength=len(uniq)).to(dtype)  # (G,)
    rows_per_group = torch.bincount(row_all, minlength=len(uniq)).to(dtype)  # (G,)
    row_ids = row_all[rows]
    return Positives(
        row_ids=row_ids,
        col_ids=col_ids,
        n_groups=len(uniq),
        offset=rows.start,
        row_pos=cols_per_group[row_ids],
        row_group_rows=rows_per_group[row_ids],
        col_pos=rows_per_group[col_ids],
        n_rows=n_rows,
        n_rows_with_pos=int((cols_per_group[row_all] > 0).sum()),
    )


def _group_sum_cols(y: Tensor, pos: Positives) -> Tensor:
    """(n, D): for each local row, the sum of its positive columns ``S_{g_i}``."""
    if pos.row_ids is None or pos.col_ids is None:
        return y[pos.offset : pos.offset + len(pos.row_pos)]
    sums = y.new_zeros(pos.n_groups, y.shape[1]).index_add_(0, pos.col_ids, y)  # (G, D)
    return sums[pos.row_ids]  # (n, D)


def _add_pos_col_grad_(gy: Tensor, ax: Tensor, pos: Positives, alpha: float) -> None:
    """``gy_j += alpha * sum of ax_i over local rows i positive with column j`` (in place)."""
    if pos.row_ids is None or pos.col_ids is None:
        gy[pos.offset : pos.offset + len(ax)].add_(ax, alpha=alpha)
        return
    sums = ax.new_zeros(pos.n_groups, ax.shape[1]).index_add_(0, pos.row_ids, ax)  # (G, D)
    gy.add_(sums[pos.col_ids], alpha=alpha)  # (m, D)


# ----------------------------------------------------------------------------------------------
# Tile passes (no autograd; plain tensors in, plain tensors out).
# ----------------------------------------------------------------------------------------------


def _spans(n: int, tile: int) -> list[tuple[int, int]]:
    return [(s, min(s + tile, n)) for s in range(0, n, tile)]


def _buffer(x: Tensor, y: Tensor, tile: int) -> Tensor:
    """A flat scratch buffer for one tile (never larger than the whole matrix)."""
    return x.new_empty(min(tile, x.shape[0]) * min(tile, y.shape[0]))


def _view(buf: Tensor, rows: int, cols: int) -> Tensor:
    """A contiguous (rows, cols) view on the front of a flat buffer (edge tiles are smaller)."""
    return buf[: rows * cols].view(rows, cols)


def _logits_(out: Tensor, x: Tensor, y: Tensor, scale: float) -> Tensor:
    """``out = scale * x @ y.T`` with the scale folded into the matmul (no extra pass)."""
    return torch.addmm(out, x, y.T, beta=0, alpha=scale, out=out)  # (t, t')


def _shift(dtype: torch.dtype) -> float:
    """``exp(t) = e^c * sigmoid(t - c) * (1 + O(e^(t - c)))`` for ``t <= 0``.

    With c = 20 the correction is below 2e-9, under fp32 rounding (c = 40 for float64), and
    torch's vectorised sigmoid runs about twice as fast as its exp on these CPUs. Every
    exponential of a non-positive argument below is taken this way (:func:`_exp_`); terms below
    e^-67 underflow, far below any term that matters next to the largest one (1).
    """
    return 40.0 if dtype == torch.float64 else 20.0


def _exp_(t: Tensor) -> Tensor:
    """In place: ``t <- e^-c exp(t + c)`` (see :func:`_shift`); callers pre-subtract ``c``."""
    return torch.sigmoid(t, out=t)


class _Scratch:
    """One worker's two tile buffers."""

    def __init__(self, x: Tensor, y: Tensor, tile: int) -> None:
        self.a, self.b = _buffer(x, y, tile), _buffer(x, y, tile)


RowBody = Callable[[_Scratch, int, int, list[tuple[int, int]]], None]


def _run_row_blocks(x: Tensor, y: Tensor, tile: int, body: RowBody) -> None:
    """``body(scratch, r0, r1, col_spans)`` for every block of ``tile`` rows, on worker threads.

    Each of ``torch.get_num_threads()`` Python threads runs one intra-op thread and pulls the
    next row block when it is done: no barrier after every tile operation, so a core taken by
    another process slows one worker, not both (on a shared 2-core machine this is about 1.5x
    faster than two OpenMP threads per operation). Row block k visits the column tiles starting at
    k, so workers rarely meet on the same column block (they lock it to accumulate into it) and
    paired rows see their diagonal tile first.
    """
    rows, cols = _spans(x.shape[0], tile), _spans(y.shape[0], tile)
    # On a GPU the kernels are asynchronous already: one thread feeds the stream. Workers add
    # into shared column blocks in whatever order they reach them, so sums may differ in the last
    # bit from run to run; torch.use_deterministic_algorithms(True) asks for one worker.
    serial = x.is_cuda or torch.are_deterministic_algorithms_enabled()
    workers = 1 if serial else min(torch.get_num_threads(), len(rows))
    jobs = iter(enumerate(rows))
    take = threading.Lock()

    def work() -> None:
        scratch = _Scratch(x, y, tile)
        with torch.no_grad():  # grad mode is per thread; out= ops must not record
            while True:
                with take:
                    k, (r0, r1) = next(jobs, (-1, (0, 0)))
                if k < 0:
                    return
                body(scratch, r0, r1, cols[k % len(cols) :] + cols[: k % len(cols)])

    if workers <= 1:
        return work()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            for f in [pool.submit(work) for _ in range(workers)]:
                f.result()
    finally:
        torch.set_num_threads(previous)


def _col_locks(y: Tensor, tile: int) -> dict[int, threading.Lock]:
    return {c0: threading.Lock() for c0, _ in _spans(y.shape[0], tile)}


def lse_pass(x: Tensor, y: Tensor, scale: float, tile: int) -> tuple[Tensor, Tensor]:
    """Row and column log-sum-exp of ``scale * x @ y.T``, one tile at a time.

    Args:
        x: (n, D) rows. y: (m, D) columns. scale: inverse temperature. tile: tile side.

    Returns:
        ``(row_lse (n,), col_lse (m,))``; the columns' values cover only these rows.

    Example:
        >>> x, y = torch.randn(5, 3), torch.randn(4, 3)
        >>> r, c = lse_pass(x, y, 2.0, tile=2)
        >>> torch.allclose(r, (2 * x @ y.T).logsumexp(1)), torch.allclose(c, (2 * x @ y.T).logsumexp(0))
        (True, True)
    """
    row = x.new_full((x.shape[0],), -math.inf)
    col = x.new_full((y.shape[0],), -math.inf)
    c, locks = _shift(x.dtype), _col_locks(y, tile)

    def body(sc: _Scratch, r0: int, r1: int, col_spans: list[tuple[int, int]]) -> None:
        for c0, c1 in col_spans:
            logits = _logits_(_view(sc.a, r1 - r0, c1 - c0), x[r0:r1], y[c0:c1], scale)
            # Shift by the tile's own maxima: every exponent is <= 0, the largest term is 1.
            rmax = logits.amax(1)  # (t,)
            e = _exp_(torch.sub(logits, rmax[:, None] + c, out=_view(sc.b, r1 - r0, c1 - c0)))
            row[r0:r1] = torch.logaddexp(row[r0:r1], rmax + c + e.sum(1).log())
            cmax = logits.amax(0)  # (t',)
            tile_lse = cmax + c + _exp_(logits.sub_(cmax[None, :] + c)).sum(0).log()
            with locks[c0]:
                col[c0:c1] = torch.logaddexp(col[c0:c1], tile_lse)

    _run_row_blocks(x, y, tile, body)
    return row, col


Diagonal = tuple[int, Tensor]
"""``(offset, coef)``: subtract ``coef_i`` at (row i, column offset + i) of d loss / d logits."""


def _sub_diagonal_(grad_tile: Tensor, r0: int, c0: int, diag: Diagonal | None, unit: float) -> None:
    """Take the positives of paired rows out of a tile of d loss / d logits, in place.

    Subtracting them here, before the products, rather than ``a_i * y_i`` from ``W @ y`` later,
    avoids cancellation in fp32 when the softmax is nearly one-hot (a well-trained model at
    a high scale): the tile then holds the small difference itself.
    """
    if diag is None:
        return
    offset, coef = diag
    d = offset + r0 - c0  # tile column of row r0's positive
    band = grad_tile.diagonal(d)  # (k, k + d) for d >= 0, (k - d, k) for d < 0
    if band.numel():
        start = r0 + max(-d, 0)
        band.sub_(coef[start : start + band.numel()], alpha=unit)


def softmax_grad_pass(
    x: Tensor,
    y: Tensor,
    scale: float,
    row_shift: Tensor,
    col_shift: Tensor,
    tile: int,
    diag: Diagonal | None = None,
) -> tuple[Tensor, Tensor]:
    """``(W @ y, W.T @ x)`` for ``W_ij = exp(l_ij - row_shift_i) + exp(l_ij - col_shift_j)``.

    With ``row_shift = row_lse - log w`` and ``col_shift = col_lse - log v``, ``W`` is the
    weighted sum of the row softmax and the column softmax of the logits ``l = scale * x @ y.T``:
    the derivative of ``sum_i w_i row_lse_i + sum_j v_j col_lse_j``. Each tile is recomputed once
    and serves both products.

    Args:
        x: (n, D). y: (m, D). scale: float. row_shift: (n,). col_shift: (m,). tile: tile side.
        diag: paired positives to subtract from ``W`` (see :func:`_sub_diagonal_`).

    Returns:
        ``(gx (n, D), gy (m, D))``.
    """
    gx, gy = torch.zeros_like(x), torch.zeros_like(y)
    c, locks = _shift(x.dtype), _col_locks(y, tile)
    # Shifts are lse minus log weight >= max logit (weights <= 1), so exponents are <= 0.
    row_shift, col_shift = row_shift + c, col_shift + c

    def body(sc: _Scratch, r0: int, r1: int, col_spans: list[tuple[int, int]]) -> None:
        for c0, c1 in col_spans:
            logits = _logits_(_view(sc.a, r1 - r0, c1 - c0), x[r0:r1], y[c0:c1], scale)
            p_row = _exp_(
                torch.sub(logits, row_shift[r0:r1, None], out=_view(sc.b, r1 - r0, c1 - c0))
            )
            w = _exp_(logits.sub_(col_shift[None, c0:c1])).add_(p_row)  # (t, t') = W tile / e^c
            _sub_diagonal_(w, r0, c0, diag, math.exp(-c))
            gx[r0:r1].addmm_(w, y[c0:c1])  # (t, D); this worker owns these rows
            with locks[c0]:
                gy[c0:c1].addmm_(w.T, x[r0:r1])  # (t', D)

    _run_row_blocks(x, y, tile, body)
    return gx.mul_(math.exp(c)), gy.mul_(math.exp(c))


def softplus_pass(
    x: Tensor,
    y: Tensor,
    scale: float,
    bias: float,
    tile: int,
    need_grad: bool,
    diag: Diagonal | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """``sum_ij softplus(l_ij + bias)`` and, if asked, its derivatives in the same pass.

    ``d softplus(z) / dz = sigmoid(z)`` needs no global statistic, so the gradients are
    accumulated while the tile is still in cache: ``S @ y``, ``S.T @ x`` and ``sum S`` with
    ``S = sigmoid(l + bias)``.

    Args:
        x: (n, D). y: (m, D). scale, bias: floats. tile: tile side. need_grad: also accumulate.
        diag: paired positives to subtract from ``S`` (see :func:`_sub_diagonal_`).

    Returns:
        ``(value (0-d, float64), S @ y (n, D), S.T @ x (m, D), sum S (0-d))``; None without grad.
    """
    gx = torch.zeros_like(x) if need_grad else None
    gy = torch.zeros_like(y) if need_grad else None
    locks, zero = _col_locks(y, tile), x.new_zeros(())
    sums: list[Tensor] = []  # per tile: [value, sum S]; list.append is atomic

    def body(sc: _Scratch, r0: int, r1: int, col_spans: list[tuple[int, int]]) -> None:
        for c0, c1 in col_spans:
            z = _logits_(_view(sc.a, r1 - r0, c1 - c0), x[r0:r1], y[c0:c1], scale).add_(bias)
            # softplus(z) = logaddexp(z, 0), written into scratch: no allocation per tile (fresh
            # 4 MiB tensors in worker threads' malloc arenas bloat the resident set).
            value = torch.logaddexp(z, zero, out=_view(sc.b, r1 - r0, c1 - c0)).sum()
            if gx is None or gy is None:
                sums.append(torch.stack([value, torch.zeros_like(value)]))
                continue
            s = torch.sigmoid(z, out=z)  # (t, t')
            _sub_diagonal_(s, r0, c0, diag, 1.0)
            sums.append(torch.stack([value, s.sum()]))
            gx[r0:r1].addmm_(s, y[c0:c1])
            with locks[c0]:
                gy[c0:c1].addmm_(s.T, x[r0:r1])

    _run_row_blocks(x, y, tile, body)
    total, gb = torch.stack(sums).double().sum(0) if sums else x.new_zeros(2, dtype=torch.float64)
    return total, gx, gy, (gb if need_grad else None)


# ----------------------------------------------------------------------------------------------
# Autograd functions over a block (local rows x all columns).
# ----------------------------------------------------------------------------------------------


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """(n,): ``<a_i, b_i>`` for each row, as a batched matmul (no (n, D) temporary)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _flat_dot(a: Tensor, b: Tensor) -> Tensor:
    """``sum_ij a_ij b_ij`` without an (n, D) temporary."""
    return torch.dot(a.reshape(-1), b.reshape(-1))


def _info_nce_weights(pos: Positives) -> tuple[Tensor, Tensor, Tensor]:
    """Row weights w, column weights v and positive-logit coefficients a of the InfoNCE.

    ``loss = sum_i w_i row_lse_i + sum_j v_j col_lse_j - sum_i a_i <scale x_i, S_{g_i}>``: each
    direction is a mean over the rows (columns) that have a positive, halved; a positive pair of
    group g has coefficient ``1 / (2 N_r n_g) + 1 / (2 N_c m_g)`` (its share of both means).
    """
    n_r, n_c = max(pos.n_rows_with_pos, 1), max(pos.n_cols_with_pos, 1)
    has_row, has_col = pos.row_pos > 0, pos.col_pos > 0
    w = has_row.to(pos.row_pos.dtype) / (2.0 * n_r)  # (n,)
    v = has_col.to(pos.col_pos.dtype) / (2.0 * n_c)  # (m,)
    a = torch.where(
        has_row, 1 / (2 * n_r * pos.row_pos.clamp(min=1)) + 1 / (2 * n_c * pos.row_group_rows), 0.0
    )
    return w, v, a


def _info_nce_share(
    x: Tensor,
    y: Tensor,
    s: float,
    pos: Positives,
    row_lse: Tensor,
    col_lse: Tensor,
    weights: tuple[Tensor, Tensor, Tensor],
    world: int,
) -> Tensor:
    """This process's share of the InfoNCE value (the shares of all processes sum to the loss).

    Paired rows: each process owns the column terms of its rows' partners, and every term is
    formed as ``lse - positive logit`` before summing (no cancellation between two large sums).
    Groups: the column terms are split evenly, ``1 / world`` on each process.
    """
    w, v, a = weights
    if pos.row_ids is None:
        own = slice(pos.offset, pos.offset + x.shape[0])
        l_pos = s * _rowdot(x, y[own])  # (n,) logits of the positive pairs
        return (w * (row_lse - l_pos)).sum() + (v[own] * (col_lse[own] - l_pos)).sum()
    pos_logits = s * (a * _rowdot(x, _group_sum_cols(y, pos))).sum()
    col_terms = torch.where(v > 0, v * col_lse, 0.0).sum()
    return (w * row_lse).sum() + col_terms / world - pos_logits


class _InfoNCEBlock(torch.autograd.Function):
    """Tiled symmetric InfoNCE of a block; see :func:`info_nce_block`."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        y: Tensor,
        scale: Tensor,
        pos: Positives,
        world: int,
        reduce: LseReducer,
        tile: int,
    ) -> Tensor:
        s = float(scale)
        row_lse, col_part = lse_pass(x, y, s, tile)  # (n,), (m,) over local rows only
        col_lse = reduce(col_part)  # (m,) over the rows of every process
        w, v, a = (t.to(x.dtype) for t in _info_nce_weights(pos))
        value = world * _info_nce_share(x, y, s, pos, row_lse, col_lse, (w, v, a), world)
        ctx.save_for_backward(x, y, scale, row_lse, col_lse, w, v, a)
        ctx.pos, ctx.world, ctx.tile = pos, world, tile
        return value

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, y, scale, row_lse, col_lse, w, v, a = ctx.saved_tensors
        s, world, pos = float(scale), ctx.world, ctx.pos
        # w_i * exp(l - lse_i) = exp(l - (lse_i - log w_i)): the weights ride in the shifts
        # (w_i = 0 gives an infinite shift and an exact zero).
        row_shift = row_lse - torch.log(world * w)
        col_shift = col_lse - torch.log(world * v)
        paired = pos.row_ids is None
        diag = (pos.offset, world * a) if paired else None
        gx, gy = softmax_grad_pass(x, y, s, row_shift, col_shift, ctx.tile, diag)  # (n,D), (m,D)
        if not paired:  # group positives: segment sums, O(B * D)
            gx.addcmul_(a[:, None], _group_sum_cols(y, pos), value=-world)
            _add_pos_col_grad_(gy, a[:, None] * x, pos, alpha=-world)
        g_scale = _flat_dot(x, gx) * grad  # sum_ij dL/dl_ij <x_i, y_j>
        return (
            gx.mul_(s * grad),
            gy.mul_(s * grad),
            g_scale.reshape(scale.shape),
            None,
            None,
            None,
            None,
        )


class _SigLIPBlock(torch.autograd.Function):
    """Tiled SigLIP of a block; see :func:`siglip_block`."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        y: Tensor,
        scale: Tensor,
        bias: Tensor,
        pos: Positives,
        world: int,
        tile: int,
        need_grad: bool,
    ) -> Tensor:
        s, b = float(scale), float(bias)
        paired = pos.row_ids is None
        diag = (pos.offset, torch.ones_like(pos.row_pos, dtype=x.dtype)) if paired else None
        total, gx, gy, gb = softplus_pass(x, y, s, b, tile, need_grad, diag)
        sy = _group_sum_cols(y, pos)  # (n, D)
        # -log sigmoid(z l) = softplus(l) - [z = +1] l: the positives are a linear correction.
        n_pos = pos.row_pos.sum(dtype=torch.float64)
        pos_logits = s * _rowdot(x, sy).sum(dtype=torch.float64) + b * n_pos
        factor = world / max(pos.n_rows, 1)  # an empty global batch has loss 0
        value = (factor * (total - pos_logits)).to(x.dtype)
        ctx.grads = None
        if gx is not None and gy is not None and gb is not None:
            if not paired:  # group positives: segment sums, O(B * D)
                gx.sub_(sy)
                _add_pos_col_grad_(gy, x, pos, alpha=-1.0)
                gb = gb - n_pos
            g_scale = _flat_dot(x, gx) * factor
            ctx.grads = (
                gx.mul_(s * factor),
                gy.mul_(s * factor),
                g_scale,
                (gb * factor).to(x.dtype),
            )
            ctx.shapes = (scale.shape, bias.shape)
        return value

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.grads is None:
            raise RuntimeError("tiled SigLIP: gradients were not prepared, or backward ran twice")
        gx, gy, g_scale, g_bias = ctx.grads
        ctx.grads = None  # handed over in place: the (n, D) buffers are not copied
        s_shape, b_shape = ctx.shapes
        return (
            gx.mul_(grad),
            gy.mul_(grad),
            (g_scale * grad).reshape(s_shape),
            (g_bias * grad).reshape(b_shape),
            None,
            None,
            None,
            None,
        )


# ----------------------------------------------------------------------------------------------
# Public entry points.
# ----------------------------------------------------------------------------------------------


def _upcast(*ts: Tensor) -> tuple[Tensor, ...]:
    """Half-precision embeddings are reduced in float32 (the shifted exponentials need its range)."""
    return tuple(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in ts)


def _tile(tile_size: int | None) -> int:
    tile = DEFAULT_TILE if tile_size is None else int(tile_size)
    if tile < 1:
        raise ValueError(f"tile_size must be positive, got {tile}")
    return tile


def info_nce_block(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    pos: Positives,
    *,
    world_size: int = 1,
    reduce_col_lse: LseReducer = _identity,
    tile_size: int | None = None,
) -> Tensor:
    """Symmetric InfoNCE of local rows ``x`` against all columns ``y``, tiled.

    On one process (``world_size = 1``) this is the loss. Under data parallelism every process
    passes its own rows and the gathered columns; ``reduce_col_lse`` combines the column
    log-sum-exp over processes (``logsumexp`` of the gathered partial values). The value returned
    is ``world_size`` times this process's share, so that the *mean* over processes is the global
    loss, and averaging the gradients over processes (what DDP does) gives the exact global
    gradient (``y``'s gradient must be summed back to its owners, as
    ``modalign.distributed.all_gather(..., with_grad=True)`` does).

    Args:
        x: (n, D) local rows. y: (m, D) all columns. scale: 0-d inverse temperature.
        pos: positives of this block (:func:`make_positives`).
        world_size: number of processes. reduce_col_lse: (m,) -> (m,) cross-process combine.
        tile_size: tile side (default :data:`DEFAULT_TILE`).

    Returns:
        0-d loss tensor.

    Example:
        >>> from modalign.losses.functional import info_nce_loss
        >>> x = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
        >>> y = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
        >>> pos = make_positives(6, slice(0, 6), 6)
        >>> s = torch.tensor(5.0)
        >>> torch.allclose(info_nce_block(x, y, s, pos, tile_size=4), info_nce_loss(x, y, s))
        True

    References:
        Radford et al., 2021 (CLIP); Yang et al., 2022 (UniCL); Dao et al., 2022 (FlashAttention).
    """
    x, y, scale = _upcast(x, y, scale)
    return _InfoNCEBlock.apply(x, y, scale, pos, world_size, reduce_col_lse, _tile(tile_size))


def siglip_block(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    bias: Tensor | None,
    pos: Positives,
    *,
    world_size: int = 1,
    tile_size: int | None = None,
) -> Tensor:
    """SigLIP loss of local rows ``x`` against all columns ``y``, tiled, gradients in one pass.

    Normalised by the global number of rows (open_clip and the paper). As for
    :func:`info_nce_block`, the value is ``world_size`` times this process's share. The gradients
    are computed in the forward pass and handed over (not copied) in the backward pass, so
    backpropagating twice through one call (``retain_graph=True``) raises.

    Args:
        x: (n, D) local rows. y: (m, D) all columns. scale: 0-d. bias: 0-d or None (zero).
        pos: positives of this block. world_size: number of processes. tile_size: tile side.

    Returns:
        0-d loss tensor.

    Example:
        >>> from modalign.losses.functional import siglip_loss
        >>> x = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
        >>> y = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
        >>> s, b = torch.tensor(5.0), torch.tensor(-2.0)
        >>> out = siglip_block(x, y, s, b, make_positives(6, slice(0, 6), 6), tile_size=4)
        >>> torch.allclose(out, siglip_loss(x, y, s, b))
        True

    References:
        Zhai et al., 2023, "Sigmoid Loss for Language Image Pre-Training".
    """
    if bias is None:
        bias = torch.zeros((), dtype=x.dtype, device=x.device)
    x, y, scale, bias = _upcast(x, y, scale, bias)
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, y, scale, bias))
    return _SigLIPBlock.apply(x, y, scale, bias, pos, world_size, _tile(tile_size), need_grad)


def tiled_info_nce_loss(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    bias: Tensor | None = None,
    groups_x: Tensor | None = None,
    groups_y: Tensor | None = None,
    tile_size: int | None = None,
) -> Tensor:
    """Memory-bounded drop-in for :func:`modalign.losses.functional.info_nce_loss`.

    Same arguments and value (``bias`` is ignored), O(B * D + tile^2) memory.

    Args:
        x: (B, D). y: (B', D). scale: 0-d. bias: ignored. groups_x: (B,). groups_y: (B',).
        tile_size: tile side (default :data:`DEFAULT_TILE`).

    Returns:
        0-d loss tensor.

    Example:
        >>> x = torch.eye(3)
        >>> round(tiled_info_nce_loss(x, x, torch.tensor(10.0), tile_size=2).item(), 4)
        0.0001

    References:
        Radford et al., 2021 (CLIP); Yang et al., 2022 (UniCL).
    """
    del bias
    n = x.shape[0]
    pos = make_positives(y.shape[0], slice(0, n), n, groups_x, groups_y, x.device, x.dtype)
    return info_nce_block(x, y, scale, pos, tile_size=tile_size)


def tiled_siglip_loss(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    bias: Tensor | None = None,
    groups_x: Tensor | None = None,
    groups_y: Tensor | None = None,
    tile_size: int | None = None,
) -> Tensor:
    """Memory-bounded drop-in for :func:`modalign.losses.functional.siglip_loss`.

    Args:
        x: (B, D). y: (B', D). scale: 0-d. bias: 0-d or None. groups_x: (B,). groups_y: (B',).
        tile_size: tile side (default :data:`DEFAULT_TILE`).

    Returns:
        0-d loss tensor.

    Example:
        >>> x = torch.eye(2)
        >>> round(tiled_siglip_loss(x, x, torch.tensor(10.0), torch.tensor(-5.0)).item(), 4)
        0.0134

    References:
        Zhai et al., 2023 (SigLIP).
    """
    n = x.shape[0]
    pos = make_positives(y.shape[0], slice(0, n), n, groups_x, groups_y, x.device, x.dtype)
    return siglip_block(x, y, scale, bias, pos, tile_size=tile_size)
