"""FCID: fine-coarse cross-modal information disentangling.

Two levels instead of DCID's one:

* fine (temporal modalities, e.g. audio and visual; time kept): semantic and specific encoders,
  CLUB between them, cross-modal CPC over the semantic sequences, reconstruction of the input
  from both; no codebook at this level;
* coarse: the fine semantic sequences are pooled over time and passed through a projection
  *shared* by the temporal modalities; a non-temporal anchor (text) has its own projection.
  Audio-to-text and visual-to-text are aligned by InfoNCE (temperature 0.1; without an anchor
  the temporal modalities are aligned pairwise), CLUB separates the coarse semantic features
  from the pooled specific ones, and the coarse semantic features are quantised in the shared
  codebook (one step per sample).

Example:
    >>> from modalign.config import CodebookConfig, QuantizerConfig, DisentangleConfig
    >>> cfg = CodebookConfig("fcid", QuantizerConfig(codes=8, dim=4), DisentangleConfig(hidden_dim=8, specific_dim=2))
    >>> model = build_model(cfg, {"audio": (5, 3), "video": (5, 6), "text": (1, 7)})
    >>> batch = {"audio": torch.randn(4, 5, 3), "video": torch.randn(4, 5, 6), "text": torch.randn(4, 1, 7)}
    >>> sorted(model.losses(batch)[0])
    ['align', 'club', 'commitment', 'cpc', 'matching', 'recon']
    >>> model.eval().encode("audio", batch["audio"])[0].shape
    torch.Size([4, 1, 4])

References:
    Huang et al. "Enhancing Multimodal Unified Representations for Cross Modal Generalization",
    arXiv 2403.05168 (ACL 2025 Findings).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from modalign.config import CodebookConfig
from modalign.quantize.disentangle import CLUBEstimator, CrossCPC, reconstruction_loss
from modalign.quantize.model import (
    METHODS,
    Batch,
    ClubPair,
    Dims,
    SequenceEncoder,
    UnifiedModel,
    build_model,
    club_of,
    contrastive_alignment,
    flat,
    mlp,
    pooled,
)

__all__ = ["FCIDModel", "build_model"]


class FCIDModel(UnifiedModel):
    """Fine level over the temporal modalities, coarse level quantised in the shared codebook."""

    def __init__(self, cfg: CodebookConfig, dims: Dims) -> None:
        super().__init__(cfg, dims)
        d, dis = cfg.quantizer.dim, cfg.disentangle
        h, s = dis.hidden_dim, dis.specific_dim
        self.fine = [m for m, (t, _) in dims.items() if t > 1 and m not in cfg.fcid.anchors]
        self.anchors = [m for m in dims if m not in self.fine]
        if not self.fine:
            raise ValueError(
                "FCID needs at least one temporal (T > 1) modality that is not an anchor"
            )
        self.semantic = nn.ModuleDict(
            {m: SequenceEncoder(dims[m][1], h, d, normalize=True) for m in self.fine}
        )
        self.specific = nn.ModuleDict({m: SequenceEncoder(dims[m][1], h, s) for m in self.fine})
        self.decoder = nn.ModuleDict({m: mlp(d + s, h, dims[m][1]) for m in self.fine})
        self.club_fine = nn.ModuleDict({m: CLUBEstimator(d, s, h) for m in self.fine})
        self.club_coarse = nn.ModuleDict({m: CLUBEstimator(d, s, h) for m in self.fine})
        # one projection for every temporal modality; layer-normalised like the fine level
        self.coarse_shared = nn.Sequential(mlp(d, h, d), nn.LayerNorm(d, elementwise_affine=False))
        self.coarse_anchor = nn.ModuleDict(
            {
                m: nn.Sequential(mlp(dims[m][1], h, d), nn.LayerNorm(d, elementwise_affine=False))
                for m in self.anchors
            }
        )
        self.cpc = CrossCPC(self.fine, d, h, dis.cpc_steps, 1.0, dis.cpc_self_weight)

    def _fine(
        self, batch: Batch
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        x = {m: self.norm[m](batch[m]) for m in self.fine}
        return (
            x,
            {m: self.semantic[m](x[m]) for m in self.fine},
            {m: self.specific[m](x[m]) for m in self.fine},
        )

    def _coarse(
        self, modality: str, fine_semantic: torch.Tensor | None, raw: torch.Tensor
    ) -> torch.Tensor:
        """(B, 1, D) coarse semantic feature of one modality."""
        if modality in self.anchors:
            return self.coarse_anchor[modality](pooled(self.norm[modality](raw))).unsqueeze(1)
        assert fine_semantic is not None
        return self.coarse_shared(pooled(fine_semantic)).unsqueeze(1)

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Loss terms (already weighted) and logged numbers for a batch: modality -> (B, T, F)."""
        cfg, dis = self.cfg, self.cfg.disentangle
        x, z, s = self._fine(batch)
        coarse = {m: self._coarse(m, z.get(m), batch[m]) for m in batch}
        out = self.codebook(coarse)
        recon = sum(
            reconstruction_loss(x[m], self.decoder[m](torch.cat([z[m], s[m]], -1)))
            for m in self.fine
        )
        mi_fine = sum(self.club_fine[m](flat(z[m]), flat(s[m])) for m in self.fine)
        mi_coarse = sum(self.club_coarse[m](coarse[m][:, 0], pooled(s[m])) for m in self.fine)
        terms = self.quantizer_terms(out)
        terms["recon"] = dis.recon_weight * torch.as_tensor(recon)
        terms["club"] = dis.club_weight * torch.as_tensor(mi_fine + mi_coarse)
        terms["cpc"] = dis.cpc_weight * self.cpc(z)
        terms["align"] = cfg.fcid.align_weight * self._alignment(coarse)
        return terms, out.stats

    def _alignment(self, coarse: dict[str, torch.Tensor]) -> torch.Tensor:
        anchors = [m for m in self.anchors if m in coarse]
        pairs = (
            [(m, a) for m in self.fine for a in anchors]
            if anchors
            else list(itertools.combinations(self.fine, 2))
        )
        if not pairs:
            return next(iter(coarse.values())).new_zeros(())
        t = self.cfg.fcid.temperature
        return torch.stack(
            [contrastive_alignment(coarse[a][:, 0], coarse[b][:, 0], t) for a, b in pairs]
        ).mean()

    def club_pairs(self, batch: Batch) -> list[ClubPair]:
        with torch.no_grad():
            _, z, s = self._fine(batch)
            pairs = [(club_of(self.club_fine, m), flat(z[m]), flat(s[m])) for m in self.fine]
            pairs += [
                (club_of(self.club_coarse, m), self._coarse(m, z[m], batch[m])[:, 0], pooled(s[m]))
                for m in self.fine
            ]
        return pairs

    def encode(self, modality: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F) features -> ((B, 1, D) quantised coarse features, (B, 1) codes)."""
        fine = self.semantic[modality](self.norm[modality](x)) if modality in self.fine else None
        return self.codebook.quantize(self._coarse(modality, fine, x))


@METHODS.register("fcid")
def _make_fcid(cfg: CodebookConfig, dims: Dims) -> UnifiedModel:
    return FCIDModel(cfg, dims)
