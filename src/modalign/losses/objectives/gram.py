"""GRAM: the volume spanned by the modality embeddings as their (dis)similarity.

K unit vectors ``v_1, ..., v_K`` span a parallelotope of volume ``sqrt(det G)``, with ``G`` the
(K, K) Gram matrix ``G_kl = <v_k, v_l>``: 0 when all coincide, 1 when they are orthogonal; for
K = 2 it is ``sin`` of the angle. GRAM scores an anchor embedding ``a_i`` against the other
modalities of row j by ``-scale * Vol(a_i, m_1[j], ..., m_{K-1}[j])`` (the other modalities of
a row stay together) and trains the symmetric contrastive loss over that (N, N) matrix:
anchor-to-data over its rows, data-to-anchor over its columns. Positives: the diagonal, or
equal groups (then the mean over a row's positives, as ``info_nce_loss``). The paper's extra
data-anchor matching loss is not included.

The Gram matrix of ``(a_i, m[j])`` needs only ``<a_i, m_k[j]>`` (K-1 matmuls, (N, N) each) and
the (K-1, K-1) Gram matrix of row j's other modalities, so the volume matrix costs
O(N^2 (K D + K^3)).

Sign: a volume does not change when a vector flips sign, so ``a`` and ``-a`` span zero volume
like ``a`` and ``a``; trained from random heads, GRAM on the sphere learns such antipodal
positives (measured on synthetic data: every positive ranked last by the cosine retrieval that
modalign evaluates). modalign therefore takes the volume of the *lifted* unit vectors
``(v, 1) / sqrt(2)`` (:func:`lift`), whose Gram matrix is ``(1 + <v_k, v_l>) / 2``: for two
vectors the volume ``sqrt(1 - ((1 + cos) / 2)^2)`` falls monotonically from 1 at ``cos = -1``
to 0 at ``cos = 1``, so the volume ranks like the cosine and vanishes only where the vectors
coincide. This departs from the paper, which scores raw embeddings.

Missing modalities: the paper trains on data holding every modality (its pre-training sets give
each video its audio, subtitles and caption), so it has no rule for a missing one. The volume
is defined for any K >= 2, so modalign (``modalign.losses.objectives.joint``) trains one GRAM
term per planned subset of present modalities, each over the rows holding that subset; the
anchor is ``loss.anchor`` when the subset has it, else the subset's first modality.

Memory: (T, N, K, K) Gram blocks of ``tile_size`` anchor rows at a time under checkpointing
(``joint.row_blocks``); the (N, N) logits are kept for the two directions' normalisers.

References:
    Cicchetti et al., 2025, "Gramian Multimodal Representation Learning and Alignment" (ICLR).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from modalign.losses.functional import positive_mask
from modalign.losses.negatives import _mean_over_positives
from modalign.losses.objectives.base import OBJECTIVES
from modalign.losses.objectives.joint import JointObjective, Subset, row_blocks

VOLUME_EPS = 1e-6
"""Added to ``det G`` (clamped at 0: rounding can make it negative) before the square root, so
the gradient stays finite where vectors coincide; it moves a volume by at most 1e-3."""


def gram_volumes(anchor: Tensor, others: Sequence[Tensor]) -> Tensor:
    """(N_a, N) volumes of ``(anchor[i], others[0][j], ..., others[-1][j])``.

    Args:
        anchor: (N_a, D). others: K-1 tensors (N, D), row j of each from one item.

    Returns:
        (N_a, N) ``sqrt(max(det G, 0) + eps)``.

    Example:
        >>> a = torch.tensor([[1.0, 0.0, 0.0]])
        >>> b = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        >>> gram_volumes(a, [b]).round(decimals=2).tolist()  # aligned: ~0; orthogonal: 1
        [[0.0, 1.0]]
    """
    k = len(others) + 1
    cross = torch.stack([anchor @ o.T for o in others], -1)  # (N_a, N, K-1): <a_i, m_k[j]>
    stacked = torch.stack(list(others), 1)  # (N, K-1, D)
    inner = stacked @ stacked.transpose(1, 2)  # (N, K-1, K-1): Gram of row j's other modalities
    n_a, n = cross.shape[:2]
    gram = anchor.new_empty(n_a, n, k, k)
    gram[..., 0, 0] = (anchor * anchor).sum(1)[:, None]
    gram[..., 0, 1:] = cross
    gram[..., 1:, 0] = cross
    gram[..., 1:, 1:] = inner[None]
    return (torch.linalg.det(gram).clamp(min=0) + VOLUME_EPS).sqrt()


def lift(x: Tensor) -> Tensor:
    """(N, D) unit rows -> (N, D + 1) unit rows ``(x, 1) / sqrt(2)`` (see the module doc).

    Example:
        >>> lift(torch.tensor([[0.0, 1.0]])).tolist()
        [[0.0, 0.7071067690849304, 0.7071067690849304]]
    """
    return torch.cat([x, x.new_ones(x.shape[0], 1)], 1) / math.sqrt(2.0)


def gram_loss(
    anchor: Tensor,
    others: Sequence[Tensor],
    scale: Tensor,
    groups: Tensor | None = None,
    tile_size: int | None = None,
) -> Tensor:
    """GRAM's symmetric contrastive loss on ``logits = -scale * volume``.

    Args:
        anchor: (N, D). others: K-1 >= 1 tensors (N, D). scale: 0-d inverse temperature.
        groups: (N,) or None. tile_size: anchor rows per block (memory bound).

    Returns:
        0-d loss: the mean of the anchor-to-data and data-to-anchor cross-entropies.

    Example:
        >>> e = torch.eye(3)
        >>> round(gram_loss(e, [e], torch.tensor(30.0)).item(), 6)
        0.0
    """
    n = anchor.shape[0]
    vol = row_blocks(lambda a, b: gram_volumes(anchor[a:b], others), n, tile_size)  # (N, N)
    logits = -scale * vol
    pos = positive_mask(n, n, groups, groups, anchor.device)
    rows = _mean_over_positives(-torch.log_softmax(logits, 1), pos)  # anchor -> data
    cols = _mean_over_positives(-torch.log_softmax(logits.T, 1), pos.T)  # data -> anchor
    return (rows + cols) / 2


@OBJECTIVES.register("gram")
class GramObjective(JointObjective):
    """GRAM (Cicchetti et al., ICLR 2025) on every planned modality subset (see module doc).

    Example:
        >>> obj = GramObjective(["a", "b", "c"], embed_dim=4, anchor="b")
        >>> obj.anchor_of(("a", "b", "c")), obj.anchor_of(("a", "c"))
        ('b', 'a')
    """

    def anchor_of(self, subset: Subset) -> str:
        """``loss.anchor`` when the subset holds it, else the subset's first modality."""
        return self.anchor if self.anchor in subset else subset[0]

    def subset_loss(
        self, subset: Subset, embs: list[Tensor], groups: Tensor | None, scale: Tensor
    ) -> Tensor:
        i = subset.index(self.anchor_of(subset))
        lifted = [lift(e) for e in embs]  # (n, D + 1) each
        others = [e for j, e in enumerate(lifted) if j != i]
        return gram_loss(lifted[i], others, scale, groups, self.tile_size)
