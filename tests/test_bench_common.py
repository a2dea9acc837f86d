"""benchmarks/_common.py: alternation order, medians, paired ratios, memory above a baseline."""

from __future__ import annotations

import doctest
import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).parents[1] / "benchmarks" / "_common.py"
_spec = importlib.util.spec_from_file_location("_common", _PATH)
assert _spec is not None and _spec.loader is not None
common = importlib.util.module_from_spec(_spec)
sys.modules["_common"] = common
_spec.loader.exec_module(common)


def test_alternate_interleaves_every_repeat() -> None:
    calls: list[str] = []

    def run(name: str):  # type: ignore[no-untyped-def]
        def one() -> int:
            calls.append(name)
            return len(calls)

        return one

    out = common.alternate({"a": run("a"), "b": run("b"), "c": run("c")}, repeats=3)
    assert calls == ["a", "b", "c"] * 3
    assert out == {"a": [1, 4, 7], "b": [2, 5, 8], "c": [3, 6, 9]}
    assert common.alternate({"a": run("a")}, repeats=0) == {"a": []}


def test_summary_median_and_spread() -> None:
    s = common.summary([3.0, 1.0, 2.0, 10.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 10.0 and s["n"] == 4
    assert s["spread"] == pytest.approx(9.0 / 2.5)
    assert common.summary([4.0])["spread"] == 0.0
    with pytest.raises(ValueError):
        common.summary([])


def test_paired_ratio_pairs_runs_of_the_same_repeat() -> None:
    # load doubles between repeats: paired ratios stay 2, a ratio of medians would not be exact
    fast = [1.0, 2.0, 4.0]
    slow = [2.0, 4.0, 8.0]
    r = common.paired_ratio(slow, fast)
    assert r["median"] == 2.0 and r["spread"] == 0.0
    with pytest.raises(ValueError):
        common.paired_ratio([1.0], [1.0, 2.0])


def test_peak_rss_counts_only_the_block() -> None:
    with common.PeakRSS() as mem:
        block = bytearray(48 << 20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
    assert mem.baseline_mib > 0
    assert 40 < mem.above_mib < 200
    with common.PeakRSS() as small:
        pass
    assert small.above_mib < 20


def test_load_and_rounding() -> None:
    assert len(common.load()) == 3
    assert common.rounded({"x": 1.23456, "y": [2.34567], "z": "s"}, 3) == {
        "x": 1.23,
        "y": [2.35],
        "z": "s",
    }


def test_doctests() -> None:
    assert doctest.testmod(common).failed == 0
