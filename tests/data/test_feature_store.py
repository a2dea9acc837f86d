import json
from pathlib import Path

import numpy as np
import pytest

from modalign.data.feature_store import FeatureStore, write_features
from modalign.errors import DataError


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_round_trip_and_lookup(tmp_path: Path, suffix: str) -> None:
    features = np.arange(12, dtype=np.float32).reshape(4, 3)
    path = tmp_path / f"f{suffix}"
    write_features(path, ["a", "b", "c", "d"], features)
    store = FeatureStore.open(path)
    assert store.dim == 3 and len(store) == 4
    np.testing.assert_array_equal(store.rows(["d", "a", "c"]), features[[3, 0, 2]])
    with pytest.raises(DataError, match="no features for id 'z'"):
        store.rows(["z"])


def test_npy_is_memory_mapped(tmp_path: Path) -> None:
    write_features(tmp_path / "f.npy", ["a"], np.ones((1, 2), np.float32))
    assert isinstance(FeatureStore.open(tmp_path / "f.npy").array, np.memmap)


def test_bad_stores(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.ones((2, 3), np.float32))
    with pytest.raises(DataError, match=r"ids file f\.ids\.json not found"):
        FeatureStore.open(tmp_path / "f.npy")
    (tmp_path / "f.ids.json").write_text(json.dumps(["a", "a"]))
    with pytest.raises(DataError, match="duplicate id 'a'"):
        FeatureStore.open(tmp_path / "f.npy")
    (tmp_path / "f.ids.json").write_text(json.dumps(["a", "b", "c"]))
    with pytest.raises(DataError, match=r"shape \(2, 3\) but there are 3 ids"):
        FeatureStore.open(tmp_path / "f.npy")
    np.save(tmp_path / "g.npy", np.ones((3,), np.float32))
    (tmp_path / "g.ids.json").write_text(json.dumps(["a", "b", "c"]))
    with pytest.raises(DataError, match=r"shape \(3,\)"):
        FeatureStore.open(tmp_path / "g.npy")
    with pytest.raises(DataError, match="feature file not found"):
        FeatureStore.open(tmp_path / "none.npy")
