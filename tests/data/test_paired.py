from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modalign.config import load_config
from modalign.errors import ConfigError, DataError
from modalign.features.store import write_features
from modalign.pipeline import build_parts


def write_case(tmp_path: Path, n: int = 40, text_rows: np.ndarray | None = None) -> list[str]:
    """A manifest over n rows with image/text features; returns the base overrides."""
    rng = np.random.default_rng(0)
    ids = [f"i{i}" for i in range(n)]
    write_features(
        tmp_path / "image.npy",
        [f"img{i}" for i in range(n)],
        rng.standard_normal((n, 6)).astype(np.float32),
    )
    text = rng.standard_normal((n, 4)).astype(np.float32) if text_rows is None else text_rows
    write_features(tmp_path / "text.npy", [f"txt{i}" for i in range(n)], text)
    pd.DataFrame(
        {
            "id": ids,
            "image": [f"img{i}" for i in range(n)],
            "text": [f"txt{i}" for i in range(n)],
            "split": ["train"] * (n - 10) + ["val"] * 5 + ["test"] * 5,
        }
    ).to_csv(tmp_path / "m.csv", index=False)
    return [
        f"data.manifest={tmp_path / 'm.csv'}",
        f"data.features.image={tmp_path / 'image.npy'}",
        f"data.features.text={tmp_path / 'text.npy'}",
        "data.min_rows=4",
    ]


def test_builds_and_batches_with_missing_cells(tmp_path: Path) -> None:
    base = write_case(tmp_path)
    frame = pd.read_csv(tmp_path / "m.csv", dtype=str, keep_default_na=False)
    frame.loc[3, "text"] = ""
    frame.to_csv(tmp_path / "m.csv", index=False)
    parts = build_parts(load_config(None, base))
    batch = parts.data.batch([2, 3, 4])
    assert batch.present["text"].tolist() == [True, False, True]
    assert batch.inputs["image"].shape == (3, 6) and batch.inputs["text"].shape == (2, 4)
    assert parts.objective.plan(batch.present) == [("image", "text")]
    assert len(parts.data.rows("train")) == 30


def test_nan_features_name_row_and_field_and_can_be_skipped(tmp_path: Path) -> None:
    text = np.random.default_rng(1).standard_normal((40, 4)).astype(np.float32)
    text[7, 2] = np.nan
    text[9, 0] = np.inf
    base = write_case(tmp_path, text_rows=text)
    with pytest.raises(
        DataError,
        match=r"m\.csv, row 8 \(id 'i7'\): field 'text': features of 'txt7' in .*text\.npy contain NaN or inf",
    ):
        build_parts(load_config(None, base))
    parts = build_parts(load_config(None, [*base, "data.skip_bad_rows=true"]))
    assert parts.data.skipped.reasons.keys() == {"i7", "i9"}
    assert 7 not in parts.data.rows("train") and len(parts.data.rows("train")) == 28
    assert "skipped 2 bad row(s): i7, i9" in parts.data.skipped.summary()


def test_id_without_features(tmp_path: Path) -> None:
    base = write_case(tmp_path)
    frame = pd.read_csv(tmp_path / "m.csv", dtype=str)
    frame.loc[5, "image"] = "img999"
    frame.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(
        DataError, match=r"row 6 \(id 'i5'\): field 'image': no features for 'img999'"
    ):
        build_parts(load_config(None, base))


def test_empty_train_split_and_too_few_rows(tmp_path: Path) -> None:
    base = write_case(tmp_path)
    frame = pd.read_csv(tmp_path / "m.csv", dtype=str)
    frame["split"] = "test"
    frame.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match="the train split is empty"):
        build_parts(load_config(None, base))
    base = write_case(tmp_path)
    with pytest.raises(
        DataError, match=r"modality 'image' has 30 train row\(s\), fewer than data\.min_rows=100"
    ):
        build_parts(load_config(None, [*base, "data.min_rows=100"]))


def test_config_mistakes(tmp_path: Path) -> None:
    base = write_case(tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"loss\.name 'triplet' is unknown; known: debiased, hn_nce, infonce, siglip",
    ):
        build_parts(load_config(None, [*base, "loss.name=triplet"]))
    with pytest.raises(ConfigError, match=r"model\.encoders\.image\.name 'vit' is unknown"):
        build_parts(load_config(None, [*base, "model.encoders.image.name=vit"]))
    with pytest.raises(DataError, match=r"data\.features has no entry"):
        build_parts(load_config(None, [base[0], base[1], "data.min_rows=4"]))
    with pytest.raises(ConfigError, match=r"loss\.pairs names 'audio'"):
        build_parts(load_config(None, [*base, "loss.pairs=[[image, audio]]"]))
