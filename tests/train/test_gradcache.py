"""Gradient caching: parameter gradients equal the full batch's, dropout masks replayed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modalign.losses.engine import pair_loss
from modalign.train.gradcache import capture_rng, gradcache_step, replay_rng

MODALITIES = {"image": 7, "text": 5, "audio": 4}


class Encoders(nn.Module):
    """One small MLP with dropout per modality, and a learnable scale used by the loss."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.nets = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Linear(k, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 8))
                for m, k in MODALITIES.items()
            }
        )
        self.log_scale = nn.Parameter(torch.tensor(2.0))

    def encode(self, chunk: dict[str, Tensor]) -> dict[str, Tensor]:
        return {m: F.normalize(self.nets[m](v), dim=1) for m, v in chunk.items() if m != "ids"}


def _batch(n: int = 40) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Features and a presence mask per modality: some rows lack some modalities."""
    g = torch.Generator().manual_seed(0)
    feats = {m: torch.randn(n, k, generator=g) for m, k in MODALITIES.items()}
    present = {m: torch.rand(n, generator=g) > 0.3 for m in MODALITIES}
    present["image"][:] = True
    return feats, present


def _chunks(
    feats: dict[str, Tensor], present: dict[str, Tensor], size: int
) -> list[dict[str, Tensor]]:
    n = len(next(iter(feats.values())))
    out = []
    for s in range(0, n, size):
        ids = torch.arange(s, min(s + size, n))
        chunk = {m: feats[m][ids][present[m][ids]] for m in feats if present[m][ids].any()}
        out.append({**chunk, "ids": ids})
    return out


def _row_ids(chunks: list[dict[str, Tensor]], present: dict[str, Tensor]) -> dict[str, Tensor]:
    """Batch row of every embedding, in the order gradcache_step concatenates them."""
    return {
        m: torch.cat([c["ids"][present[m][c["ids"]]] for c in chunks if m in c]) for m in MODALITIES
    }


def _loss_fn(model: Encoders, rows: dict[str, Tensor]):  # type: ignore[no-untyped-def]
    """Mean over modality pairs of InfoNCE over the rows that have both."""

    def loss(emb: dict[str, Tensor]) -> Tensor:
        scale = model.log_scale.exp()
        out = []
        for a, b in (("image", "text"), ("image", "audio"), ("text", "audio")):
            both = torch.isin(rows[a], rows[b])
            ia, ib = both.nonzero().squeeze(1), torch.isin(rows[b], rows[a]).nonzero().squeeze(1)
            out.append(pair_loss("infonce", emb[a][ia], emb[b][ib], scale, tile_size=8))
        return torch.stack(out).mean()

    return loss


def _grads(model: nn.Module) -> list[Tensor]:
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def _assert_rel_close(got: list[Tensor], ref: list[Tensor], rel: float) -> None:
    for a, b in zip(got, ref, strict=True):
        assert (a - b).norm() <= rel * b.norm(), (a - b).norm() / b.norm()


def test_matches_full_batch_with_dropout_replayed() -> None:
    """Reference: the same chunks encoded *with* a graph in one pass, so dropout draws the same."""
    model = Encoders(dropout=0.3)
    feats, present = _batch()
    chunks = _chunks(feats, present, size=12)
    loss_fn = _loss_fn(model, _row_ids(chunks, present))

    torch.manual_seed(123)
    outs = [model.encode(c) for c in chunks]
    emb = {m: torch.cat([o[m] for o in outs if m in o]) for m in MODALITIES}
    ref_loss = loss_fn(emb)
    ref_loss.backward()
    ref_grads, ref_rng = _grads(model), torch.get_rng_state()

    torch.manual_seed(123)
    loss = gradcache_step(model.encode, chunks, loss_fn)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-6, atol=0)
    _assert_rel_close(_grads(model), ref_grads, rel=1e-5)
    assert torch.equal(torch.get_rng_state(), ref_rng)  # generators end where one pass leaves them


def test_matches_single_forward_without_dropout() -> None:
    model = Encoders(dropout=0.0)
    feats, present = _batch()
    chunks = _chunks(feats, present, size=7)
    loss_fn = _loss_fn(model, _row_ids(chunks, present))
    full = model.encode({m: feats[m][present[m]] for m in MODALITIES})  # rows in batch order
    ref_loss = loss_fn(full)
    ref_loss.backward()
    ref_grads = _grads(model)
    loss = gradcache_step(model.encode, chunks, loss_fn)
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-6, atol=0)
    _assert_rel_close(_grads(model), ref_grads, rel=1e-5)


def test_unused_outputs_and_frozen_chunks_are_skipped() -> None:
    enc = nn.Linear(3, 2)
    frozen = torch.randn(4, 2)
    chunks = [torch.randn(4, 3), torch.randn(4, 3)]

    def encode(c: Tensor) -> dict[str, Tensor]:
        return {"a": enc(c), "unused": enc(c) * 2, "frozen": frozen}

    loss = gradcache_step(encode, chunks, lambda e: (e["a"] * e["frozen"]).sum())
    ref = sum((enc(c) * frozen).sum() for c in chunks)
    assert isinstance(ref, Tensor)
    torch.testing.assert_close(loss, ref.detach())


def test_replay_rng_restores_the_current_state() -> None:
    state = capture_rng()
    first = torch.rand(3)
    after = torch.get_rng_state()
    with replay_rng(state):
        assert torch.equal(torch.rand(3), first)
    assert torch.equal(torch.get_rng_state(), after)
