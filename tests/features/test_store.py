import json
from pathlib import Path

import numpy as np
import pytest

from modalign.errors import DataError
from modalign.features.store import FeatureStore, write_features


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


def test_ids_written_for_another_array_are_refused(tmp_path: Path) -> None:
    """A kill between the array's rename and the ids' rename leaves a new array beside old ids."""
    path = tmp_path / "f.npy"
    old = np.arange(6, dtype=np.float32).reshape(3, 2)
    write_features(path, ["a", "b", "c"], old)
    assert json.loads((tmp_path / "f.ids.json").read_text())["ids"] == ["a", "b", "c"]
    np.save(path, old[::-1].copy())  # the re-embedded array landed; its ids did not
    with pytest.raises(
        DataError, match=r"f\.ids\.json: these ids were written for another version"
    ):
        FeatureStore.open(path)
    write_features(path, ["c", "b", "a"], old[::-1].copy())  # the re-run completes the pair
    np.testing.assert_array_equal(FeatureStore.open(path).rows(["a"]), old[[0]])


def test_fingerprint_covers_both_ends_of_large_arrays(tmp_path: Path) -> None:
    from modalign.features.store import array_fingerprint

    big = np.zeros((3000, 256), np.float32)  # 3 MiB: first and last MiB do not overlap
    changed = big.copy()
    changed[-1, -1] = 1.0
    assert array_fingerprint(big) != array_fingerprint(changed)
    np.save(tmp_path / "big.npy", big)
    assert array_fingerprint(np.load(tmp_path / "big.npy", mmap_mode="r")) == array_fingerprint(big)


def test_plain_list_ids_and_bad_records(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.ones((1, 2), np.float32))
    (tmp_path / "f.ids.json").write_text(json.dumps({"ids": "a"}))
    with pytest.raises(DataError, match="ids must be a JSON list of strings"):
        FeatureStore.open(tmp_path / "f.npy")
    (tmp_path / "f.ids.json").write_text('{"ids": ["a"')
    with pytest.raises(DataError, match=r"f\.ids\.json: ids are not valid JSON"):
        FeatureStore.open(tmp_path / "f.npy")
    (tmp_path / "f.ids.json").write_text(json.dumps(["a"]))  # as a user writes it: no fingerprint
    assert FeatureStore.open(tmp_path / "f.npy").ids == ["a"]
