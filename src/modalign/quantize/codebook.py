"""A codebook shared by all modalities: nearest-code quantisation with multi-modal EMA updates.

Each modality's semantic features (B, T, D) are quantised to the nearest of L shared codes
(Euclidean), with a straight-through gradient. The codes are not learned by gradient descent but
by exponential moving averages of the features assigned to them (VQ-VAE's EMA variant), where a
modality's assigned features are mixed with the *paired* features of the other modalities at the
same sample and step ("multi-modal EMA"): the code that audio step t picks moves half towards the
audio feature and half towards the visual/text features of the same clip at step t. That pulls
paired features of different modalities onto the same codes. Cross-modal code matching adds a
contrastive term over each sample's soft code distribution, and a dead-code restart keeps every
code in use.

Example:
    >>> torch.manual_seed(0) and None
    >>> book = SharedCodebook(num_codes=8, dim=4)
    >>> out = book({"audio": torch.randn(2, 3, 4), "video": torch.randn(2, 3, 4)})
    >>> out.codes["audio"].shape, out.quantized["video"].shape
    (torch.Size([2, 3]), torch.Size([2, 3, 4]))

References:
    Xia, Huang, Zhu, Zhao. "Achieving Cross Modal Generalization with Multimodal Unified
    Representation" (CMG), NeurIPS 2023; public code github.com/haihuangcode/CMG.
    van den Oord et al. "Neural Discrete Representation Learning" (VQ-VAE), NeurIPS 2017.
    Liu et al. "Cross-Modal Discrete Representation Learning", ACL 2022 (code matching).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def squared_distances(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances from every row of ``x`` to every code.

    Args:
        x: (N, D) features. codebook: (L, D) codes.

    Returns:
        (N, L) distances, clamped at 0 (the expansion ``|x|^2 + |e|^2 - 2 x.e`` can round below).

    Example:
        >>> squared_distances(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        tensor([[1., 1.]])
    """
    d = (x * x).sum(1, keepdim=True) + (codebook * codebook).sum(1) - 2.0 * x @ codebook.T
    return d.clamp_min(0.0)  # (N, L)


