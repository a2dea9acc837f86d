"""The cross-validation benchmark's fold assignment and its summary (benchmarks/bench_tuxpaint_cv.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).parents[1] / "benchmarks" / "bench_tuxpaint_cv.py"
_spec = importlib.util.spec_from_file_location("bench_tuxpaint_cv", _PATH)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_each_group_is_held_out_exactly_once_and_never_split() -> None:
    rng = np.random.default_rng(0)
    groups = [f"g{int(i)}" for i in rng.integers(0, 120, size=500)]
    held_out = {g: 0 for g in groups}
    for i in range(5):
        splits = bench.fold_splits(groups, 5, i, seed=3)
        for g in set(groups):  # a caption group never straddles two splits
            assert len({s for s, h in zip(splits, groups, strict=True) if h == g}) == 1
        for g in {h for s, h in zip(splits, groups, strict=True) if s == "test"}:
            held_out[g] += 1
        share = np.mean(splits == "val") / np.mean(splits != "test")
        assert 0.03 < share < 0.25  # about 11% of the non-held-out groups validate
    assert set(held_out.values()) == {1}
    assert (bench.fold_splits(groups, 5, 2, seed=3) == bench.fold_splits(groups, 5, 2, 3)).all()
    assert not (bench.fold_splits(groups, 5, 2, seed=3) == bench.fold_splits(groups, 5, 2, 4)).all()


def test_summary_against_a_hand_table() -> None:
    def fold(model: float, cca: float) -> dict[str, dict[str, float]]:
        keys = ["test/image_to_caption/recall@1", "test/caption_to_image/recall@1"]
        return {"model": dict.fromkeys(keys, model), "cca": dict.fromkeys(keys, cca)}

    # differences 0.1, 0.0, -0.05: mean 0.0167, sample sd 0.0764, se 0.0441
    out = bench.summarise("r", [fold(0.5, 0.4), fold(0.3, 0.3), fold(0.2, 0.25)])
    d = "image_to_caption"
    assert out["folds"] == 3
    assert out[f"{d}/model"] == pytest.approx(0.3333, abs=1e-4)
    assert out[f"{d}/cca"] == pytest.approx(0.3167, abs=1e-4)
    assert out[f"{d}/model-cca"] == pytest.approx(0.0167, abs=1e-4)
    assert out[f"{d}/model-cca/se"] == pytest.approx(0.0441, abs=1e-4)
    assert out[f"{d}/model-cca/win-tie-loss"] == [1, 1, 1]


def test_a_fold_trains_the_packaged_recipe_and_scores_the_baselines(tmp_path: Path) -> None:
    import pandas as pd

    from modalign.data.synthetic import write_synthetic_dataset

    dims = {"image": 24, "caption": 16, "sound": 12, "description": 16}
    manifest = write_synthetic_dataset(tmp_path, n=400, dims=dims, groups=200, missing=0.3)
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    frame["split"] = bench.fold_splits(frame["group"].tolist(), 4, 0, seed=1, val_share=0.2)
    frame.to_csv(manifest, index=False)
    fold = bench.run_fold(
        manifest,
        tmp_path,
        ["train.epochs=1", "data.min_rows=2"],
        tmp_path / "work",
        tmp_path / "b.json",
    )
    assert {"model", "random", "procrustes", "cca"} <= set(fold)
    assert (tmp_path / "b.json").exists()  # baselines cached for the next recipe
    summary = bench.summarise("demo", [fold, fold])
    assert "sound_to_description/bar_margin" in summary
