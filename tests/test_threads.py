"""The thread chooser's logic (no timing) and the context that sets and restores threads."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from modalign.config import load_config
from modalign.errors import ConfigError
from modalign.model.heads import MLPHead
from modalign.threads import (
    MIN_PARALLEL_FLOPS,
    choose_threads,
    mean_matmul_flops,
    runnable_others,
    step_threads,
)


@pytest.mark.parametrize(
    ("flops", "limit", "cores", "others", "expected"),
    [
        (5e6, 2, 2, 0, 1),  # small heads: one thread even on an idle machine
        (MIN_PARALLEL_FLOPS - 1, 8, 8, 0, 1),
        (MIN_PARALLEL_FLOPS, 2, 2, 0, 2),  # big enough and both cores free
        (6e9, 2, 2, 1, 1),  # another runnable task holds a core: no barrier waits on it
        (6e9, 2, 2, 9, 1),  # a loaded machine never gets zero threads
        (6e9, 8, 8, 3, 5),  # the free cores
        (6e9, 4, 16, 0, 4),  # never above the process's own limit (OMP_NUM_THREADS)
        (math.inf, 2, 2, 0, 2),  # unknown work counts as large
        (6e9, 1, 2, 0, 1),
    ],
)
def test_choose_threads(flops: float, limit: int, cores: int, others: float, expected: int) -> None:
    assert choose_threads(flops, limit, cores, others) == expected


def test_mean_matmul_flops_counts_linear_layers_and_the_loss_tiles() -> None:
    head = MLPHead(48, 64, hidden_dim=256)  # 48->256, 256->64 and a 48->64 shortcut
    per_row = 48 * 256 + 256 * 64 + 48 * 64
    assert mean_matmul_flops(head, 256, 64, tile=1024) == pytest.approx(2 * 256 * per_row / 3)
    # past one tile the loss's (tile, D) x (D, tile) products join the mean
    big = mean_matmul_flops(head, 4096, 64, tile=1024)
    assert big == pytest.approx((2 * 4096 * per_row + 2 * 1024 * 1024 * 64) / 4)
    assert mean_matmul_flops(nn.LayerNorm(8), 256, 64, tile=1024) == 0.0
    conv = nn.Sequential(nn.Conv1d(1, 4, 3), nn.Flatten(), nn.Linear(8, 4))
    assert mean_matmul_flops(conv, 256, 4, tile=1024) == math.inf


def test_runnable_others_reads_the_instant_count(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "loadavg"
    path.write_text("3.10 2.00 1.00 5/300 12345\n")
    assert runnable_others(str(path)) == 4.0  # the reader itself is one of the five
    path.write_text("garbage")
    assert runnable_others(str(path)) == 0.0
    assert runnable_others(str(tmp_path / "missing")) == 0.0


def test_step_threads_restores_the_previous_count_even_on_errors() -> None:
    before = torch.get_num_threads()
    with step_threads(None) as n:
        assert n == before == torch.get_num_threads()
    with pytest.raises(RuntimeError), step_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError
    assert torch.get_num_threads() == before


def test_train_num_threads_option() -> None:
    assert load_config(None, []).train.num_threads is None
    assert load_config(None, ["train.num_threads=1"]).train.num_threads == 1
    with pytest.raises(ConfigError, match=r"train\.num_threads"):
        load_config(None, ["train.num_threads=0"])
