"""The contrastive engine: one call per modality pair, on one process or many.

The training loop calls :func:`pair_loss` with the embeddings of the rows it holds. The engine
gathers what the loss needs from the other processes and runs the memory-bounded kernel, so a
loss function never deals with tiling or distribution (DESIGN.md, "a new loss").

Under data parallelism each process computes its *block*: its own rows of ``x`` against the
columns ``y`` of every process (and the symmetric direction from the same block). The value on
each process is scaled so that

* the mean of the values over processes is the global loss, and
* backpropagating each process's value and *averaging* the parameter gradients over processes
  (what ``DistributedDataParallel`` does) gives exactly the gradient of the global loss,

the convention of open_clip's ``local_loss=True, gather_with_grad=True``. For logging, use
``modalign.distributed.all_reduce_mean(loss)``.

Every loss is registered once, as a :class:`LossSpec`: its plain function (the full-matrix
reference), its tiled block kernel if it has one, and the temperature and bias a model starts
from. Losses without a tiled kernel (user-registered pure functions) run on the gathered global
batch on every process: same convention, O(B^2) memory.

Example:
    >>> spec = LOSSES.get("siglip")
    >>> spec.fn is siglip_loss, spec.block is not None, spec.init_temperature, spec.init_bias
    (True, True, 0.1, -10.0)
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist
from torch import Tensor

from modalign import distributed
from modalign.errors import ConfigError
from modalign.losses.functional import check_pairing, info_nce_loss, siglip_loss
from modalign.losses.tiled import (
    LseReducer,
    Positives,
    info_nce_block,
    make_positives,
    siglip_block,
)
from modalign.registry import Registry

LossFn = Callable[[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None], Tensor]
"""``loss(x, y, scale, bias, groups_x, groups_y) -> 0-d tensor`` (``modalign.losses.functional``)."""


class BlockKernel(Protocol):
    """A tiled kernel: this process's rows ``x`` (n, D) against all columns ``y`` (m, D)."""

    def __call__(
        self,
        x: Tensor,
        y: Tensor,
        scale: Tensor,
        bias: Tensor | None,
        pos: Positives,
        world_size: int,
        reduce_col_lse: LseReducer,
        tile_size: int | None,
    ) -> Tensor: ...


@dataclass(frozen=True)
class LossSpec:
    """What the engine and the model need to know about one registered loss.

    Attributes:
        fn: the plain loss (``LossFn``); the engine uses it when there is no ``block``.
        block: the memory-bounded kernel (:class:`BlockKernel`), or None.
        init_temperature: the temperature a model starts at (``loss.init_temperature`` overrides).
        init_bias: the logit bias a model starts at, or None for a loss without one.
    """

    fn: LossFn
    block: BlockKernel | None = None
    init_temperature: float = 0.07
    init_bias: float | None = None


LOSSES: Registry[LossSpec] = Registry("loss")


def register_loss(
    name: str,
    *,
    block: BlockKernel | None = None,
    init_temperature: float = 0.07,
    init_bias: float | None = None,
) -> Callable[[LossFn], LossFn]:
    """Decorator registering a plain loss function under ``name`` (see :class:`LossSpec`)."""

    def add(fn: LossFn) -> LossFn:
        LOSSES.register(name)(LossSpec(fn, block, init_temperature, init_bias))
        return fn

    return add


def _info_nce_kernel(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    bias: Tensor | None,
    pos: Positives,
    world_size: int,
    reduce_col_lse: LseReducer,
    tile_size: int | None,
) -> Tensor:
    del bias  # a constant shift cancels in the softmax
    return info_nce_block(
        x, y, scale, pos, world_size=world_size, reduce_col_lse=reduce_col_lse, tile_size=tile_size
    )


def _siglip_kernel(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    bias: Tensor | None,
    pos: Positives,
    world_size: int,
    reduce_col_lse: LseReducer,
    tile_size: int | None,
) -> Tensor:
    del reduce_col_lse  # every logit's term is independent: nothing to combine
    return siglip_block(x, y, scale, bias, pos, world_size=world_size, tile_size=tile_size)


# CLIP's initial temperature (Radford et al., 2021); SigLIP's t' = log 10, b = -10 (Zhai et al., 2023)
register_loss("infonce", block=_info_nce_kernel, init_temperature=0.07)(info_nce_loss)
register_loss("siglip", block=_siglip_kernel, init_temperature=0.1, init_bias=-10.0)(siglip_loss)


