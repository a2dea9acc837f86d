"""Harder negatives for contrastive pair losses: HN-NCE, the debiased loss, and a uniformity term.

* ``hn_nce`` (Radenovic et al., CVPR 2023): InfoNCE whose negatives are re-weighted towards the
  hard ones, ``w_ij ∝ exp(beta * logit_ij)``, normalised to average 1 over a row's negatives, and
  whose positive term in the denominator is scaled by ``alpha``. ``alpha = 1, beta = 0`` is
  InfoNCE exactly (tested).
* ``debiased`` (Chuang et al., NeurIPS 2020): InfoNCE whose negative term is corrected for the
  chance ``tau_plus`` that an in-batch "negative" is really a positive (same class, a
  near-duplicate). ``tau_plus = 0`` is InfoNCE exactly for paired rows (tested); with several
  positives each positive is scored against the negatives alone, as in the paper.
* :func:`uniformity_loss` (Wang and Isola, ICML 2020): ``log E exp(-t ||x - y||^2)`` over pairs
  of one modality's embeddings; added by the objectives when ``loss.uniformity > 0``, it spreads
  each modality over the sphere (one lever on the modality gap).

Both pair losses follow the registered-loss signature ``(x, y, scale, bias, groups_x, groups_y)``
and the same positives as ``info_nce_loss`` (equal group ids, else the diagonal), are symmetric
(the mean of both directions), and leave out rows without a positive. They build the full
(B, B') logits matrix (no tiled kernel): memory is O(B * B') per process, bounded by the batch
size (B = 4096 needs 64 MiB per matrix; autograd keeps about four). Under data parallelism the
engine gathers the global batch (``modalign.losses.engine``).

Explicit negatives (a manifest's ``negatives`` column, or ``modalign mine``) need no loss of their
own: the batch sampler puts them in their row's batch (``modalign.data.samplers``), where every
one of these losses pushes them below the positive.

References:
    Radenovic et al., 2023, "Filtering, Distillation, and Hard Negatives for Vision-Language
    Pre-Training" (HN-NCE). Chuang et al., 2020, "Debiased Contrastive Learning". Wang and Isola,
    2020, "Understanding Contrastive Representation Learning through Alignment and Uniformity on
    the Hypersphere".
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from modalign.losses.engine import register_loss
from modalign.losses.functional import positive_mask

HN_NCE_ALPHA = 1.0
HN_NCE_BETA = 0.5
DEBIASED_TAU_PLUS = 0.1


def hn_nce_direction(logits: Tensor, pos: Tensor, alpha: float, beta: float) -> Tensor:
    """HN-NCE of the rows of ``logits`` (queries) over its columns; mean over rows with a positive.

    For row i with positives P and negatives N:
    ``loss_i = mean_{p in P} [ -l_ip + log(alpha * sum_P exp(l) + sum_N w_ij exp(l_ij)) ]`` with
    ``w_ij = |N| softmax_{j in N}(beta * l_ij)``. The weights carry no gradient: they pick which
    negatives count, as an importance sampler would, and are not part of the score.

    Args:
        logits: (B, B') scaled similarities. pos: (B, B') bool positives.
        alpha: weight of the positives in the denominator. beta: hardness (0: uniform weights).

    Returns:
        0-d loss.

    Example:
        >>> logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
        >>> pos = torch.tensor([[True, False, False], [False, True, False]])
        >>> ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
        >>> bool(torch.isclose(hn_nce_direction(logits, pos, 1.0, 0.0), ce))
        True
    """
    neg = ~pos
    n_neg = neg.sum(1, keepdim=True)  # (B, 1)
    with torch.no_grad():
        hard = (beta * logits).masked_fill(pos, -math.inf)  # (B, B'): negatives only
        log_w = torch.log_softmax(hard, dim=1) + n_neg.clamp(min=1).log()
        log_w = log_w.masked_fill(pos, 0.0)  # rows without negatives: all -inf -> NaN otherwise
    log_terms = torch.where(pos, logits + math.log(alpha), logits + log_w)  # (B, B')
    log_z = torch.logsumexp(log_terms, dim=1, keepdim=True)  # (B, 1)
    return _mean_over_positives(log_z - logits, pos)


def debiased_direction(logits: Tensor, pos: Tensor, scale: Tensor, tau_plus: float) -> Tensor:
    """The debiased contrastive loss of the rows of ``logits`` over its columns.

    For row i and each positive p, with N the row's n negatives:
    ``g = max((mean_N exp(l_ij) - tau_plus * exp(l_ip)) / (1 - tau_plus), exp(-scale))`` and
    ``loss = -l_ip + log(exp(l_ip) + n * g)``; the floor ``exp(-scale)`` is the least value of
    ``exp(l)`` on the unit sphere. Computed after shifting each row by its (detached) maximum, so
    nothing overflows at large scales.

    Args:
        logits: (B, B') scaled similarities. pos: (B, B') bool. scale: 0-d inverse temperature.
        tau_plus: the prior probability that a negative is a positive (0: InfoNCE).

    Returns:
        0-d loss (mean over positives of each row, then over rows with a positive).

    Example:
        >>> logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
        >>> pos = torch.eye(2, 3, dtype=torch.bool)
        >>> ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
        >>> bool(torch.isclose(debiased_direction(logits, pos, torch.tensor(1.0), 0.0), ce))
        True
    """
    neg = ~pos
    n_neg = neg.sum(1, keepdim=True).to(logits.dtype)  # (B, 1)
    shift = logits.detach().max(1, keepdim=True).values  # (B, 1)
    e = (logits - shift).exp()  # (B, B'), at most 1
    neg_mean = (e * neg).sum(1, keepdim=True) / n_neg.clamp(min=1)  # (B, 1)
    floor = (-scale - shift).exp()  # exp(-scale) in the shifted frame
    g = torch.maximum((neg_mean - tau_plus * e) / (1 - tau_plus), floor)  # (B, B')
    tiny = torch.finfo(logits.dtype).tiny
    per_pos = (e + n_neg * g).clamp(min=tiny).log() - (logits - shift)  # (B, B')
    return _mean_over_positives(per_pos, pos)


def _mean_over_positives(per_pair: Tensor, pos: Tensor) -> Tensor:
    """Mean over each row's positives, then over rows that have one (others have no target)."""
    n_pos = pos.sum(1)  # (B,)
    has = n_pos > 0
    per_row = (per_pair * pos).sum(1)[has] / n_pos[has]
    return per_row.sum() / has.sum().clamp(min=1)


