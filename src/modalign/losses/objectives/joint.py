"""Joint objectives: one score over several modalities of a row at once (Symile, GRAM).

Rows miss modalities, so a joint objective trains one *term per modality subset*: the subset S's
term scores, over the rows holding every modality of S, the joint similarity of S's embeddings.
The plan of a batch holds every subset S (two modalities or more) that

* is some row's exact set of present modalities (so each row's whole set is used), and
* is held by at least two rows of the global batch (one row has no negatives);

a row therefore contributes to every planned term whose modalities it has, and a batch whose
rows all have fewer than two modalities trains nothing (skipped, no NaN). The subsets are
enumerated in a fixed order, so the plan is the same on every process.

Memory: a joint score has no pairwise factorisation for the tiled engine. Each term gathers the
global batch's rows (with gradient; every process computes the same global loss, and the
gathered gradients summed back to their owners make DDP's average exact, as
``modalign.losses.engine`` does for plain losses) and computes the loss a block of at most
``tile_size`` query rows at a time under activation checkpointing, so the live (T, n) score
block, not an (n, n) one, bounds memory: O(n * D + T * n * K^2) for K modalities.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from itertools import combinations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from modalign import distributed
from modalign.errors import ConfigError
from modalign.losses.objectives.base import Objective, global_counts
from modalign.losses.tiled import DEFAULT_TILE

Subset = tuple[str, ...]
MAX_MODALITIES = 10  # 2^10 subsets to count per batch


def all_subsets(modalities: Sequence[str]) -> list[Subset]:
    """Every subset of two modalities or more, largest first, each in manifest order.

    Example:
        >>> all_subsets(["a", "b", "c"])
        [('a', 'b', 'c'), ('a', 'b'), ('a', 'c'), ('b', 'c')]
    """
    return [s for k in range(len(modalities), 1, -1) for s in combinations(modalities, k)]


def row_blocks(per_rows: Callable[[int, int], Tensor], n: int, tile: int | None) -> Tensor:
    """``cat(per_rows(start, stop))`` over blocks of ``tile`` rows, each checkpointed.

    Only one block's intermediates are alive at a time, in the forward pass and (recomputed) in
    the backward pass. One block: a plain call.

    Example:
        >>> x = torch.arange(5.0, requires_grad=True)
        >>> out = row_blocks(lambda a, b: x[a:b] ** 2, 5, tile=2)
        >>> out.tolist(), torch.autograd.grad(out.sum(), x)[0].tolist()
        ([0.0, 1.0, 4.0, 9.0, 16.0], [0.0, 2.0, 4.0, 6.0, 8.0])
    """
    size = tile or DEFAULT_TILE
    if n <= size or not torch.is_grad_enabled():
        return torch.cat([per_rows(s, min(s + size, n)) for s in range(0, max(n, 1), size)])
    parts = [
        checkpoint(per_rows, s, min(s + size, n), use_reentrant=False) for s in range(0, n, size)
    ]
    return torch.cat(parts)


class JointObjective(Objective):
    """Base of objectives that score all present modalities of a row at once (see module doc).

    Subclasses implement :meth:`subset_loss` on the gathered embeddings of one subset.
    """

    def configure(self, pairs: Sequence[tuple[str, str]], weights: dict[str, float]) -> None:
        super().configure(pairs, weights)  # joint objectives take no pairs nor weights
        if self.loss_options:
            raise ConfigError(
                f"loss.options apply to the pair loss, which {type(self).__name__} does not use"
            )
        name = type(self).__name__
        if len(self.modalities) > MAX_MODALITIES:
            raise ConfigError(f"{name} enumerates modality subsets: at most {MAX_MODALITIES}")
        self.subsets = all_subsets(self.modalities)
        self.calls = 0  # terms() calls: seeds the negative sampling identically on every process

    def state_dict(self) -> dict[str, int]:
        return {"calls": self.calls}  # a resumed run draws the negatives it would have drawn

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.calls = int(state.get("calls", 0))

    def plan(
        self, present: Mapping[str, Tensor], device: torch.device | None = None
    ) -> list[Subset]:
        """The subsets that are some row's exact modalities and held by two rows or more."""
        have = torch.stack([present[m].bool() for m in self.modalities], 1)  # (B, M)
        exact, cover = [], []
        for s in self.subsets:
            inside = torch.tensor([m in s for m in self.modalities])  # (M,)
            holds = have[:, inside].all(1)  # (B,) rows holding every modality of s
            exact.append(int((holds & ~have[:, ~inside].any(1)).sum()))
            cover.append(int(holds.sum()))
        counts = global_counts(exact + cover, device)
        n = len(self.subsets)
        return [s for i, s in enumerate(self.subsets) if counts[i] >= 1 and counts[n + i] >= 2]

    def terms(
        self,
        emb: Mapping[str, Tensor],
        present: Mapping[str, Tensor],
        groups: Tensor | None,
        plan: list[Subset],
        scale: Tensor,
        bias: Tensor | None,
    ) -> dict[str, Tensor]:
        """One term per planned subset, over the global batch's rows holding all of it."""
        self.calls += 1
        out = {}
        for s in plan:
            rows = torch.stack([present[m] for m in s]).all(0)  # (B,)
            parts = []
            for m in s:
                e = self.embedded(emb, m, scale)
                idx = (torch.cumsum(present[m].long(), 0) - 1)[rows].to(e.device)
                parts.append(distributed.all_gather(e[idx], with_grad=True))  # (n, D)
            g = None if groups is None else distributed.all_gather(groups[rows].to(scale.device))
            out["_".join(s)] = self.subset_loss(s, parts, g, scale)
        out.update(self.regularisers(emb))
        return out

    @abstractmethod
    def subset_loss(
        self, subset: Subset, embs: list[Tensor], groups: Tensor | None, scale: Tensor
    ) -> Tensor:
        """0-d loss of one subset. embs: K tensors (n, D), row i of each from one item."""

    def anchor_pair(self) -> tuple[str, str]:
        """The anchor and the first other modality, or the first two modalities."""
        if self.anchor is None:
            return self.modalities[0], self.modalities[1]
        other = next(m for m in self.modalities if m != self.anchor)
        return self.anchor, other

    def generator(self, device: torch.device) -> torch.Generator:
        """A generator seeded by the call count: the same draws on every process."""
        gen = torch.Generator(device=device)
        gen.manual_seed(1_000_003 + self.calls)
        return gen
