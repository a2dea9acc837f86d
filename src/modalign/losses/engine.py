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

Losses without a tiled kernel (user-registered pure functions) run on the gathered global batch
on every process: same convention, O(B^2) memory.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from modalign import distributed
from modalign.losses import LOSSES
from modalign.losses.tiled import info_nce_block, make_positives, siglip_block

TILED_LOSSES = ("infonce", "siglip")
"""Registry names that have a tiled, distributed kernel."""


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
) -> Tensor:
    """Loss ``name`` between this process's rows ``x`` and ``y``, over the global batch.

    Args:
        name: a key of ``modalign.losses.LOSSES`` ("infonce", "siglip", or user-registered).
        x: (n, D) this process's embeddings of the first modality.
        y: (n', D) this process's embeddings of the second modality.
        scale: 0-d inverse temperature (already exponentiated). bias: 0-d SigLIP bias or None.
        groups_x: (n,) group ids, or None for paired rows (then ``n == n'`` on every process).
        groups_y: (n',) group ids, or None.
        tile_size: tile side of the kernels (default ``modalign.losses.tiled.DEFAULT_TILE``).

    Returns:
        0-d loss; on one process it equals ``LOSSES.get(name)(x, y, scale, bias, groups_x,
        groups_y)``; see the module docstring for many processes.

    Example:
        >>> import torch.nn.functional as F
        >>> from modalign.losses.functional import info_nce_loss
        >>> x, y = F.normalize(torch.randn(8, 4), dim=1), F.normalize(torch.randn(8, 4), dim=1)
        >>> s = torch.tensor(10.0)
        >>> torch.allclose(pair_loss("infonce", x, y, s, tile_size=3), info_nce_loss(x, y, s))
        True
    """
    if name not in TILED_LOSSES:
        return _gathered_loss(name, x, y, scale, bias, groups_x, groups_y)
    if (groups_x is None) != (groups_y is None):
        raise ValueError("pass groups for both sides or for neither")
    if groups_x is None and x.shape[0] != y.shape[0]:
        raise ValueError(
            f"paired rows need equal batch sizes, got {x.shape[0]} and {y.shape[0]}; pass groups"
        )
    sizes = distributed.all_gather_sizes(x.shape[0], x.device)  # rows held by every process
    start = sum(sizes[: distributed.rank()]) if len(sizes) > 1 else 0
    y_all = distributed.all_gather(y, with_grad=True)  # (m, D): columns of every process
    pos = make_positives(
        y_all.shape[0], slice(start, start + x.shape[0]), sum(sizes),
        _gather_groups(groups_x), _gather_groups(groups_y), x.device, x.dtype,
    )  # fmt: skip
    world = len(sizes)
    if name == "infonce":
        reduce = _reduce_lse if world > 1 else (lambda t: t)
        return info_nce_block(
            x, y_all, scale, pos, world_size=world, reduce_col_lse=reduce, tile_size=tile_size
        )
    return siglip_block(x, y_all, scale, bias, pos, world_size=world, tile_size=tile_size)


def _gathered_loss(
    name: str,
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
    fn = LOSSES.get(name)
    if not distributed.is_distributed():
        return fn(x, y, scale, bias, groups_x, groups_y)
    x_all = distributed.all_gather(x, with_grad=True)
    y_all = distributed.all_gather(y, with_grad=True)
    return fn(x_all, y_all, scale, bias, _gather_groups(groups_x), _gather_groups(groups_y))
