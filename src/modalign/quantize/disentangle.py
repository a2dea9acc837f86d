"""Disentangling the shared (semantic) part of a modality from its own (specific) part.

Three pieces, used by DCID and FCID:

* CLUB, a contrastive log-ratio *upper bound* of mutual information: with a variational
  Gaussian q(y | x) fitted by maximum likelihood, ``I(x; y) <= E_p(x,y)[log q(y|x)] -
  E_p(x)E_p(y)[log q(y|x)]``. Minimising it w.r.t. the encoders pushes the semantic and the
  specific features apart; the variational network is trained separately, to maximise the
  likelihood of the (detached) pairs.
* Cross-modal CPC: a recurrent context over one modality's past semantic features predicts the
  next steps of the *other* modalities (weight 1) and of its own (weight 0.1), scored by InfoNCE
  over the batch; it makes the semantic features carry what the modalities share over time.
* Reconstruction of the input features from the semantic and specific parts, so that together
  they keep the information of the input.

Example:
    >>> x = torch.randn(64, 2)
    >>> mu, logvar = x.clone(), torch.zeros(64, 2)
    >>> float(club_estimate(mu, logvar, x)) > 0   # y = x: strongly dependent
    True

References:
    Cheng et al. "CLUB: A Contrastive Log-ratio Upper Bound of Mutual Information", ICML 2020.
    Xia et al. "Achieving Cross Modal Generalization with Multimodal Unified Representation"
    (DCID), NeurIPS 2023. van den Oord et al. "Representation Learning with Contrastive
    Predictive Coding", 2018.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


def club_estimate(mu: torch.Tensor, logvar: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The CLUB estimate of I(x; y) from q(y|x) = N(mu(x), exp(logvar(x))).

    ``mean_i [log q(y_i|x_i) - mean_j log q(y_j|x_i)]``; the normalising constants cancel. The
    negative term over all N x N pairs is computed in O(N D) from the first two moments of y:
    ``mean_j (y_j - mu_i)^2 = mean(y^2) - 2 mu_i mean(y) + mu_i^2``.

    Args:
        mu, logvar: (N, D) parameters of q(y | x_i). y: (N, D) paired samples.

    Returns:
        A scalar (nats).

    Example:
        >>> y = torch.tensor([[1.0], [-1.0]])
        >>> float(club_estimate(y, torch.zeros(2, 1), y))  # 0 - (-(1 + 1) / 2): 1 nat
        1.0
    """
    inv_var = torch.exp(-logvar)
    positive = -0.5 * (mu - y).square() * inv_var  # (N, D)
    second = (y * y).mean(0) - 2 * mu * y.mean(0) + mu * mu  # (N, D): mean_j (y_j - mu_i)^2
    negative = -0.5 * second * inv_var
    return (positive - negative).sum(1).mean()


def gaussian_loglik(mu: torch.Tensor, logvar: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean log-likelihood of y under N(mu, exp(logvar)), up to the constant: (N, D) -> scalar.

    Example:
        >>> float(gaussian_loglik(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2)))
        -1.0
    """
    return (-0.5 * (mu - y).square() * torch.exp(-logvar) - 0.5 * logvar).sum(1).mean()


class CLUBEstimator(nn.Module):
    """Variational q(y | x) = N(mu(x), diag exp(logvar(x))) for the CLUB bound.

    Args:
        x_dim, y_dim: widths of x and y. hidden_dim: width of the two small MLPs.

    ``forward(x, y)`` is the MI estimate (minimise it w.r.t. whatever produced x and y);
    ``loglik(x, y)`` is what the estimator itself maximises, on detached inputs.
    """

    def __init__(self, x_dim: int, y_dim: int, hidden_dim: int = 64) -> None:
        super().__init__()
        self.mu = nn.Sequential(
            nn.Linear(x_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, y_dim)
        )
        self.logvar = nn.Sequential(
            nn.Linear(x_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, y_dim), nn.Tanh()
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (N, Dx), (N, Dy)
        return club_estimate(self.mu(x), self.logvar(x), y)

    def loglik(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return gaussian_loglik(self.mu(x), self.logvar(x), y)


def info_nce(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """InfoNCE with dot-product scores: row i of ``target`` is the positive of prediction i.

    Args:
        prediction, target: (B, D).

    Returns:
        A scalar, mean over the batch.

    Example:
        >>> float(info_nce(torch.eye(2) * 50, torch.eye(2))) < 1e-6
        True
    """
    scores = prediction @ target.T  # (B, B)
    return F.cross_entropy(scores, torch.arange(len(scores), device=scores.device))


class CrossCPC(nn.Module):
    """Cross-modal contrastive predictive coding over temporal semantic features.

    Args:
        modalities: names of the temporal modalities. dim: feature width D. context_dim: GRU
            width. steps: how many future steps to predict. cross_weight, self_weight: weights of
            predicting another modality's future (1) and one's own (0.1).

    ``forward`` picks a random cut t (at least one past step, ``steps`` future steps), runs each
    modality's GRU over steps 0..t and predicts steps t+1..t+steps of every modality.
    """

    def __init__(
        self,
        modalities: list[str],
        dim: int,
        context_dim: int = 64,
        steps: int = 1,
        cross_weight: float = 1.0,
        self_weight: float = 0.1,
    ) -> None:
        super().__init__()
        self.modalities, self.steps = list(modalities), steps
        self.cross_weight, self.self_weight = cross_weight, self_weight
        self.context = nn.ModuleDict(
            {m: nn.GRU(dim, context_dim, batch_first=True) for m in modalities}
        )
        self.predict = nn.ModuleDict(
            {
                m: nn.ModuleList(nn.Linear(context_dim, dim) for _ in range(steps))
                for m in modalities
            }
        )

    def forward(
        self, semantic: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Weighted InfoNCE of the predictions; semantic: modality -> (B, T, D), same T."""
        length = min(semantic[m].shape[1] for m in self.modalities)
        if length <= self.steps:
            return next(iter(semantic.values())).new_zeros(())
        cut = int(torch.randint(length - self.steps, (1,), generator=generator))  # 0..T-steps-1
        contexts = {
            m: self.context[m](semantic[m][:, : cut + 1])[0][:, -1] for m in self.modalities
        }
        total, weights = contexts[self.modalities[0]].new_zeros(()), 0.0
        for src in self.modalities:
            for k in range(self.steps):
                pred = cast(nn.ModuleList, self.predict[src])[k](contexts[src])  # (B, D)
                for dst in self.modalities:
                    w = self.self_weight if dst == src else self.cross_weight
                    total = total + w * info_nce(pred, semantic[dst][:, cut + 1 + k])
                    weights += w
        return total / weights


def reconstruction_loss(x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Mean squared error between input features and their reconstruction (any equal shapes).

    Example:
        >>> float(reconstruction_loss(torch.zeros(2, 3), torch.ones(2, 3)))
        1.0
    """
    return F.mse_loss(reconstruction, x)
