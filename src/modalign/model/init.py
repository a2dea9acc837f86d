"""Closed-form initialisation of the heads from the train pairs: regularised CCA, then training.

With few pairs (hundreds), contrastive training of heads over frozen features overfits within a
few epochs, while regularised canonical correlation analysis (CCA) solves the linear problem in
closed form with a shrinkage that small train sets need. ``model.head.init: cca`` starts the
heads *at* that solution; training then fine-tunes it contrastively, and early stopping (which
also scores the initial weights) keeps whichever is best on the val split.

* The *anchor pair* (the first of ``loss.pairs``, or the first two modalities) gets the CCA:
  each side centred and PCA-reduced to ``init_pca_dim`` dimensions, covariances shrunk towards
  a multiple of the identity by ``init_reg`` (relative to their mean eigenvalue), the top
  ``embed_dim`` canonical directions weighted by their correlations (Hotelling, 1936; ridge
  CCA, Vinod, 1976). This is exactly ``modalign.eval.baselines``'s ``cca`` map.
* Every other modality is mapped into that space by ridge regression of its features onto the
  mean anchor embedding of the same items (train rows where both are present).

Heads are set to the affine map ``x -> x @ W + b`` (``b = -mean @ W``) on their normalised
input: a linear head needs ``head.bias: true``; an MLP head puts ``W`` in its linear shortcut
and ``b`` in the bias of its last layer, whose weights start at zero (so its non-linear branch
starts switched off, as in zero-initialised residual branches). Maps are rescaled so that train
embeddings have a root-mean-square norm of one (directions, hence normalised embeddings and
retrieval, are unchanged); columns past the CCA's rank are zero.

References:
    Hotelling, 1936, "Relations between two sets of variates"; Vinod, 1976, "Canonical ridge and
    econometrics of joint production"; Hoerl & Kennard, 1970, "Ridge regression".
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from modalign.data.paired import PairedData, iterate_rows
from modalign.errors import ConfigError, DataError
from modalign.eval.baselines import fit_cca, fit_pca
from modalign.model.aligner import Aligner
from modalign.model.heads import LinearHead, MLPHead, Standardize
from modalign.model.inference import to_device

log = logging.getLogger(__name__)

Affine = tuple[np.ndarray, np.ndarray]
"""``(W, b)``: an embedding is ``x @ W + b``; W (D, dim), b (dim,)."""


def fit_cca_init(
    xa: np.ndarray, xb: np.ndarray, dim: int, pca_dim: int | None = None, reg: float = 0.1
) -> tuple[Affine, Affine]:
    """Affine maps of paired rows ``xa`` (N, Da) and ``xb`` (N, Db) onto their top-``dim``
    regularised canonical directions, weighted by the canonical correlations.

    Args:
        xa, xb: paired train rows. dim: output width (zero columns past the CCA's rank).
        pca_dim: PCA width of each side before the CCA (None: full rank). reg: shrinkage.

    Returns:
        ``((Wa, ba), (Wb, bb))``, with ``x @ W + b = (x - mean) @ P @ C`` (see the module doc).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> z = rng.normal(size=(50, 2))
        >>> (wa, ba), (wb, bb) = fit_cca_init(z @ rng.normal(size=(2, 6)), z @ rng.normal(size=(2, 5)), 3)
        >>> wa.shape, bb.shape
        ((6, 3), (3,))
    """
    xa, xb = xa.astype(np.float64), xb.astype(np.float64)
    k = pca_dim or max(xa.shape[1], xb.shape[1])
    (ma, pa), (mb, pb) = fit_pca(xa, k), fit_pca(xb, k)
    k = min(pa.shape[1], pb.shape[1])
    pa, pb = pa[:, :k], pb[:, :k]
    ca, cb = fit_cca((xa - ma) @ pa, (xb - mb) @ pb, dim, reg)  # (k, r), r <= dim
    out = []
    for mean, p, c in ((ma, pa, ca), (mb, pb, cb)):
        w = np.zeros((len(mean), dim))
        w[:, : c.shape[1]] = p @ c
        out.append((w, -mean @ w))
    return out[0], out[1]


def fit_ridge_init(x: np.ndarray, target: np.ndarray, reg: float = 0.1) -> Affine:
    """Ridge regression with intercept of ``target`` (N, dim) on ``x`` (N, D): ``(W, b)``.

    The penalty is ``reg`` times the mean eigenvalue of the centred Gram matrix ``xc^T xc``.
    """
    x, target = x.astype(np.float64), target.astype(np.float64)
    mx, mt = x.mean(0), target.mean(0)
    xc = x - mx
    gram = xc.T @ xc  # (D, D)
    lam = reg * np.trace(gram) / len(gram)
    w = np.linalg.solve(gram + lam * np.eye(len(gram)), xc.T @ (target - mt))  # (D, dim)
    return w, mt - mx @ w


@torch.no_grad()
def head_inputs(model: Aligner, data: PairedData, rows: np.ndarray) -> dict[str, np.ndarray]:
    """What each head's linear map sees on ``rows``: encoder output, then the head's input norm.

    Returns modality -> (len(rows), D) float64, NaN rows where the modality is missing.
    """
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, np.ndarray] = {}
    for start, batch in zip(range(0, len(rows), 512), iterate_rows(data, rows, 512), strict=True):
        for m, inputs in to_device(batch.inputs, device).items():
            norm = getattr(model.heads[m], "norm", None)
            norm = norm if isinstance(norm, nn.Module) else nn.Identity()
            x = norm(model.encoders[m](inputs)).double().cpu().numpy()
            arr = out.setdefault(m, np.full((len(rows), x.shape[1]), np.nan))
            arr[start + np.flatnonzero(batch.present[m].numpy())] = x
    return out


def set_head_affine(head: nn.Module, w: np.ndarray, b: np.ndarray) -> None:
    """Make ``head`` compute ``norm(x) @ w + b`` (see the module docstring)."""
    if isinstance(getattr(head, "norm", None), Standardize):
        raise ConfigError(
            "model.head.init needs input_norm 'layer' or 'none' (batch statistics differ "
            "between training and evaluation, so the fitted map would not be exact)"
        )
    wt, bt = torch.as_tensor(w.T).float(), torch.as_tensor(b).float()
    if isinstance(head, LinearHead):
        if head.proj.bias is None:
            raise ConfigError("model.head.init with a linear head needs model.head.bias=true")
        head.proj.weight.copy_(wt)
        head.proj.bias.copy_(bt)
    elif isinstance(head, MLPHead):
        head.shortcut.weight.copy_(wt)
        last = head.mlp[-1]
        assert isinstance(last, nn.Linear)
        last.weight.zero_()
        last.bias.copy_(bt)
    else:
        raise ConfigError(f"model.head.init: cannot initialise a {type(head).__name__}")


def _rescale(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> Affine:
    """Scale (W, b) so that the embeddings of rows ``x`` have root-mean-square norm 1."""
    rms = np.sqrt(((x @ w + b) ** 2).sum(1).mean())
    return w / max(rms, 1e-12), b / max(rms, 1e-12)


def init_heads_cca(
    model: Aligner,
    data: PairedData,
    pairs: list[tuple[str, str]],
    pca_dim: int | None = None,
    reg: float = 0.1,
) -> None:
    """Set every head of ``model`` from the train split (see the module docstring).

    Args:
        model: the aligner, heads untrained. data: its paired data (``train`` rows are used).
        pairs: the aligned pairs; the first is the anchor pair. pca_dim, reg: of the CCA.
    """
    rows = data.rows("train")
    feats = head_inputs(model, data, rows)
    have = {m: ~np.isnan(x).any(1) for m, x in feats.items()}
    a, b = pairs[0]
    both = have[a] & have[b]
    if both.sum() < 4:
        raise DataError(f"model.head.init: only {int(both.sum())} train rows have {a!r} and {b!r}")
    maps = dict(
        zip(
            (a, b),
            fit_cca_init(feats[a][both], feats[b][both], model.embed_dim, pca_dim, reg),
            strict=True,
        )
    )
    for m in (a, b):
        maps[m] = _rescale(feats[m][have[m]], *maps[m])
    # the shared target of an item: the mean of its anchor embeddings
    count = have[a].astype(float) + have[b]  # (N,) anchor modalities present
    total = sum(
        np.nan_to_num(feats[m] @ maps[m][0] + maps[m][1]) * have[m][:, None] for m in (a, b)
    )
    has_target = count > 0
    target = total / np.maximum(count, 1)[:, None]  # (N, dim)
    for m in model.modalities:
        if m in maps:
            continue
        ok = have[m] & has_target
        if ok.sum() < 4:
            log.warning(
                "model.head.init: %s shares %d train rows with %s/%s; left random",
                m,
                ok.sum(),
                a,
                b,
            )
            continue
        maps[m] = fit_ridge_init(feats[m][ok], target[ok], reg)
    with torch.no_grad():
        for m, (w, bias) in maps.items():
            set_head_affine(model.heads[m], w, bias)
    log.info("heads initialised by CCA of %s and %s on %d train pairs", a, b, int(both.sum()))
