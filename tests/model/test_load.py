"""A run folder is a model: it loads after its data is gone, and encode + eval equals eval RUN."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import synthetic_config

from modalign.cli import main
from modalign.errors import DataError
from modalign.features.store import FeatureStore
from modalign.model.inference import embed_split, load_run
from modalign.model.load import load
from modalign.train.loop import fit
from modalign.types import Direction, MetricKey


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small trained run over synthetic features: (run folder, data folder)."""
    root = tmp_path_factory.mktemp("load")
    cfg = synthetic_config(root / "data", ["train.epochs=2"], n=400, groups=150)
    fit(cfg, root / "run")
    return root / "run", root / "data"


def test_loads_after_moving_the_run_and_deleting_its_data(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    run, data = trained
    _, ref_model, ref_data = load_run(run)
    ref = embed_split(ref_model, ref_data, "test")
    rows = ref_data.rows("test")
    feats = {m: FeatureStore.open(data / f"{m}.npy") for m in ("image", "text")}
    inputs = {m: feats[m].rows([ref_data.keys[m][r] for r in rows]) for m in feats}
    moved = tmp_path / "elsewhere"
    shutil.copytree(run, moved)
    shutil.copytree(data, tmp_path / "data-backup")
    shutil.rmtree(data)
    try:
        model = load(moved)
        assert model.modalities == ["image", "text"] and model.input_kind("image") == "array"
        for m in ("image", "text"):
            np.testing.assert_allclose(model.encode(m, inputs[m]), ref.embeddings[m], atol=1e-6)
        with pytest.raises(DataError, match=r"trained on features you supplied"):
            model.encode("text", ["a tiger"])
        with pytest.raises(DataError, match=r"takes \(N, 32\) features"):
            model.encode("text", np.zeros((2, 5), dtype=np.float32))
        with pytest.raises(DataError, match=r"no modality 'sound'"):
            model.encode("sound", np.zeros((2, 5), dtype=np.float32))
    finally:
        shutil.copytree(tmp_path / "data-backup", data)


def test_model_id_is_the_hash_of_the_weights(trained: tuple[Path, Path]) -> None:
    run, _ = trained
    card = json.loads((run / "model.json").read_text())
    assert load(run).model_id == card["model_id"] and len(card["model_id"]) == 32


def test_encode_then_eval_embeddings_equals_eval_of_the_run(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, data = trained
    frame = pd.read_csv(data / "pairs.csv", dtype=str, keep_default_na=False)
    _, _, paired = load_run(run)
    test = frame.iloc[paired.rows("test")]
    test.to_csv(tmp_path / "test.csv", index=False)
    feats = [f"--features={m}={data / (m + '.npy')}" for m in ("image", "text")]
    assert main(["encode", str(run), "--manifest", str(tmp_path / "test.csv"),
                 "--out", str(tmp_path / "emb.npz"), *feats]) == 0  # fmt: skip
    assert main(["eval", "--embeddings", str(tmp_path / "emb.npz"), "--out",
                 str(tmp_path / "judged"), "--bootstrap", "0", "--no-report"]) == 0  # fmt: skip
    assert main(["eval", str(run), "--splits", "test", "--bootstrap", "0", "--no-report"]) == 0
    capsys.readouterr()
    encoded = json.loads((tmp_path / "judged" / "metrics.json").read_text())
    direct = json.loads((run / "metrics.json").read_text())
    compared = 0
    for key, value in direct.items():
        parsed = MetricKey.parse(key)
        if parsed.split == "test" and isinstance(parsed.subject, Direction):
            other = dataclasses.replace(parsed, split="all").flatten()
            assert encoded[other] == pytest.approx(value, abs=1e-6), key
            compared += 1
    assert compared >= 20
