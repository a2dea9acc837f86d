"""Data-parallel helpers: rank and world size from the environment, and a gradient-aware gather.

Everything here is the identity on a single process, so library code calls these helpers
unconditionally and never threads a rank through its arguments (as sentence-transformers'
``util/distributed.py`` does). The launcher (``torchrun``) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_from_env` starts the process
group from them (gloo on CPU, NCCL on GPUs).

Gradients through :func:`all_gather`: the local shard always keeps its gradient (the gathered
tensor's local slice is the input itself). With ``with_grad=True`` the other shards carry
gradient too: in the backward pass every process's gradient with respect to the *whole* gathered
tensor is summed over processes and each process keeps its own slice. A loss that puts local
rows against gathered columns needs this to be exact, because the columns' gradients are
computed on the processes that own the rows.

Running on several processes, machines or GPUs (the same code; only the launch differs)::

    # one CPU machine, two processes (gloo), as the tests do
    torchrun --nproc-per-node=2 -m modalign train CONFIG.yaml
    # two machines with 8 GPUs each (NCCL): run on every machine, with its own --node-rank
    torchrun --nnodes=2 --nproc-per-node=8 --node-rank=0 \
        --rdzv-backend=c10d --rdzv-endpoint=HOST0:29500 -m modalign train CONFIG.yaml

:func:`init_from_env` then picks NCCL and the GPU ``LOCAL_RANK``. Each process embeds its own
share of the batch; the loss engine gathers the other processes' columns (with gradient) and
each process computes its rows against all columns, so the per-process loss work and memory
fall as ``1 / world_size``. Parameter gradients are averaged over processes, by DDP or by
:func:`average_gradients`. Every process must call the engine for the same modality pairs in the
same order (collectives), even when it holds no rows for a pair.

References:
    sentence-transformers, ``sentence_transformers/util/distributed.py`` (all_gather with grad).
    open_clip, ``open_clip/loss.py`` (``gather_features``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank: from the process group, else ``RANK``, else 0.

    Example:
        >>> isinstance(rank(), int)
        True
    """
    return dist.get_rank() if _initialised() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes: from the process group, else ``WORLD_SIZE``, else 1.

    Example:
        >>> world_size() >= 1
        True
    """
    return dist.get_world_size() if _initialised() else int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """Rank on this machine (``LOCAL_RANK``), which picks the GPU; 0 when unset."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Processes on this machine (``LOCAL_WORLD_SIZE``, which torchrun sets); 1 when unset."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def is_distributed() -> bool:
    """True when a process group with more than one process is running (gathers communicate)."""
    return _initialised() and dist.get_world_size() > 1


def init_from_env(backend: str | None = None) -> bool:
    """Start the process group from torchrun's environment variables, once.

    Does nothing (returns False) when ``WORLD_SIZE`` is unset or 1. On CUDA machines it picks
    NCCL and binds this process to GPU ``LOCAL_RANK``; otherwise gloo.

    Args:
        backend: force a backend ("gloo", "nccl"); default by device.

    Returns:
        Whether a multi-process group is running.
    """
    if _initialised():
        return is_distributed()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
    return is_distributed()


def barrier() -> None:
    """Wait until every process gets here; nothing on a single process.

    Example:
        >>> barrier()
    """
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's picklable ``obj`` in rank order (``[obj]`` on a single process).

    Example:
        >>> all_gather_objects({"skipped": 2})
        [{'skipped': 2}]
    """
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    """Wait for every process, then destroy the process group (if one is running).

    Exiting with a live gloo group lets its threads race the interpreter's teardown
    ("terminate called without an active exception", SIGABRT); destroying it first is clean.
    """
    if _initialised():
        dist.barrier()
        dist.destroy_process_group()


def _sizes(n: int, device: torch.device) -> list[int]:
    """First-dimension sizes of every process's shard (shards may differ, e.g. a last batch)."""
    mine = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [int(t.item()) for t in out]


def _gather_padded(t: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate every process's ``t`` along dim 0 (no gradient), padding to equal sizes."""
    width = max(sizes)
    pad = t.new_zeros((width - t.shape[0], *t.shape[1:]))
    padded = torch.cat([t.detach(), pad]) if width > t.shape[0] else t.detach().contiguous()
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return torch.cat([o[:s] for o, s in zip(out, sizes, strict=True)])  # (sum(sizes), ...)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the gathered gradient over processes (a reduce-scatter)."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, sizes: list[int], me: int) -> Tensor:
        ctx.sizes, ctx.me = sizes, me
        return _gather_padded(t, sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        # Every process holds d(its loss)/d(all rows); the sum over processes is the gradient of
        # the summed loss. all_reduce works on every backend (gloo has no reduce_scatter).
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.me])
        return grad[start : start + ctx.sizes[ctx.me]], None, None


def all_gather(tensor: Tensor, with_grad: bool = False) -> Tensor:
    """Concatenate ``tensor`` from every process along dim 0, in rank order.

    The local slice is ``tensor`` itself, so its gradient always flows. With ``with_grad`` the
    other slices carry gradient back to their owners (summed over processes). Shards may have
    different first-dimension sizes. The identity on a single process.

    Args:
        tensor: (n_local, ...) this process's shard.
        with_grad: let gradients of the other processes' slices flow back to them.

    Returns:
        (n_total, ...) tensor.

    Example:
        >>> t = torch.arange(3.0)
        >>> all_gather(t) is t
        True
    """
    if not is_distributed():
        return tensor
    sizes = _sizes(tensor.shape[0], tensor.device)
    me = dist.get_rank()
    if with_grad and tensor.requires_grad and torch.is_grad_enabled():
        return _GatherWithGrad.apply(tensor, sizes, me)
    gathered = _gather_padded(tensor, sizes)
    start = sum(sizes[:me])
    # Put the live local tensor back in its slot so that its gradient flows.
    return torch.cat([gathered[:start], tensor, gathered[start + sizes[me] :]])


def all_gather_sizes(n: int, device: torch.device | None = None) -> list[int]:
    """Every process's ``n`` in rank order (``[n]`` on a single process).

    Example:
        >>> all_gather_sizes(5)
        [5]
    """
    return _sizes(n, device or torch.device("cpu")) if is_distributed() else [n]


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean over processes of a detached copy (for logging a loss); identity on one process.

    Example:
        >>> all_reduce_mean(torch.tensor(2.0)).item()
        2.0
    """
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out)
        out /= dist.get_world_size()
    return out


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over processes in place (what DDP does); nothing on one process.

    For loops that do not wrap the model in ``DistributedDataParallel``, e.g. with gradient
    caching, which runs several backward passes per step. Every process must pass the same
    parameters in the same order; a missing gradient counts as zero.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(2)); p.grad = torch.full((2,), 3.0)
        >>> average_gradients([p]); p.grad.tolist()
        [3.0, 3.0]
    """
    if not is_distributed():
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world
