"""`modalign index build/add/remove` through a trained run, then `modalign search --id`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import synthetic_config

from modalign.cli import main
from modalign.index.store import Index
from modalign.model.load import load
from modalign.train.loop import fit


def test_build_add_remove_and_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = synthetic_config(tmp_path / "data", ["train.epochs=1"], n=240)
    fit(cfg, tmp_path / "run")
    data = tmp_path / "data"
    frame = pd.read_csv(data / "pairs.csv", dtype=str, keep_default_na=False)
    frame.iloc[:150].to_csv(tmp_path / "first.csv", index=False)
    frame.iloc[150:].to_csv(tmp_path / "more.csv", index=False)
    feats = [f"--features={m}={data / (m + '.npy')}" for m in ("image", "text")]
    out = tmp_path / "idx"
    assert main(["index", "build", str(tmp_path / "run"), "--manifest", str(tmp_path / "first.csv"),
                 "--out", str(out), "--chunk", "64", *feats]) == 0  # fmt: skip
    assert main(["index", "add", str(out), "--manifest", str(tmp_path / "more.csv"), *feats]) == 0
    index = Index.load(out)
    assert len(index) == 480 and index.model_id == load(tmp_path / "run").model_id
    # the indexed vector of an item is the model's embedding of its features
    model = load(tmp_path / "run")
    x = np.load(data / "image.npy")[:1]
    np.testing.assert_allclose(index.vector("r0:image"), model.encode("image", x)[0], atol=1e-6)
    capsys.readouterr()
    assert (
        main(["search", str(out), "--id", "r0:image", "--modality", "text", "--k", "3", "--json"])
        == 0
    )
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 3 and all(h["modality"] == "text" for h in hits)
    assert main(["index", "remove", str(out), "--ids", "r0:text", "r1:text"]) == 0
    assert len(Index.load(out)) == 478
    assert main(["index", "build", str(tmp_path / "run"), "--manifest", str(tmp_path / "first.csv"),
                 "--out", str(out), *feats]) == 1  # fmt: skip
    assert "already holds an index" in capsys.readouterr().err
