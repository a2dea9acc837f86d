"""Prefetch: a loader read in a background thread gives its items in order, its errors where they
happened, and stops reading when the consumer stops."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from modalign.data.prefetch import Prefetch


def test_items_come_in_order_and_the_thread_ends() -> None:
    with Prefetch(range(100), depth=3) as batches:
        assert list(batches) == list(range(100))
        assert next(batches, None) is None  # exhausted stays exhausted
    assert not batches._thread.is_alive()


def test_an_error_while_reading_is_raised_at_its_item() -> None:
    def items() -> Iterator[int]:
        yield from range(3)
        raise ValueError("clip 3: cannot decode audio")

    got = []
    with pytest.raises(ValueError, match="clip 3"), Prefetch(items()) as batches:
        for item in batches:
            got.append(item)
    assert got == [0, 1, 2]


def test_closing_early_stops_reading_after_at_most_depth_more_items() -> None:
    read = []

    def items() -> Iterator[int]:
        for i in range(1000):
            read.append(i)
            yield i

    with Prefetch(items(), depth=2) as batches:
        assert next(batches) == 0
    # item 0 taken; at most 2 queued and 1 in the reader's hands when it was told to stop
    assert not batches._thread.is_alive() and len(read) <= 4
    with pytest.raises(StopIteration):
        next(batches)


def test_setup_runs_in_the_reading_thread() -> None:
    names = []
    with Prefetch([1], setup=lambda: names.append(threading.current_thread().name)) as batches:
        assert list(batches) == [1]
    assert names == ["modalign-prefetch"]


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        Prefetch([1], depth=0)
