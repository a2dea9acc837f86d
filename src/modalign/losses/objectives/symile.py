"""Symile: contrastive learning on the multilinear inner product of all modalities.

The score of K embeddings is their multilinear inner product (MIP)
``<e_1, ..., e_K> = sum_d prod_k e_k[d]``; for K = 2 it is the dot product, so Symile reduces to
CLIP's loss on a pair. Each modality in turn is the query: row i's query ``e_q[i]`` should score
its own row's product of the other modalities ``prod_{k != q} e_k[i]`` above negatives. With
O(N) negative sampling (the paper's cheaper scheme), the N - 1 negatives of a query are the
products ``prod_{k != q} e_k[pi_k(j)]``, j != i, of independently shuffled rows of each other
modality: O(N) candidates per query instead of the O(N^(K-1)) combinations. The loss is the
mean over the K queries of the cross-entropy of the positive against these candidates.

Groups: a shuffled candidate whose every row lies in the query's group is a positive, not a
negative, and is left out.

Missing modalities: the paper keeps every row's K embeddings by encoding a missing modality from
a placeholder input together with a missingness indicator, so each row enters one K-way MIP.
modalign's heads take no such input; instead (``modalign.losses.objectives.joint``) a row
enters the Symile term of every subset of its present modalities that the batch plans, the
subset's MIP over only those modalities; a row with two modalities trains a CLIP-like pair term.

Memory: the (N, N) candidate scores of a query are computed ``tile_size`` rows at a time under
checkpointing (``joint.row_blocks``), O(N * D + T * N).

References:
    Saporta et al., 2024, "Contrasting with Symile: Simple Model-Agnostic Representation Learning
    for Unlimited Modalities" (NeurIPS).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from modalign.losses.objectives.base import OBJECTIVES
from modalign.losses.objectives.joint import JointObjective, Subset, row_blocks


def _product(parts: Sequence[Tensor]) -> Tensor:
    out = parts[0]
    for p in parts[1:]:
        out = out * p
    return out


def symile_loss(
    embs: Sequence[Tensor],
    scale: Tensor,
    groups: Tensor | None = None,
    perms: Sequence[Sequence[Tensor]] | None = None,
    generator: torch.Generator | None = None,
    tile_size: int | None = None,
) -> Tensor:
    """Symile's loss with O(N) negative sampling, averaged over each modality as the query.

    Args:
        embs: K >= 2 tensors (N, D); row i of each is one item.
        scale: 0-d inverse temperature. groups: (N,) group ids or None (row i only).
        perms: ``perms[q][k]`` (N,) the shuffle of the k-th other modality when modality q is
            the query; drawn from ``generator`` when None.
        tile_size: query rows scored at a time (memory bound).

    Returns:
        0-d loss.

    Example:
        >>> e = [torch.eye(4)] * 3
        >>> round(symile_loss(e, torch.tensor(20.0)).item(), 6)
        0.0
    """
    k, n = len(embs), embs[0].shape[0]
    device = embs[0].device
    g = groups if groups is not None else torch.arange(n, device=device)
    if perms is None:
        perms = [
            [torch.randperm(n, generator=generator, device=device) for _ in range(k - 1)]
            for _ in range(k)
        ]
    total = embs[0].new_zeros(())
    for q in range(k):
        others = [embs[j] for j in range(k) if j != q]
        positive = _product(others)  # (N, D): row i's own product
        negative = _product([o[p] for o, p in zip(others, perms[q], strict=True)])  # (N, D)
        cand_groups = torch.stack([g[p] for p in perms[q]])  # (K-1, N)
        per_rows = functools.partial(
            _query_rows, embs[q], positive, negative, cand_groups, g, scale=scale
        )
        total = total + row_blocks(per_rows, n, tile_size).mean()
    return total / k


def _query_rows(
    query: Tensor,
    positive: Tensor,
    neg: Tensor,
    cand_groups: Tensor,
    groups: Tensor,
    start: int,
    stop: int,
    scale: Tensor,
) -> Tensor:
    """(T,) cross-entropies of query rows ``start:stop`` against their positive and the N
    shuffled candidates ``neg`` (N, D) (rows j == i and candidates that are positives left out)."""
    x, pos, g = query[start:stop], positive[start:stop], groups[start:stop]  # (T, D), (T, D), (T,)
    pos_logit = scale * (x * pos).sum(1)  # (T,)
    neg_logit = scale * (x @ neg.T)  # (T, N)
    rows = torch.arange(start, start + x.shape[0], device=x.device)
    own = rows[:, None] == torch.arange(neg.shape[0], device=x.device)[None, :]  # (T, N): j == i
    # (T, N): a candidate whose every row is in the query's group is a positive, not a negative
    same = (cand_groups[:, None, :] == g[None, :, None]).all(0)
    neg_logit = neg_logit.masked_fill(own | same, -math.inf)
    logits = torch.cat([pos_logit[:, None], neg_logit], 1)  # (T, 1 + N)
    return torch.logsumexp(logits, 1) - pos_logit


@OBJECTIVES.register("symile")
class SymileObjective(JointObjective):
    """Symile (Saporta et al., NeurIPS 2024) on every planned modality subset (see module doc).

    Example:
        >>> obj = SymileObjective(["a", "b", "c"], embed_dim=4)
        >>> present = {"a": torch.tensor([True, True, True]), "b": torch.tensor([True, True, False]),
        ...            "c": torch.tensor([True, True, True])}
        >>> obj.plan(present)  # rows 0 and 1 hold a, b, c; row 2 holds a and c
        [('a', 'b', 'c'), ('a', 'c')]
    """

    def subset_loss(
        self, subset: Subset, embs: list[Tensor], groups: Tensor | None, scale: Tensor
    ) -> Tensor:
        return symile_loss(
            embs, scale, groups, generator=self.generator(embs[0].device), tile_size=self.tile_size
        )
