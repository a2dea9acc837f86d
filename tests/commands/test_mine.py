"""Hard-negative mining: never a positive, equal to a brute-force search, and the CLI end to end."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tests.conftest import synthetic_config

from modalign.cli import main
from modalign.data.samplers import build_sampler, load_negatives
from modalign.model.inference import load_run
from modalign.train.mine import hardest_negatives
from modalign.types import EmbeddingSet


def _random_set(seed: int) -> EmbeddingSet:
    rng = np.random.default_rng(seed)
    n = 40
    out = {}
    for m in ("a", "b", "c"):
        x = rng.normal(size=(n, 5)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x[rng.random(n) < 0.3] = np.nan  # missing cells
        out[m] = x
    groups = rng.integers(0, 15, size=n)
    return EmbeddingSet(out, [f"r{i}" for i in range(n)], groups)


def brute_force(emb: EmbeddingSet, k: int) -> list[list[int]]:
    """Per row: candidates by their best cross-modal score, own group and missing cells excluded."""
    g = emb.group_ids()
    out = []
    for r in range(len(emb)):
        best: dict[int, float] = {}
        for mq in emb.modalities:
            for mg in emb.modalities:
                if mq == mg or np.isnan(emb.embeddings[mq][r]).any():
                    continue
                for c in range(len(emb)):
                    if g[c] == g[r] or np.isnan(emb.embeddings[mg][c]).any():
                        continue
                    s = float(emb.embeddings[mq][r] @ emb.embeddings[mg][c])
                    best[c] = max(best.get(c, -np.inf), s)
        out.append(sorted(best, key=lambda c: -best[c])[:k])
    return out


@pytest.mark.parametrize("chunk", [None, 7])
def test_mining_matches_brute_force_and_never_returns_a_positive(chunk: int | None) -> None:
    for seed in range(3):
        emb = _random_set(seed)
        idx, scores = hardest_negatives(emb, k=4, chunk_size=chunk)
        g = emb.group_ids()
        for r, (row, want) in enumerate(zip(idx, brute_force(emb, 4), strict=True)):
            got = [int(c) for c in row if c >= 0]
            assert got == want
            assert all(g[c] != g[r] for c in got)  # never a positive
            assert np.all(np.diff(scores[r][: len(got)]) <= 0)


@pytest.fixture
def one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread barriers dominate on a busy machine
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_mine_cli_writes_negatives_the_next_run_reads(tmp_path: Path) -> None:
    logging.disable(logging.WARNING)
    cfg = synthetic_config(
        tmp_path / "data", ["train.epochs=1", "eval.splits=[test]"], n=200, groups=120
    )
    from modalign.train.loop import fit

    fit(cfg, tmp_path / "run")
    out = tmp_path / "neg.csv"
    assert main(["mine", str(tmp_path / "run"), "--out", str(out), "--k", "3"]) == 0
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    _, _, data = load_run(tmp_path / "run")
    assert list(table["id"]) == [data.manifest.ids[r] for r in data.rows("train")]
    group_of = dict(zip(data.manifest.ids, data.manifest.groups, strict=True))  # type: ignore[arg-type]
    for key, cell in zip(table["id"], table["negatives"], strict=True):
        negs = cell.split("|")
        assert len(negs) == 3 and all(group_of[n] != group_of[key] for n in negs)
    data.negatives_path = str(out)
    loaded = load_negatives(data, str(out))
    assert len(loaded) == len(table)
    sampler = build_sampler(data, cfg.train)
    batch = next(iter(sampler))
    groups = data.manifest.groups
    assert groups is not None and len(set(groups[batch])) == len(batch)
    # the first row's negatives are in its batch (two negatives of one group: one of them)
    assert all(groups[x] in set(groups[batch]) for x in loaded[batch[0]])
    assert main(["mine", str(tmp_path / "run"), "--out", str(out), "--k", "0"]) == 1
