"""Models that map each modality's temporal features into the shared codebook: CMG and DCID.

Every model here has the same small interface (:class:`UnifiedModel`), so one trainer, the
``codes`` command and the transfer evaluation serve them all:

* ``losses(batch)``: the weighted loss terms and logged numbers of one batch of paired samples;
* ``club_pairs(batch)``: detached (estimator, x, y) triples on which the CLUB estimators are
  trained by their own optimiser;
* ``encode(modality, x)``: the (B, T', D) quantised features and (B, T') codes of new items.

Methods are registered by name in :data:`METHODS` (``cmg``, ``dcid``, ``fcid``).

Example:
    >>> from modalign.config import CodebookConfig, QuantizerConfig, DisentangleConfig
    >>> cfg = CodebookConfig("dcid", QuantizerConfig(codes=8, dim=4), DisentangleConfig(hidden_dim=8, specific_dim=2))
    >>> model = build_model(cfg, {"audio": (5, 3), "video": (5, 6)})
    >>> batch = {"audio": torch.randn(4, 5, 3), "video": torch.randn(4, 5, 6)}
    >>> terms, stats = model.losses(batch)
    >>> sorted(terms)
    ['club', 'commitment', 'cpc', 'matching', 'recon']
    >>> model.eval().encode("video", batch["video"])[1].shape
    torch.Size([4, 5])

References:
    Xia et al. "Achieving Cross Modal Generalization with Multimodal Unified Representation",
    NeurIPS 2023 (CMG, DCID).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from modalign.config import CodebookConfig
from modalign.quantize.codebook import QuantizeOutput, SharedCodebook
from modalign.quantize.disentangle import CLUBEstimator, CrossCPC, reconstruction_loss
from modalign.registry import Registry

Dims = Mapping[str, tuple[int, int]]  # modality -> (T steps, F features per step)
Batch = Mapping[str, torch.Tensor]  # modality -> (B, T, F)
ClubPair = tuple[CLUBEstimator, torch.Tensor, torch.Tensor]


class Standardize(nn.Module):
    """Per-feature standardisation with statistics fitted once on the training features."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, x: torch.Tensor) -> None:
        """Fit on (N, T, F) features."""
        flat = x.reshape(-1, x.shape[-1])
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0).clamp_min(1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SequenceEncoder(nn.Module):
    """(B, T, F) -> (B, T, out): a width-3 temporal convolution, then a per-step MLP.

    With ``normalize`` the output is layer-normalised (no affine part), as CMG's transformer
    encoders end: every step then has norm sqrt(out), which keeps the codebook's distances, the
    soft code distributions of code matching and the commitment loss on one scale instead of
    growing with the features.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, normalize: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_dim, hidden_dim, kernel_size=3, padding=1)
        self.out = nn.Sequential(
            nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim)
        )
        self.norm = nn.LayerNorm(out_dim, elementwise_affine=False) if normalize else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, T, F) -> (B, F, T) -> (B, T, H)
        return self.norm(self.out(h))


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """A two-layer perceptron, applied to the last axis."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


def club_of(estimators: nn.ModuleDict, modality: str) -> CLUBEstimator:
    """The CLUB estimator of a modality, typed."""
    return cast(CLUBEstimator, estimators[modality])


def flat(x: torch.Tensor) -> torch.Tensor:
    """(B, T, D) -> (B*T, D)."""
    return x.reshape(-1, x.shape[-1])


class UnifiedModel(nn.Module):
    """Base of the codebook models: per-modality input standardisation and the shared codebook."""

    def __init__(self, cfg: CodebookConfig, dims: Dims) -> None:
        super().__init__()
        q = cfg.quantizer
        self.cfg, self.dims = cfg, dict(dims)
        self.modalities = list(dims)
        self.norm = nn.ModuleDict({m: Standardize(f) for m, (_, f) in dims.items()})
        self.codebook = SharedCodebook(
            q.codes,
            q.dim,
            q.decay,
            q.epsilon,
            q.commitment,
            q.self_weight,
            q.restart_after,
            q.init_from_data,
        )

    def fit_normalisation(self, features: Batch) -> None:
        """Fit each modality's standardisation on its (N, T, F) training features."""
        for m, x in features.items():
            cast(Standardize, self.norm[m]).fit(x)

    def club_estimators(self) -> list[CLUBEstimator]:
        return [mod for mod in self.modules() if isinstance(mod, CLUBEstimator)]

    def main_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter except the CLUB estimators' (they have their own optimiser)."""
        skip = {id(p) for est in self.club_estimators() for p in est.parameters()}
        return [p for p in self.parameters() if id(p) not in skip]

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        raise NotImplementedError

    def club_pairs(self, batch: Batch) -> list[ClubPair]:
        raise NotImplementedError

    def encode(self, modality: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def quantizer_terms(self, out: QuantizeOutput) -> dict[str, torch.Tensor]:
        return {
            "commitment": out.commitment,
            "matching": self.cfg.quantizer.matching_weight * out.matching,
        }


METHODS = Registry[Callable[[CodebookConfig, Dims], UnifiedModel]]("codebook method")


def build_model(cfg: CodebookConfig, dims: Dims) -> UnifiedModel:
    """The model of ``cfg.method`` for modalities of the given (T, F) shapes."""
    if cfg.method is None:
        raise ValueError("codebook.method is not set")
    return METHODS.get(cfg.method)(cfg, dims)


class DCIDModel(UnifiedModel):
    """Semantic and specific encoders per modality, the shared codebook, and DCID's terms.

    The semantic features (B, T, D) are quantised in the shared codebook; the decoder rebuilds
    the input from the quantised and the specific (B, T, S) features. With ``disentangle`` on
    (method ``dcid``) a CLUB bound between the quantised and the specific features is minimised
    and a cross-modal CPC runs over the temporal modalities; off (method ``cmg``), the model is
    the codebook with reconstruction alone.
    """

    def __init__(self, cfg: CodebookConfig, dims: Dims, disentangle: bool = True) -> None:
        super().__init__(cfg, dims)
        d, dis = cfg.quantizer.dim, cfg.disentangle
        h, s = dis.hidden_dim, dis.specific_dim
        self.disentangle = disentangle
        self.semantic = nn.ModuleDict(
            {m: SequenceEncoder(f, h, d, normalize=True) for m, (_, f) in dims.items()}
        )
        self.specific = nn.ModuleDict({m: SequenceEncoder(f, h, s) for m, (_, f) in dims.items()})
        self.decoder = nn.ModuleDict({m: mlp(d + s, h, f) for m, (_, f) in dims.items()})
        temporal = [m for m, (t, _) in dims.items() if t > dis.cpc_steps]
        self.cpc = (
            CrossCPC(temporal, d, h, dis.cpc_steps, 1.0, dis.cpc_self_weight)
            if disentangle and temporal
            else None
        )
        self.club = (
            nn.ModuleDict({m: CLUBEstimator(d, s, h) for m in dims}) if disentangle else None
        )

    def _split(
        self, batch: Batch
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        x = {m: self.norm[m](v) for m, v in batch.items()}
        return (
            x,
            {m: self.semantic[m](v) for m, v in x.items()},
            {m: self.specific[m](v) for m, v in x.items()},
        )

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Loss terms (already weighted) and logged numbers for a batch: modality -> (B, T, F)."""
        dis = self.cfg.disentangle
        x, z, s = self._split(batch)
        out = self.codebook(z)
        recon = sum(
            reconstruction_loss(x[m], self.decoder[m](torch.cat([out.quantized[m], s[m]], -1)))
            for m in x
        )
        terms = self.quantizer_terms(out)
        terms["recon"] = dis.recon_weight * torch.as_tensor(recon)
        if self.club is not None:
            mi = sum(self.club[m](flat(out.quantized[m]), flat(s[m])) for m in x)
            terms["club"] = dis.club_weight * torch.as_tensor(mi)
        if self.cpc is not None:
            terms["cpc"] = dis.cpc_weight * self.cpc(z)
        return terms, out.stats

    def club_pairs(self, batch: Batch) -> list[ClubPair]:
        if self.club is None:
            return []
        with torch.no_grad():
            _, z, s = self._split(batch)
            return [
                (club_of(self.club, m), flat(self.codebook.quantize(z[m])[0]), flat(s[m]))
                for m in z
            ]

    def encode(self, modality: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F) features -> ((B, T, D) quantised features, (B, T) codes)."""
        z = self.semantic[modality](self.norm[modality](x))
        return self.codebook.quantize(z)


@METHODS.register("cmg")
def _make_cmg(cfg: CodebookConfig, dims: Dims) -> UnifiedModel:
    return DCIDModel(cfg, dims, disentangle=False)


@METHODS.register("dcid")
def _make_dcid(cfg: CodebookConfig, dims: Dims) -> UnifiedModel:
    return DCIDModel(cfg, dims, disentangle=True)


def pooled(x: torch.Tensor) -> torch.Tensor:
    """(B, T, D) -> (B, D): mean over time."""
    return x.mean(1)


def contrastive_alignment(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between L2-normalised rows of a and b (B, D); row i pairs with row i."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature  # (B, B)
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
