"""The duplicate-aware sampler's guarantee, explicit negatives, and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modalign.config import load_config
from modalign.data.manifest import read_manifest
from modalign.data.paired import PairedData
from modalign.data.samplers import UniqueGroupBatches, build_sampler, load_negatives
from modalign.errors import ConfigError, DataError


@pytest.mark.parametrize("world", [1, 2])
def test_no_two_rows_of_one_group_in_a_global_batch(world: int) -> None:
    rng = np.random.default_rng(0)
    groups = np.concatenate([np.zeros(30, dtype=np.int64), rng.integers(1, 60, size=270)])
    rows = np.arange(300)
    negatives = {
        int(r): [int(x) for x in rng.choice(300, 3) if groups[x] != groups[r]] for r in rows[::7]
    }
    shards = [
        UniqueGroupBatches(rows, groups, 32, seed=1, rank=r, world_size=world, negatives=negatives)
        for r in range(world)
    ]
    for epoch in range(3):
        for s in shards:
            s.set_epoch(epoch)
        batches = [list(s) for s in shards]
        assert len({len(b) for b in batches}) == 1 and len(batches[0]) == len(shards[0])
        seen = set()
        for parts in zip(*batches, strict=True):
            batch = [r for p in parts for r in p]  # the global batch
            assert len(batch) == 32 and len(set(groups[batch])) == 32
            seen.update(batch)
        assert len(seen) > 240  # nearly every row once per epoch (the big group's extra rows wait)
    again = UniqueGroupBatches(rows, groups, 32, seed=1, negatives=negatives)
    assert list(again) == list(UniqueGroupBatches(rows, groups, 32, seed=1, negatives=negatives))


def test_negatives_join_their_rows_batch() -> None:
    groups = np.arange(40)
    s = UniqueGroupBatches(np.arange(40), groups, 8, seed=0, negatives={3: [17, 29]})
    batch = next(b for b in s if 3 in b)
    assert 17 in batch and 29 in batch
    every = {r: [(r + 1) % 40, (r + 2) % 40] for r in range(40)}  # as `modalign mine` gives
    s = UniqueGroupBatches(np.arange(40), groups, 8, seed=0, negatives=every)
    batches = list(s)
    assert len(batches) >= 5 and all(len(set(b)) == len(b) for b in batches)
    assert all(x in b for b in batches for r in b[:1] for x in every[r])


def _data(tmp_path: Path, extra: str = "") -> PairedData:
    lines = ["id,a,b,group,split,negatives"]
    for i in range(12):
        split = "test" if i >= 10 else "train"
        lines.append(f"r{i},x{i},y{i},g{i // 2},{split},{extra if i == 0 else ''}")
    path = tmp_path / "m.csv"
    path.write_text("\n".join(lines) + "\n")
    from modalign.encoders.base import Encoder

    class Cells(Encoder):  # the cells as they are: no features or files needed
        input_kind = "raw"

    cfg = load_config(None, [f"data.manifest={path}", "data.min_rows=1"])
    manifest = read_manifest(path, ["a", "b"])
    return PairedData(manifest, {}, {m: Cells(m, 4) for m in ("a", "b")}, cfg.data)


def test_negatives_from_column_and_file_with_clear_errors(tmp_path: Path) -> None:
    data = _data(tmp_path, "r4|r11")  # r11 is a test row: never used in training
    assert load_negatives(data) == {0: [4]}
    mined = tmp_path / "neg.csv"
    mined.write_text("id,negatives\nr2,r6|r8\nr3,\n")
    assert load_negatives(data, str(mined)) == {0: [4], 2: [6, 8]}
    mined.write_text("id,negatives\nr2,r6|nope\n")
    with pytest.raises(DataError, match=r"neg.csv, row 1: negatives: unknown id 'nope'"):
        load_negatives(data, str(mined))
    with pytest.raises(DataError, match="'r1' is in the group of 'r0'"):
        load_negatives(_data(tmp_path, "r1"))
    cfg = load_config(None, ["train.sampler=random"])
    with pytest.raises(ConfigError, match="unique_groups"):
        build_sampler(_data(tmp_path, "r4"), cfg.train)
    with pytest.raises(ConfigError, match=r"train\.sampler 'nope'"):
        build_sampler(data, load_config(None, ["train.sampler=nope"]).train)
