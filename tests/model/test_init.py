"""CCA initialisation of the heads: exact against the baseline's CCA, ridge against numpy, loop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import synthetic_config

from modalign.errors import ConfigError
from modalign.linalg import fit_cca_affine
from modalign.model.heads import LinearHead, MLPHead
from modalign.model.init import set_head_affine
from modalign.train.loop import Trainer, fit


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_heads_compute_the_affine_map() -> None:
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(6, 4)), rng.normal(size=4)
    x = torch.randn(5, 6)
    for head in (LinearHead(6, 4, bias=True), MLPHead(6, 4, hidden_dim=8, input_norm="none")):
        with torch.no_grad():
            set_head_affine(head, w, b)
        out = head.eval()(x).detach().numpy()
        np.testing.assert_allclose(out, x.numpy() @ w + b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match=r"head\.bias"):
        set_head_affine(LinearHead(6, 4), w, b)
    with pytest.raises(ConfigError, match="input_norm"):
        set_head_affine(LinearHead(6, 4, bias=True, input_norm="batch"), w, b)


INIT = [
    "model.head.kind=linear",
    "model.head.bias=true",
    "model.head.init=cca",
    "model.head.init_reg=0.5",
]


def test_initial_heads_are_the_cca_of_the_train_pairs(tmp_path: Path) -> None:
    cfg = synthetic_config(
        tmp_path / "data", [*INIT, "train.epochs=0"], n=300, dims={"image": 24, "text": 16}
    )
    trainer = Trainer(cfg, tmp_path / "run")
    data = trainer.parts.data
    rows = data.rows("train")
    feats = {
        m: trainer.parts.stores[m].rows([data.keys[m][r] for r in rows]) for m in ("image", "text")
    }
    (wa, ba), _ = fit_cca_affine(feats["image"], feats["text"], 32, None, 0.5)
    with torch.no_grad():
        out = trainer.model.encode("image", torch.as_tensor(feats["image"])).numpy()
    ref = _unit(feats["image"] @ wa + ba)  # (N, 32), zero past the CCA's rank (16)
    np.testing.assert_allclose(out[:, :16], ref[:, :16], atol=1e-4)
    assert np.abs(out[:, 16:]).max() < 1e-2  # small noise there, so that training can use it


def test_training_from_cca_scores_the_init_as_epoch_0(tmp_path: Path) -> None:
    cfg = synthetic_config(
        tmp_path / "data",
        [*INIT, "train.epochs=2", "train.early_stopping.metric=recall@1"],
        n=900,
        dims={"image": 24, "text": 16, "audio": 12},
        missing=0.3,
        groups=300,
        noise=0.3,
    )
    metrics = fit(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert records[0]["epoch"] == 0 and "val/image_to_text/recall@1" in records[0]
    for d in ("image_to_text", "audio_to_image", "text_to_audio"):  # audio: ridge-mapped
        assert metrics[f"test/{d}/recall@5"] > 0.3, d


def test_auto_start_is_the_val_tuned_cca_baseline(tmp_path: Path) -> None:
    from modalign.eval.baselines import fit_baselines

    cfg = synthetic_config(
        tmp_path / "data",
        [
            "model.head.init=auto",
            "model.head.kind=linear",
            "model.head.bias=true",
            "model.embed_dim=32",
            "train.epochs=0",
        ],
        n=400,
        dims={"image": 40, "text": 24},
        noise=1.0,
    )
    trainer = Trainer(cfg, tmp_path / "run")
    data = trainer.parts.data
    features = {m: data.feature_matrix(m) for m in ("image", "text")}
    ref = fit_baselines(features, data.split_names(), data.manifest.ids, names=("cca",))
    val = ref["cca"]["val"][0]  # the baseline's embeddings of the val rows, its own tuning
    rows = data.rows("val")
    with torch.no_grad():
        for m in ("image", "text"):
            out = trainer.model.encode(m, torch.as_tensor(features[m][rows])).numpy()
            width = val.embeddings[m].shape[1]  # the baseline's canonical directions
            np.testing.assert_allclose(out[:, :width], val.embeddings[m], atol=1e-4)
            tail = out[:, width:]  # past the CCA's rank: small, but not zero (see the next test)
            assert np.abs(tail).max() < 1e-2 and np.abs(tail).max() > 0


def test_auto_start_keeps_random_heads_where_an_affine_start_cannot_be_set(tmp_path: Path) -> None:
    cfg = synthetic_config(
        tmp_path / "data",
        ["model.head.init=auto", "model.head.kind=linear", "train.epochs=0"],  # no bias
        n=200,
    )
    torch.manual_seed(0)
    trainer = Trainer(cfg, tmp_path / "run")
    untouched = Trainer(cfg, tmp_path / "run2")  # the same seed: the same random heads
    for m in ("image", "text"):
        torch.testing.assert_close(
            trainer.model.heads[m].proj.weight, untouched.model.heads[m].proj.weight
        )


def test_other_modalities_take_the_ridge_shrinkage_best_on_val() -> None:
    from modalign.linalg import fit_ridge
    from modalign.model.init import RIDGE_GRID, _anchor_target, _regress_others, _ValTargets

    rng = np.random.default_rng(0)
    latent = rng.standard_normal((260, 8))
    a = latent + 0.3 * rng.standard_normal((260, 8))
    m = latent @ rng.standard_normal((8, 40)) + 2.0 * rng.standard_normal((260, 40))
    train, val = slice(0, 200), slice(200, 260)
    maps = {"a": (np.eye(8), np.zeros(8))}
    feats = {"a": a[train], "m": m[train]}
    have = {k: np.ones(200, bool) for k in feats}
    vf = {"a": a[val], "m": m[val]}
    vh = {k: np.ones(60, bool) for k in vf}
    val_t = _ValTargets(vf, vh, _anchor_target(vf, vh, maps), np.arange(60))
    got = _regress_others(["a", "m"], feats, have, maps, 1.0, val_t)["m"]

    def recall(q: np.ndarray, g: np.ndarray) -> float:  # plain numpy: row i's match is row i
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        return float((np.argmax(q @ g.T, 1) == np.arange(len(q))).mean())

    scores = {}
    for r in RIDGE_GRID:
        w, b = fit_ridge(m[train], a[train], r)
        e = m[val] @ w + b
        scores[r] = (recall(e, a[val]) + recall(a[val], e)) / 2
    best = max(RIDGE_GRID, key=lambda r: scores[r])  # first of equals, as max() keeps it
    want = fit_ridge(m[train], a[train], best)
    np.testing.assert_allclose(got[0], want[0])
    assert len(set(scores.values())) > 1  # the grid matters on this data


def test_dimensions_past_the_cca_rank_learn(tmp_path: Path) -> None:
    """Were the columns past the CCA's rank zero in both heads, they would never get a gradient."""
    cfg = synthetic_config(
        tmp_path / "data", [*INIT, "train.epochs=1"], n=300, dims={"image": 24, "text": 8}
    )  # rank 8 < embed_dim 32
    trainer = Trainer(cfg, tmp_path / "run")
    dead = slice(8, 32)
    before = {
        m: trainer.model.heads[m].proj.weight[dead].detach().clone() for m in ("image", "text")
    }
    assert all(b.abs().max() > 0 for b in before.values())
    data = trainer.parts.data
    rows = data.rows("train")[:64]
    feats = {m: torch.as_tensor(data.feature_matrix(m)[rows]) for m in ("image", "text")}
    emb = trainer.model(feats)
    loss = torch.nn.functional.cross_entropy(20 * emb["image"] @ emb["text"].T, torch.arange(64))
    loss.backward()
    for m in ("image", "text"):
        assert trainer.model.heads[m].proj.weight.grad[dead].abs().max() > 0, m
