"""Baselines: Procrustes and CCA recover planted linear alignments, are fitted on train only, and
beat random heads."""

from __future__ import annotations

import numpy as np

from modalign.eval.baselines import evaluate_baselines, fit_baselines


def synthetic(n: int = 400, seed: int = 0) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 8))
    feats = {
        "image": z @ rng.normal(size=(8, 40)) + 0.3 * rng.normal(size=(n, 40)),
        "text": z @ rng.normal(size=(8, 24)),
    }
    feats["text"][::7] = np.nan  # missing captions
    splits = ["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4)
    return feats, splits, [str(i) for i in range(n)]


def test_linear_baselines_beat_random_and_report_metric_keys() -> None:
    feats, splits, ids = synthetic()
    scores = evaluate_baselines(fit_baselines(feats, splits, ids, dims=(4, 8, 16)), "test")
    assert set(scores) == {"random", "procrustes", "cca"}
    for name in ("procrustes", "cca"):
        for key in ("test/image_to_text/recall@1", "test/text_to_image/recall@1"):
            assert scores[name][key] > scores["random"][key] + 0.3
    with_text = sum(
        1 for i, s in enumerate(splits) if s == "test" and not np.isnan(feats["text"][i, 0])
    )
    assert (
        scores["random"]["test/image_to_text/n_queries"] == with_text
    )  # images without a caption ask nothing


def test_only_train_rows_are_fitted() -> None:
    feats, splits, ids = synthetic()
    before = fit_baselines(feats, splits, ids, names=("cca",), dims=(8,))
    test = np.array(splits) == "test"
    changed = {m: x.copy() for m, x in feats.items()}
    changed["image"][test] = (
        np.random.default_rng(5).normal(size=changed["image"][test].shape) * 100
    )
    after = fit_baselines(changed, splits, ids, names=("cca",), dims=(8,))
    np.testing.assert_array_equal(
        before["cca"]["val"][0].embeddings["image"], after["cca"]["val"][0].embeddings["image"]
    )
