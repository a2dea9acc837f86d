"""Closed-form initialisation of the heads from the train pairs: regularised CCA, then training.

With few pairs (hundreds), contrastive training of heads over frozen features overfits within a
few epochs, while regularised canonical correlation analysis (CCA) solves the linear problem in
closed form with a shrinkage that small train sets need. ``model.head.init: cca`` starts the
heads *at* that solution; training then fine-tunes it contrastively, and early stopping (which
also scores the initial weights) keeps whichever is best on the val split.

* The objective's *anchor pair* (``modalign.losses.objectives``) gets the CCA:
  each side centred and PCA-reduced to ``init_pca_dim`` dimensions, covariances shrunk towards
  a multiple of the identity by ``init_reg`` (relative to their mean eigenvalue), the top
  ``embed_dim`` canonical directions weighted by their correlations (Hotelling, 1936; ridge
  CCA, Vinod, 1976). On its first (rank) columns this is exactly the ``cca`` baseline's map
  (``modalign.linalg.fit_cca_affine``).
* Every other modality is mapped into that space by ridge regression of its features onto the
  mean anchor embedding of the same items (train rows where both are present), with the
  shrinkage of ``RIDGE_GRID`` that retrieves best on val (``init_reg`` without val rows).
  A modality that shares another's head (``model.heads.<m>.share``) takes that head's map.

Heads are set to the affine map ``x -> x @ W + b`` (``b = -mean @ W``) on their normalised
input: a linear head needs ``head.bias: true``; an MLP head puts ``W`` in its linear shortcut
and ``b`` in the bias of its last layer, whose weights start at zero (so its non-linear branch
starts switched off, as in zero-initialised residual branches). Maps are rescaled so that train
embeddings have a root-mean-square norm of one (directions, hence normalised embeddings and
retrieval, are unchanged); columns past the CCA's rank start as small noise (``DEAD_COLUMN_SCALE``):
were they zero in every head, no gradient could ever reach them.

Initialisations are registered in ``HEAD_INITS`` (``model.head.init`` names one).

References:
    Hotelling, 1936, "Relations between two sets of variates"; Vinod, 1976, "Canonical ridge and
    econometrics of joint production"; Hoerl & Kennard, 1970, "Ridge regression".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from modalign.config import HeadConfig
from modalign.data.paired import PairedData, iterate_rows
from modalign.errors import ConfigError, DataError
from modalign.linalg import Affine, fit_cca_affine, fit_ridge
from modalign.model.aligner import Aligner
from modalign.model.heads import LinearHead, MLPHead, Standardize
from modalign.model.inference import to_device
from modalign.registry import Registry

log = logging.getLogger(__name__)

FitHeads = Callable[[Aligner, PairedData, tuple[str, str], HeadConfig], None]
"""``fit(model, data, anchor_pair, head_config)``: set the heads in place from the train split."""


@dataclass(frozen=True)
class HeadInit:
    """A registered head initialisation; ``fit`` is None for PyTorch's random start.

    A fitted start is scored on val as epoch 0, so training must beat it to replace it.
    """

    fit: FitHeads | None = None


HEAD_INITS: Registry[HeadInit] = Registry("head initialisation")
HEAD_INITS.register("random")(HeadInit())


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
    model: Aligner, data: PairedData, anchor: tuple[str, str], cfg: HeadConfig
) -> None:
    """Set every head of ``model`` from the train split (see the module docstring).

    Args:
        model: the aligner, heads untrained. data: its paired data (``train`` rows are fitted;
            ``val`` rows choose the ridge shrinkage of the modalities outside the anchor pair).
        anchor: the pair fitted by CCA; every other modality is regressed onto it.
        cfg: the head config (``init_pca_dim``, ``init_reg``).
    """
    _set_from_cca(model, data, anchor, cfg.init_pca_dim, cfg.init_reg, data.rows("train"))


def _set_from_cca(
    model: Aligner,
    data: PairedData,
    anchor: tuple[str, str],
    pca_dim: int | None,
    reg: float,
    rows: np.ndarray,
) -> None:
    feats = head_inputs(model, data, rows)
    have = {m: ~np.isnan(x).any(1) for m, x in feats.items()}
    a, b = anchor
    if model.head_owner(a) != a or model.head_owner(b) != b:
        raise ConfigError(f"model.head.init: the anchor pair {a}/{b} needs heads of its own")
    both = have[a] & have[b]
    if both.sum() < 4:
        raise DataError(f"model.head.init: only {int(both.sum())} train rows have {a!r} and {b!r}")
    fitted = fit_cca_affine(feats[a][both], feats[b][both], model.embed_dim, pca_dim, reg)
    maps = {m: _rescale(feats[m][have[m]], *fit) for m, fit in zip((a, b), fitted, strict=True)}
    owners = [m for m in model.modalities if model.head_owner(m) == m]  # sharers take theirs
    val = _val_targets(model, data, maps)
    maps.update(_regress_others(owners, feats, have, maps, reg, val))
    maps = _wake_dead_columns(maps)
    with torch.no_grad():
        for m, (w, bias) in maps.items():
            set_head_affine(model.heads[m], w, bias)
    log.info(
        "heads initialised by CCA of %s and %s on %d train pairs (PCA %s, shrinkage %g)",
        a, b, int(both.sum()), pca_dim or "full", reg,
    )  # fmt: skip


#: Columns past the CCA's rank start at this fraction of the live columns' scale rather than at
#: zero: a column that is zero in every head never gets a gradient (each embedding's component
#: and its derivative vanish together), so training could never use that dimension.
DEAD_COLUMN_SCALE = 1e-3


def _wake_dead_columns(maps: dict[str, Affine]) -> dict[str, Affine]:
    """``maps`` with the columns that are zero in every map set to small seeded noise."""
    dead = np.all([np.all(w == 0, axis=0) & (b == 0) for w, b in maps.values()], axis=0)  # (dim,)
    if not dead.any() or dead.all():
        return maps
    rng = np.random.default_rng(0)
    out = {}
    for m, (w, b) in maps.items():
        w = w.copy()
        scale = DEAD_COLUMN_SCALE * np.sqrt(np.mean(w[:, ~dead] ** 2))
        w[:, dead] = rng.normal(0.0, scale, (w.shape[0], int(dead.sum())))
        out[m] = (w, b)
    return out


#: PCA widths and shrinkages the ``auto`` start searches on val (those of the CCA baseline).
AUTO_GRID = ((16, 32, 64, 128, 256, 384), (0.1, 0.3, 1.0))
#: The ``auto`` start fits on at most this many train rows (a seeded sample beyond).
AUTO_MAX_ROWS = 20_000


def init_heads_auto(
    model: Aligner, data: PairedData, anchor: tuple[str, str], cfg: HeadConfig
) -> None:
    """The CCA start with its PCA width and shrinkage chosen on val (the CCA baseline's grid),
    when every modality's head reads cached features and can hold an affine map; otherwise
    PyTorch's random start (the start scored on val as epoch 0 either way)."""
    if not _affine_start_fits(model):
        log.info("model.head.init auto: a raw encoder or a head without bias: random start")
        return
    rows = data.rows("train")
    if len(rows) > AUTO_MAX_ROWS:
        rows = np.sort(np.random.default_rng(0).choice(rows, AUTO_MAX_ROWS, replace=False))
    pca_dim, reg = _tune_cca(model, data, anchor, rows)
    _set_from_cca(model, data, anchor, pca_dim, reg, rows)


def _affine_start_fits(model: Aligner) -> bool:
    for m in model.modalities:
        head, encoder = model.heads[m], model.encoders[m]
        if getattr(encoder, "input_kind", "features") != "features":
            return False
        if isinstance(getattr(head, "norm", None), Standardize):
            return False
        if isinstance(head, LinearHead) and head.proj.bias is None:
            return False
    return True


def _tune_cca(
    model: Aligner, data: PairedData, anchor: tuple[str, str], rows: np.ndarray
) -> tuple[int | None, float]:
    """The (PCA width, shrinkage) of the grid with the best mean val recall@1 of the anchor pair
    (the first grid point without a val split)."""

    a, b = anchor
    train, val = head_inputs(model, data, rows), head_inputs(model, data, data.rows("val"))
    pick = {name: ~np.isnan(x[:, 0]) for name, x in val.items()}
    ok_t = ~np.isnan(train[a][:, 0]) & ~np.isnan(train[b][:, 0])
    ok_v = pick.get(a, np.zeros(0, bool)) & pick.get(b, np.zeros(0, bool))
    dims, regs = AUTO_GRID
    if ok_v.sum() < 4:
        return dims[-1], regs[-1]
    groups = (
        data.manifest.groups[data.rows("val")][ok_v]
        if data.manifest.groups is not None
        else np.flatnonzero(ok_v)
    )
    best, best_score = (dims[0], regs[0]), -1.0
    for k in dims:
        for reg in regs:
            (wa, ba), (wb, bb) = fit_cca_affine(
                train[a][ok_t], train[b][ok_t], model.embed_dim, k, reg
            )
            score = mean_recall_at_1(val[a][ok_v] @ wa + ba, val[b][ok_v] @ wb + bb, groups)
            if score > best_score:
                best, best_score = (k, reg), float(score)
    return best


HEAD_INITS.register("cca")(HeadInit(init_heads_cca))
HEAD_INITS.register("auto")(HeadInit(init_heads_auto))


#: Ridge shrinkages searched on val for the maps of the modalities outside the anchor pair.
RIDGE_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass(frozen=True)
class _ValTargets:
    """Val rows' head inputs, which are present, the anchor target of each row, and groups."""

    feats: dict[str, np.ndarray]
    have: dict[str, np.ndarray]
    target: np.ndarray  # (N, dim), NaN where no anchor modality is present
    groups: np.ndarray


def _anchor_target(
    feats: dict[str, np.ndarray], have: dict[str, np.ndarray], anchor_maps: dict[str, Affine]
) -> np.ndarray:
    """The mean anchor embedding of each row (N, dim); NaN rows where neither anchor is present."""
    count = sum(have[m].astype(float) for m in anchor_maps)  # (N,) anchor modalities present
    total = sum(
        np.nan_to_num(feats[m] @ w + bias) * have[m][:, None]
        for m, (w, bias) in anchor_maps.items()
    )
    target = total / np.maximum(count, 1)[:, None]
    target[count == 0] = np.nan
    return target


def _val_targets(
    model: Aligner, data: PairedData, anchor_maps: dict[str, Affine]
) -> _ValTargets | None:
    """The val split's head inputs and anchor targets (None without val rows of an anchor)."""
    rows = data.rows("val")
    feats = head_inputs(model, data, rows) if len(rows) else {}
    if not any(m in feats for m in anchor_maps):
        return None
    for m, (w, _) in anchor_maps.items():  # an anchor no val row has: all missing
        feats.setdefault(m, np.full((len(rows), w.shape[0]), np.nan))
    have = {m: ~np.isnan(x).any(1) for m, x in feats.items()}
    groups = data.manifest.groups[rows] if data.manifest.groups is not None else rows
    return _ValTargets(feats, have, _anchor_target(feats, have, anchor_maps), np.asarray(groups))


def mean_recall_at_1(ea: np.ndarray, eb: np.ndarray, groups: np.ndarray) -> float:
    """Recall@1 of paired rows ``ea`` (N, D) and ``eb`` (N, D) by cosine, averaged over both
    directions (rows of one group are positives of each other).

    Example:
        >>> x = np.eye(3)
        >>> mean_recall_at_1(x, x + 0.1, np.arange(3))
        1.0
    """
    from modalign.eval.retrieval import retrieval_metrics

    unit = [
        (e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        for e in (ea, eb)
    ]
    return float(np.mean([
        retrieval_metrics(q, g, groups, groups, ks=(1,))["recall@1"]
        for q, g in ((unit[0], unit[1]), (unit[1], unit[0]))
    ]))  # fmt: skip


def _ridge_score(fit: Affine, m: str, val: _ValTargets) -> float:
    """Mean val recall@1 of ``m``'s ridge embedding and the anchor target, both directions."""
    ok = val.have[m] & ~np.isnan(val.target[:, 0])
    return mean_recall_at_1(val.feats[m][ok] @ fit[0] + fit[1], val.target[ok], val.groups[ok])


def _regress_others(
    modalities: list[str],
    feats: dict[str, np.ndarray],
    have: dict[str, np.ndarray],
    anchor_maps: dict[str, Affine],
    reg: float,
    val: _ValTargets | None = None,
) -> dict[str, Affine]:
    """Ridge maps of every non-anchor modality onto the mean anchor embedding of its items.

    The shrinkage is ``reg``, or, where ``val`` has at least 8 rows of the modality and an anchor,
    the one of ``RIDGE_GRID`` with the best val recall@1 (as the baselines tune theirs).
    """
    target = _anchor_target(feats, have, anchor_maps)
    out = {}
    for m in modalities:
        if m in anchor_maps:
            continue
        ok = have[m] & ~np.isnan(target[:, 0])
        if ok.sum() < 4:
            log.warning(
                "model.head.init: %s shares %d train rows with %s; left random",
                m, ok.sum(), "/".join(anchor_maps),
            )  # fmt: skip
            continue
        tunable = val is not None and m in val.have
        if tunable and (val.have[m] & ~np.isnan(val.target[:, 0])).sum() >= 8:  # type: ignore[union-attr]
            fits = {r: fit_ridge(feats[m][ok], target[ok], r) for r in RIDGE_GRID}
            reg_m = max(fits, key=lambda r: _ridge_score(fits[r], m, val))  # type: ignore[arg-type]
            log.info("model.head.init: %s ridge shrinkage %g (chosen on val)", m, reg_m)
            out[m] = fits[reg_m]
        else:
            out[m] = fit_ridge(feats[m][ok], target[ok], reg)
    return out