def loss_options(name: str) -> tuple[str, ...]:
    """The keyword hyperparameters of loss ``name``: its function's parameters after the six
    every loss takes.

    Example:
        >>> import modalign.losses.negatives  # registers hn_nce
        >>> loss_options("hn_nce"), loss_options("infonce")
        (('alpha', 'beta'), ())
    """
    return tuple(inspect.signature(LOSSES.get(name).fn).parameters)[6:]


def check_loss_options(name: str, options: Mapping[str, float]) -> dict[str, float]:
    """``options`` as floats, or a one-line ``ConfigError`` naming an option ``name`` lacks."""
    known = loss_options(name) if name in LOSSES else ()
    for key, value in options.items():
        if key not in known:
            has = ", ".join(known) or "none"
            raise ConfigError(
                f"loss.options.{key}: not an option of loss {name!r} (its options: {has})"
            )
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"loss.options.{key}: {value!r} is not a finite number")
    return {k: float(v) for k, v in options.items()}


def _reduce_lse(part: Tensor) -> Tensor:
    """(m,) partial column log-sum-exp over this process's rows -> over every process's rows."""
    parts = [torch.empty_like(part) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, part.contiguous())
    return torch.stack(parts).logsumexp(0)  # (world, m) -> (m,)


def _gather_groups(groups: Tensor | None) -> Tensor | None:
    return None if groups is None else distributed.all_gather(groups)


def pair_loss(
    name: str,
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    bias: Tensor | None = None,
    groups_x: Tensor | None = None,
    groups_y: Tensor | None = None,
    tile_size: int | None = None,
    options: Mapping[str, float] | None = None,
) -> Tensor:
    """Loss ``name`` between this process's rows ``x`` and ``y``, over the global batch.

    Args:
        name: a key of :data:`LOSSES` ("infonce", "siglip", or user-registered).
        x: (n, D) this process's embeddings of the first modality.
        y: (n', D) this process's embeddings of the second modality.
        scale: 0-d inverse temperature (already exponentiated). bias: 0-d logit bias or None.
        groups_x: (n,) group ids, or None for paired rows (then ``n == n'`` on every process).
        groups_y: (n',) group ids, or None.
        tile_size: tile side of the kernels (default ``modalign.losses.tiled.DEFAULT_TILE``).
        options: the loss's keyword hyperparameters (:func:`loss_options` lists them).

    Returns:
        0-d loss; on one process it equals ``LOSSES.get(name).fn(x, y, scale, bias, groups_x,
        groups_y)``; see the module docstring for many processes.

    Example:
        >>> import torch.nn.functional as F
        >>> x, y = F.normalize(torch.randn(8, 4), dim=1), F.normalize(torch.randn(8, 4), dim=1)
        >>> s = torch.tensor(10.0)
        >>> torch.allclose(pair_loss("infonce", x, y, s, tile_size=3), info_nce_loss(x, y, s))
        True
    """
    spec = LOSSES.get(name)
    if spec.block is None or options:
        fn = functools.partial(spec.fn, **options) if options else spec.fn
        return _gathered_loss(fn, x, y, scale, bias, groups_x, groups_y)
    check_pairing(x.shape[0], y.shape[0], groups_x, groups_y)
    sizes = distributed.all_gather_sizes(x.shape[0], x.device)  # rows held by every process
    start = sum(sizes[: distributed.rank()]) if len(sizes) > 1 else 0
    y_all = distributed.all_gather(y, with_grad=True)  # (m, D): columns of every process
    pos = make_positives(
        y_all.shape[0], slice(start, start + x.shape[0]), sum(sizes),
        _gather_groups(groups_x), _gather_groups(groups_y), x.device, x.dtype,
    )  # fmt: skip
    world = len(sizes)
    reduce = _reduce_lse if world > 1 else (lambda t: t)
    return spec.block(x, y_all, scale, bias, pos, world, reduce, tile_size)


def _gathered_loss(
    fn: LossFn,
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    bias: Tensor | None,
    groups_x: Tensor | None,
    groups_y: Tensor | None,
) -> Tensor:
    """A plain registered loss on the global batch, gathered with gradient on every process.

    Every process computes the same global loss; the gathered gradients are summed back to the
    owners, so each process's local gradient is ``world`` times its share and DDP's average is
    the exact global gradient (the same convention as the tiled kernels).
    """
    if not distributed.is_distributed():
        return fn(x, y, scale, bias, groups_x, groups_y)
    x_all = distributed.all_gather(x, with_grad=True)
    y_all = distributed.all_gather(y, with_grad=True)
    return fn(x_all, y_all, scale, bias, _gather_groups(groups_x), _gather_groups(groups_y))