@register_loss("hn_nce", init_temperature=0.07)
def hn_nce_loss(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    bias: Tensor | None = None,
    groups_x: Tensor | None = None,
    groups_y: Tensor | None = None,
    alpha: float = HN_NCE_ALPHA,
    beta: float = HN_NCE_BETA,
) -> Tensor:
    """Symmetric HN-NCE between ``x`` and ``y`` (see :func:`hn_nce_direction`).

    Args:
        x: (B, D) normalised. y: (B', D) normalised. scale: 0-d inverse temperature.
        bias: ignored (a shift cancels). groups_x: (B,) or None. groups_y: (B',) or None.
        alpha, beta: see :func:`hn_nce_direction` (registered with 1.0 and 0.5).

    Returns:
        0-d loss, the mean of both directions.

    Example:
        >>> from modalign.losses.functional import info_nce_loss
        >>> x = torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
        >>> s = torch.tensor(5.0)
        >>> bool(torch.isclose(hn_nce_loss(x, x, s, beta=0.0), info_nce_loss(x, x, s)))
        True

    References:
        Radenovic et al., 2023, "Filtering, Distillation, and Hard Negatives for Vision-Language
        Pre-Training".
    """
    del bias
    return _both_directions(
        lambda logits, pos: hn_nce_direction(logits, pos, alpha, beta),
        x,
        y,
        scale,
        groups_x,
        groups_y,
    )


@register_loss("debiased", init_temperature=0.07)
def debiased_loss(
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    bias: Tensor | None = None,
    groups_x: Tensor | None = None,
    groups_y: Tensor | None = None,
    tau_plus: float = DEBIASED_TAU_PLUS,
) -> Tensor:
    """Symmetric debiased contrastive loss between ``x`` and ``y`` (see :func:`debiased_direction`).

    Args:
        x: (B, D) normalised. y: (B', D) normalised. scale: 0-d inverse temperature.
        bias: ignored. groups_x, groups_y: optional group ids. tau_plus: class prior (0.1).

    Returns:
        0-d loss, the mean of both directions.

    Example:
        >>> from modalign.losses.functional import info_nce_loss
        >>> x = torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
        >>> s = torch.tensor(5.0)
        >>> bool(torch.isclose(debiased_loss(x, x, s, tau_plus=0.0), info_nce_loss(x, x, s)))
        True

    References:
        Chuang et al., 2020, "Debiased Contrastive Learning".
    """
    del bias
    return _both_directions(
        lambda logits, pos: debiased_direction(logits, pos, scale, tau_plus),
        x, y, scale, groups_x, groups_y,
    )  # fmt: skip


def _both_directions(
    direction: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    scale: Tensor,
    groups_x: Tensor | None,
    groups_y: Tensor | None,
) -> Tensor:
    """Mean of ``direction(logits, positives)`` over rows (x -> y) and columns (y -> x)."""
    logits = scale * (x @ y.T)  # (B, B')
    pos = positive_mask(x.shape[0], y.shape[0], groups_x, groups_y, x.device)  # (B, B') bool
    return (direction(logits, pos) + direction(logits.T, pos.T)) / 2


def uniformity_loss(x: Tensor, t: float = 2.0) -> Tensor:
    """``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` (Wang and Isola, 2020); 0 below two rows.

    Args:
        x: (n, D) normalised embeddings of one modality. t: the kernel's sharpness (2 in the paper).

    Returns:
        0-d term (lower is more uniform; -8 on two antipodal points at ``t = 2``). O(n^2) memory.

    Example:
        >>> round(uniformity_loss(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])).item(), 4)
        -8.0
    """
    if x.shape[0] < 2:
        return x.sum() * 0.0  # keeps the graph: every process backpropagates the same terms
    sq = (x * x).sum(1)  # (n,)
    # squared distances from one matmul (pdist's sqrt has no gradient at duplicates)
    d2_all = (sq[:, None] + sq[None, :] - 2 * (x @ x.T)).clamp(min=0)  # (n, n)
    i, j = torch.triu_indices(x.shape[0], x.shape[0], offset=1, device=x.device)
    d2 = d2_all[i, j]  # (n(n-1)/2,) distinct pairs
    return torch.logsumexp(-t * d2, dim=0) - math.log(d2.numel())
