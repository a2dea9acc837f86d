"""Contrastive losses as pure functions: the plain, full-matrix references.

Every loss takes two L2-normalised embedding batches ``x`` (B, D) and ``y`` (B', D), a positive
``scale`` (the inverse temperature, a 0-d tensor), an optional ``bias`` (0-d, SigLIP) and optional
group ids. Item ``i`` of ``x`` and item ``j`` of ``y`` are positives when their group ids are equal;
without groups, ``x[i]`` and ``y[j]`` are positives exactly when ``i == j`` (paired rows).

These build the (B, B') logits matrix and are the references that the memory-bounded kernels in
``modalign.losses.tiled`` are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_pairing(n_x: int, n_y: int, groups_x: object, groups_y: object) -> None:
    """Raise ``ValueError`` unless groups are given for both sides, or for neither with
    ``n_x == n_y`` (then row ``i`` of one side pairs with row ``i`` of the other).

    Example:
        >>> check_pairing(3, 3, None, None)
        >>> check_pairing(3, 2, None, None)
        Traceback (most recent call last):
        ...
        ValueError: paired rows need equal sizes, got 3 and 2; pass groups
    """
    if (groups_x is None) != (groups_y is None):
        raise ValueError("pass groups for both sides or for neither")
    if groups_x is None and n_x != n_y:
        raise ValueError(f"paired rows need equal sizes, got {n_x} and {n_y}; pass groups")


def positive_mask(
    n_x: int, n_y: int, groups_x: Tensor | None, groups_y: Tensor | None, device: torch.device
) -> Tensor:
    """Boolean (n_x, n_y) matrix of positive pairs.

    Example:
        >>> positive_mask(2, 2, None, None, torch.device("cpu")).tolist()
        [[True, False], [False, True]]
        >>> g = torch.tensor([0, 0, 1])
        >>> positive_mask(3, 3, g, g, torch.device("cpu")).int().tolist()
        [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    """
    if groups_x is None or groups_y is None:
        check_pairing(n_x, n_y, groups_x, groups_y)
        return torch.eye(n_x, dtype=torch.bool, device=device)
    return groups_x[:, None] == groups_y[None, :]


def info_nce_loss(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    bias: Tensor | None = None,
    groups_x: Tensor | None = None,
    groups_y: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE (CLIP's loss), averaged over both directions.

    Each row of ``x`` is a softmax classification over the columns of ``y`` and vice versa. With
    several positives a row's target is uniform over its positives (soft-target cross-entropy, as
    in UniCL), which is the mean of ``-log softmax`` over the positives. A row (column) without any
    positive has no target and is left out of its direction's mean. ``bias`` is accepted for a
    uniform signature and ignored: a constant shift cancels in the softmax.

    Args:
        x: (B, D) normalised embeddings. y: (B', D) normalised embeddings.
        scale: 0-d inverse temperature. groups_x: (B,) ints. groups_y: (B',) ints.

    Returns:
        0-d loss tensor.

    Example:
        >>> x = torch.eye(3)
        >>> round(info_nce_loss(x, x, torch.tensor(10.0)).item(), 4)
        0.0001

    References:
        Radford et al., 2021, "Learning Transferable Visual Models From Natural Language
        Supervision" (CLIP). Yang et al., 2022, "Unified Contrastive Learning in Image-Text-Label
        Space" (UniCL, multi-positive targets).
    """
    del bias
    logits = scale * (x @ y.T)  # (B, B')
    pos = positive_mask(x.shape[0], y.shape[0], groups_x, groups_y, x.device).to(logits.dtype)
    row = _soft_target_ce(F.log_softmax(logits, dim=1), pos, dim=1)  # x -> y
    col = _soft_target_ce(F.log_softmax(logits, dim=0), pos, dim=0)  # y -> x
    return (row + col) / 2


def _soft_target_ce(log_p: Tensor, pos: Tensor, dim: int) -> Tensor:
    """Mean over rows (``dim=1``) or columns (``dim=0``) that have a positive of
    ``-mean(log_p over the positives)``; a row without any positive has no target and is left out
    (dividing by its zero count would make the whole loss NaN)."""
    n_pos = pos.sum(dim)  # (B,) or (B',)
    has = n_pos > 0
    per_row = -(pos * log_p).sum(dim)[has] / n_pos[has]
    return per_row.sum() / has.sum().clamp(min=1)


def siglip_loss(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    bias: Tensor | None = None,
    groups_x: Tensor | None = None,
    groups_y: Tensor | None = None,
) -> Tensor:
    """Sigmoid pairwise loss (SigLIP): every pair is a binary positive/negative decision.

    ``loss = -sum_ij log sigmoid(z_ij * (scale * <x_i, y_j> + bias)) / B`` with ``z_ij = +1`` for
    positives and ``-1`` otherwise, normalised by the batch size as in the paper (and open_clip).

    Args:
        x: (B, D). y: (B', D). scale: 0-d. bias: 0-d or None (treated as 0).
        groups_x, groups_y: optional (B,), (B',) group ids.

    Returns:
        0-d loss tensor.

    Example:
        >>> x = torch.eye(2)
        >>> round(siglip_loss(x, x, torch.tensor(10.0), torch.tensor(-5.0)).item(), 4)
        0.0134

    References:
        Zhai et al., 2023, "Sigmoid Loss for Language Image Pre-Training" (SigLIP).
    """
    logits = scale * (x @ y.T)  # (B, B')
    if bias is not None:
        logits = logits + bias
    pos = positive_mask(x.shape[0], y.shape[0], groups_x, groups_y, x.device)
    signs = pos.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(signs * logits).sum() / x.shape[0]
