"""How many intra-op threads a training step or an evaluation should use, and a context that
sets them (and restores them after).

PyTorch splits every large enough CPU operation over ``torch.get_num_threads()`` OpenMP threads
and waits for all of them at the end of the operation. That pays when an operation is big: a
(4096, 1024) x (1024, 1024) product splits into long, even halves. It costs when operations are
small (a projection head over a batch of 256 rows: each product takes a fraction of a
millisecond, and the split, wake-up and barrier cost as much) and whenever another process holds
a core: the barrier then waits for a thread the scheduler has parked, a time slice per operation.
Measured on a shared 2-core machine (``benchmarks/bench_train.py``): 15.6 ms per step of the
synthetic config with one thread, 117 ms with two.

The same holds for numpy's OpenBLAS threads in the evaluation's small products and
decompositions (3x faster with one thread for 300 rows on a loaded machine).

The choice (:func:`choose_threads`) is a pure function of the work per operation, the process's
own thread limit, the cores and the runnable tasks of other processes, so it can be tested without
timing; :func:`auto_threads` gathers those inputs for a model and a batch size,
:func:`threads_for_flops` for any work. Training (``modalign.train.loop``) and evaluation
(``modalign.eval.suite``) both use it, so it lives outside either package. The loss's tiled
kernel runs its tiles on ``torch.get_num_threads()`` worker threads of one intra-op thread each
(``modalign.losses.tiled``), which a busy core does not stall; its tiles count as operations of
the step here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

MIN_PARALLEL_FLOPS = 2**26
"""Mean floating-point operations per matrix product below which one thread is faster.

About 2 ms on one core at 30 GFLOP/s: a split saves at most 1 ms then, against a fork, a barrier
and cold caches per operation (and a time slice when a core is busy). Heads of 256-wide layers
over batches of 256 rows come to about 5e6 per product; a 1024-wide head over 4,096 rows to 6e9.
"""


def choose_threads(op_flops: float, limit: int, cores: int, others: float) -> int:
    """Intra-op threads for a step whose matrix products average ``op_flops`` each.

    Args:
        op_flops: mean floating-point operations of one matrix product of the step
            (``math.inf`` when unknown but large, e.g. a trainable encoder).
        limit: the most threads to use: the process's own setting (``torch.get_num_threads()``,
            which ``OMP_NUM_THREADS`` sets), never exceeded.
        cores: CPU cores this process may run on.
        others: runnable tasks of other processes now (they hold cores a barrier would wait for).

    Returns:
        1 when products are small or no core is free beside this process's own; otherwise the
        free cores, at most ``limit``.

    Example:
        >>> choose_threads(5e6, limit=2, cores=2, others=0)  # small heads: one thread
        1
        >>> choose_threads(6e9, limit=2, cores=2, others=0)  # big products on an idle machine
        2
        >>> choose_threads(6e9, limit=2, cores=2, others=3)  # ... on a busy one
        1
    """
    if limit <= 1 or op_flops < MIN_PARALLEL_FLOPS:
        return 1
    free = int(cores - others)  # cores not held by another runnable task
    return max(1, min(limit, free))


def mean_matmul_flops(model: nn.Module, batch_size: int, embed_dim: int, tile: int) -> float:
    """Mean flops of one forward matrix product of a training step of ``model``.

    Counts the ``nn.Linear`` layers at ``batch_size`` rows, and the loss's (tile, D) x (D, tile)
    products when the batch spans several tiles (one tile runs on one worker whatever the
    threads). Any other module with a weight matrix (a convolutional or attention encoder, frozen
    or not: it runs every step) makes the work unknown: ``math.inf``, i.e. "large".

    Args:
        model: the model being trained. batch_size: rows per process and step.
        embed_dim: width D of the shared space. tile: the loss kernel's tile side.

    Returns:
        Mean flops per product (0.0 when there is none).

    Example:
        >>> head = nn.Sequential(nn.Linear(48, 256), nn.GELU(), nn.Linear(256, 64))
        >>> mean_matmul_flops(head, 256, 64, tile=1024) == 2 * 256 * (48 * 256 + 256 * 64) / 2
        True
    """
    products: list[float] = []
    for module in model.modules():
        if not any(p.ndim >= 2 for p in module.parameters(recurse=False)):
            continue  # no weight matrix here (norms, activations, scalars like the temperature)
        if isinstance(module, nn.Linear):
            products.append(2.0 * batch_size * module.in_features * module.out_features)
        elif not isinstance(module, nn.Embedding):  # an embedding is a look-up
            return math.inf
    if batch_size > tile:
        products.append(2.0 * tile * tile * embed_dim)
    return sum(products) / len(products) if products else 0.0


def runnable_others(path: str = "/proc/loadavg") -> float:
    """Tasks of other processes that are runnable now (0.0 where the system does not say).

    The fourth field of Linux's ``/proc/loadavg`` counts runnable tasks at this instant,
    including the reader itself; the one-minute load average would lag a job that just started.
    """
    try:
        with open(path) as f:
            running = f.read().split()[3].split("/")[0]
        return max(0.0, float(running) - 1.0)
    except (OSError, IndexError, ValueError):
        return 0.0


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_for_flops(op_flops: float) -> int:
    """:func:`choose_threads` for products of ``op_flops`` each, with this machine's state now."""
    return choose_threads(op_flops, torch.get_num_threads(), usable_cores(), runnable_others())


def auto_threads(model: nn.Module, batch_size: int, embed_dim: int, tile: int) -> int:
    """:func:`threads_for_flops` for a training step of ``model`` (see :func:`mean_matmul_flops`)."""
    return threads_for_flops(mean_matmul_flops(model, batch_size, embed_dim, tile))


@contextmanager
def step_threads(threads: int | None, blas: bool = False) -> Iterator[int]:
    """Run the block with ``threads`` intra-op threads, then restore the previous setting.

    A library call must not change its caller's process for good, so the previous count comes
    back even when the block raises. ``None`` leaves the setting alone. ``blas=True`` also limits
    the BLAS libraries numpy uses (through threadpoolctl, when installed).

    Example:
        >>> before = torch.get_num_threads()
        >>> with step_threads(1) as n:
        ...     torch.get_num_threads() == n == 1
        True
        >>> torch.get_num_threads() == before
        True
    """
    previous = torch.get_num_threads()
    if threads is None:
        yield previous
        return
    with ExitStack() as stack:
        if blas:
            stack.enter_context(_blas_limit(threads))
        if threads != previous:
            torch.set_num_threads(threads)
            stack.callback(torch.set_num_threads, previous)
        yield threads


@contextmanager
def _blas_limit(threads: int) -> Iterator[None]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # an optional speed-up: without it numpy keeps its threads
        yield
        return
    with threadpool_limits(threads, user_api="blas"):
        yield