def nearest_codes(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code for each row of ``x`` (N, D) -> (N,) int64.

    Example:
        >>> nearest_codes(torch.tensor([[0.9, 1.2]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        tensor([1])
    """
    return squared_distances(x.detach(), codebook).argmin(dim=1)


def align_time(x: torch.Tensor, steps: int) -> torch.Tensor:
    """Resample a sequence (B, T, D) to (B, steps, D) by nearest earlier index.

    Pairs the steps of modalities with different frame counts (a one-step text is broadcast
    over time): step t of the target reads step floor(t * T / steps) of ``x``.

    Example:
        >>> align_time(torch.arange(2.0).view(1, 2, 1), 4).flatten().tolist()
        [0.0, 0.0, 1.0, 1.0]
    """
    t = x.shape[1]
    if t == steps:
        return x
    index = torch.div(torch.arange(steps, device=x.device) * t, steps, rounding_mode="floor")
    return x[:, index]


def mix_targets(own: torch.Tensor, others: list[torch.Tensor], self_weight: float) -> torch.Tensor:
    """The EMA target of a modality's steps: its own features mixed with its partners'.

    Args:
        own: (N, D) flattened features of the modality. others: the other modalities' paired
            features, each (N, D) in the same row order. self_weight: the own share (0.5 in CMG);
            the other modalities share ``1 - self_weight`` equally.

    Returns:
        (N, D) targets.

    Example:
        >>> mix_targets(torch.ones(1, 2), [torch.zeros(1, 2)], 0.5)
        tensor([[0.5000, 0.5000]])
    """
    if not others:
        return own
    share = (1.0 - self_weight) / len(others)
    return self_weight * own + share * torch.stack(others).sum(0)


def ema_update(
    count: torch.Tensor,
    weight: torch.Tensor,
    codes: torch.Tensor,
    targets: torch.Tensor,
    decay: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One EMA step of the code statistics (VQ-VAE, Laplace-smoothed counts).

    Args:
        count: (L,) running assignment counts. weight: (L, D) running sums of assigned targets.
        codes: (N,) code chosen per row. targets: (N, D) what each row pulls its code towards.
        decay: EMA decay (0.99). eps: Laplace smoothing of the counts (1e-5).

    Returns:
        (count, weight, codebook) after the step; codebook = weight / count, (L, D).

    Example:
        >>> c, w, e = ema_update(torch.ones(2), torch.zeros(2, 1), torch.tensor([0]),
        ...                      torch.tensor([[1.0]]), decay=0.5, eps=0.0)
        >>> c.tolist(), e.flatten().tolist()
        ([1.0, 0.5], [0.5, 0.0])
    """
    num_codes = count.shape[0]
    onehot = F.one_hot(codes, num_codes).to(weight.dtype)  # (N, L)
    count = decay * count + (1 - decay) * onehot.sum(0)
    # Laplace smoothing keeps an unused code's count above zero without changing the total
    n = count.sum()
    count = (count + eps) / (n + num_codes * eps) * n
    weight = decay * weight + (1 - decay) * onehot.T @ targets  # (L, D)
    return count, weight, weight / count.unsqueeze(1)


def commitment_loss(
    semantic: Mapping[str, torch.Tensor],
    quantized: Mapping[str, torch.Tensor],
    beta: float,
    own_weight: float = 2.0,
) -> torch.Tensor:
    """Pull each modality's features to its own codes and to its partners' codes.

    Per modality m: ``beta * (own_weight * mse(z_m, q_m) + mean_{o != m} mse(z_m, q_o))`` with
    the codes q detached, summed over modalities (CMG: own weight 2, the others 1 in total).

    Args:
        semantic: modality -> (B, T_m, D) features. quantized: modality -> (B, T_m, D) codes.
        beta: commitment cost (0.25). own_weight: weight of the own-code term.

    Returns:
        A scalar.

    Example:
        >>> z = {"a": torch.zeros(1, 1, 2), "b": torch.ones(1, 1, 2)}
        >>> float(commitment_loss(z, z, beta=0.25))
        0.5
    """
    names = list(semantic)
    total = semantic[names[0]].new_zeros(())
    for m in names:
        z = semantic[m]
        terms = [
            F.mse_loss(z, align_time(quantized[o], z.shape[1]).detach()) for o in names if o != m
        ]
        cross = torch.stack(terms).mean() if terms else z.new_zeros(())
        total = total + beta * (own_weight * F.mse_loss(z, quantized[m].detach()) + cross)
    return total


def code_distribution(semantic: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Per-sample soft code distribution: softmax over negative distances, averaged over time.

    Args:
        semantic: (B, T, D) features (gradients flow). codebook: (L, D).

    Returns:
        (B, L) rows summing to one.

    Example:
        >>> code_distribution(torch.zeros(1, 2, 1), torch.tensor([[0.0], [1.0]])).sum().item()
        1.0
    """
    b, t, d = semantic.shape
    dist = squared_distances(semantic.reshape(b * t, d), codebook)  # (B*T, L)
    probs = F.softmax(-torch.sqrt(dist + 1e-12), dim=1)
    return probs.view(b, t, -1).mean(1)


def code_matching_loss(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Cross-modal code matching: InfoNCE over the batch on code-distribution similarity.

    The similarity of sample i of one modality and sample j of the other is the symmetric
    cross-entropy score ``p_i . log q_j + q_j . log p_i``; sample i of the other modality is the
    positive among the B candidates.

    Args:
        p: (B, L) code distributions of one modality. q: (B, L) of the other, same row order.

    Returns:
        A scalar (mean over the batch).

    Example:
        >>> p = torch.eye(3) * 0.97 + 0.01
        >>> code_matching_loss(p, p) < code_matching_loss(p, p.flip(0))
        tensor(True)
    """
    log_p, log_q = torch.log(p + 1e-10), torch.log(q + 1e-10)
    score = p @ log_q.T + log_p @ q.T  # (B, B): [i, j] pairs p_i with q_j
    return F.cross_entropy(score, torch.arange(p.shape[0], device=p.device))


def restart_dead_codes(
    codebook: torch.Tensor,
    unused: torch.Tensor,
    used: torch.Tensor,
    after: int,
    noise: float = 1.0 / 1024,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Count steps since each code was last used; replace codes unused for ``after`` steps.

    A dead code becomes a copy of a code used in this step (chosen at random) plus uniform noise
    in [-noise, noise], and its counter starts again from zero.

    Args:
        codebook: (L, D) codes. unused: (L,) steps since last use. used: (N,) codes used by any
            modality in this step. after: steps without use that make a code dead (300 in CMG).
        noise: half-width of the uniform jitter. generator: random source (None: global).

    Returns:
        (codebook, unused, dead) where dead is the (K,) int64 indices that were restarted.

    Example:
        >>> book, unused, dead = restart_dead_codes(torch.zeros(3, 1), torch.tensor([0, 5, 1]),
        ...                                         torch.tensor([0]), after=5, noise=0.0)
        >>> unused.tolist(), dead.tolist()
        ([0, 0, 2], [1])
    """
    unused = unused + 1
    unused[used] = 0
    dead = torch.nonzero(unused > after).flatten()
    if dead.numel():
        active = torch.unique(used)
        pick = torch.randint(len(active), (dead.numel(),), generator=generator).to(active.device)
        jitter = torch.rand(dead.numel(), codebook.shape[1], generator=generator) * 2 - 1
        codebook = codebook.clone()
        codebook[dead] = codebook[active[pick]] + noise * jitter.to(codebook)
        unused[dead] = 0
    return codebook, unused, dead


def perplexity(codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """exp(entropy) of the code histogram: the effective number of codes in use.

    Example:
        >>> round(float(perplexity(torch.tensor([0, 1, 2, 3]), 8)), 4)
        4.0
    """
    probs = torch.bincount(codes.flatten(), minlength=num_codes).float() / codes.numel()
    return torch.exp(-(probs * torch.log(probs + 1e-10)).sum())


def usage_overlap(a: torch.Tensor, b: torch.Tensor, num_codes: int) -> float:
    """Jaccard overlap of the sets of codes two modalities use (1: the same codes).

    Example:
        >>> usage_overlap(torch.tensor([0, 1]), torch.tensor([1, 2]), 4)
        0.3333333333333333
    """
    sa = torch.bincount(a.flatten(), minlength=num_codes) > 0
    sb = torch.bincount(b.flatten(), minlength=num_codes) > 0
    union = int((sa | sb).sum())
    return int((sa & sb).sum()) / union if union else 0.0


@dataclass
class QuantizeOutput:
    """What :class:`SharedCodebook` returns.

    Attributes:
        quantized: modality -> (B, T, D) codes with straight-through gradients to the features.
        codes: modality -> (B, T) int64 indices. commitment, matching: scalar losses.
        stats: logged numbers (perplexity per modality, active codes, usage overlaps).
    """

    quantized: dict[str, torch.Tensor]
    codes: dict[str, torch.Tensor]
    commitment: torch.Tensor
    matching: torch.Tensor
    stats: dict[str, float]


class SharedCodebook(nn.Module):
    """L codes x D shared by all modalities, updated by multi-modal EMA (not by the optimiser).

    Args:
        num_codes: L (400 in CMG). dim: D (256 in CMG). decay, eps: EMA decay and Laplace
            smoothing. beta: commitment cost. self_weight: a modality's own share of its EMA
            target. restart_after: steps unused before a code is restarted (0: never).
        init_from_data: set the codes to randomly chosen features of the first training batch
            (a cheap k-means start; CMG starts from uniform noise in +-1/400).

    Buffers ``embedding`` (L, D), ``ema_count`` (L,), ``ema_weight`` (L, D) and ``unused`` (L,)
    travel with the state dict, so a saved run quantises exactly as it did in training.
    """

    embedding: torch.Tensor
    ema_count: torch.Tensor
    ema_weight: torch.Tensor
    unused: torch.Tensor
    initialised: torch.Tensor

    def __init__(
        self,
        num_codes: int,
        dim: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        beta: float = 0.25,
        self_weight: float = 0.5,
        restart_after: int = 300,
        init_from_data: bool = True,
    ) -> None:
        super().__init__()
        self.num_codes, self.dim = num_codes, dim
        self.decay, self.eps, self.beta = decay, eps, beta
        self.self_weight, self.restart_after = self_weight, restart_after
        embedding = torch.empty(num_codes, dim).uniform_(-1 / 400, 1 / 400)
        self.register_buffer("embedding", embedding)
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("ema_weight", embedding.clone())
        self.register_buffer("unused", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("initialised", torch.tensor(not init_from_data))

    def quantize(
        self, semantic: torch.Tensor, book: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) features -> ((B, T, D) straight-through codes, (B, T) indices); no update."""
        book = self.embedding if book is None else book
        b, t, d = semantic.shape
        codes = nearest_codes(semantic.reshape(b * t, d), book).view(b, t)
        q = F.embedding(codes, book)  # (B, T, D)
        # straight-through: forward value q, gradient of the identity to the features
        return semantic + (q - semantic).detach(), codes

    def forward(self, semantic: Mapping[str, torch.Tensor]) -> QuantizeOutput:
        """Quantise paired features of several modalities; in training mode, update the codes.

        Args:
            semantic: modality -> (B, T_m, D) features of the same B samples.

        Returns:
            A :class:`QuantizeOutput`.
        """
        if self.training and not bool(self.initialised):
            self._init_from(semantic)
        # a snapshot: the EMA step below rewrites the buffer in place, and autograd needs the
        # codes the losses were computed with
        book = self.embedding.clone()
        hard = {m: self.quantize(z, book) for m, z in semantic.items()}
        quantized = {m: q for m, (q, _) in hard.items()}
        codes = {m: c for m, (_, c) in hard.items()}
        raw = {m: F.embedding(c, book) for m, c in codes.items()}
        commitment = commitment_loss(semantic, raw, self.beta)
        matching = self._matching(semantic, book)
        stats = self._stats(codes)
        if self.training:
            with torch.no_grad():
                self._ema_step(semantic, codes)
        return QuantizeOutput(quantized, codes, commitment, matching, stats)

    def _matching(self, semantic: Mapping[str, torch.Tensor], book: torch.Tensor) -> torch.Tensor:
        names = list(semantic)
        dists = {m: code_distribution(semantic[m], book) for m in names}
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        if not pairs:
            return book.new_zeros(())
        return 0.5 * torch.stack([code_matching_loss(dists[a], dists[b]) for a, b in pairs]).sum()

    def _ema_step(
        self, semantic: Mapping[str, torch.Tensor], codes: Mapping[str, torch.Tensor]
    ) -> None:
        # one sequential update per modality, as in CMG's code: each sees the codes the previous moved
        for m, z in semantic.items():
            b, t, d = z.shape
            own = z.detach().reshape(b * t, d)
            others = [
                align_time(semantic[o].detach(), t).reshape(b * t, d) for o in semantic if o != m
            ]
            targets = mix_targets(own, others, self.self_weight)
            count, weight, book = ema_update(
                self.ema_count, self.ema_weight, codes[m].flatten(), targets, self.decay, self.eps
            )
            self.ema_count.copy_(count)
            self.ema_weight.copy_(weight)
            self.embedding.copy_(book)
        if self.restart_after > 0:
            used = torch.cat([c.flatten() for c in codes.values()])
            book, unused, dead = restart_dead_codes(
                self.embedding, self.unused, used, self.restart_after
            )
            self.embedding.copy_(book)
            self.unused.copy_(unused)
            # keep the EMA sums consistent, or the next step would undo the restart
            self.ema_weight[dead] = book[dead] * self.ema_count[dead].unsqueeze(1)

    def _init_from(self, semantic: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            flat = torch.cat([z.detach().reshape(-1, z.shape[-1]) for z in semantic.values()])
            pick = torch.randint(len(flat), (self.num_codes,), device=flat.device)
            book = flat[pick] + 1e-3 * torch.randn(self.num_codes, self.dim, device=flat.device)
            self.embedding.copy_(book)
            self.ema_weight.copy_(book * self.ema_count.unsqueeze(1))
            self.initialised.fill_(True)

    def _stats(self, codes: Mapping[str, torch.Tensor]) -> dict[str, float]:
        stats = {f"perplexity/{m}": float(perplexity(c, self.num_codes)) for m, c in codes.items()}
        every = torch.cat([c.flatten() for c in codes.values()])
        stats["active_codes"] = float(torch.unique(every).numel())
        names = list(codes)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                stats[f"overlap/{a}_{b}"] = usage_overlap(codes[a], codes[b], self.num_codes)
        return stats
