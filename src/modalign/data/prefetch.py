"""Read the next batches in a background thread while the current one trains.

A ``DataLoader`` with ``num_workers=0`` reads and collates each batch in the training thread,
between two steps: for raw inputs (audio frames, images, texts) that is time the step waits for.
Worker processes (``train.num_workers``) move it elsewhere, at the price of a process each, a
copy of every batch through shared memory, and a start-up per epoch (or per run, kept alive). A
thread needs none of that: the reading is numpy and torch copies, file reads and decoders, which
release the GIL, so one free core runs it beside the step. ``modalign.train.loop`` uses it where
a core is free beside the step's threads and some input is read raw.

The batches are the loader's own, in its order, and nothing in reading draws from a random
generator the step uses (samplers draw their order from their own seeded generators), so a run's
results do not depend on whether it prefetches.

Example:
    >>> with Prefetch(range(5), depth=2) as batches:
    ...     list(batches)
    [0, 1, 2, 3, 4]
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

_END = object()


class Prefetch(Generic[T]):
    """Iterate ``items`` in a daemon thread, at most ``depth`` items ahead of the consumer.

    An error raised while reading is raised again by the consumer's ``next``, at the item where
    it happened. :meth:`close` (or leaving a ``with`` block, e.g. when an epoch ends early) stops
    the thread after the item it is reading and waits for it.

    Args:
        items: what to iterate (a ``DataLoader``: one ``iter()`` of it per ``Prefetch``).
        depth: items read ahead (2: the next batch is ready while the one after is read).
        setup: called first in the thread (e.g. to set its intra-op threads).
    """

    def __init__(
        self, items: Iterable[T], depth: int = 2, setup: Callable[[], object] | None = None
    ) -> None:
        if depth < 1:
            raise ValueError(f"Prefetch: depth must be >= 1, got {depth}")
        self._queue: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=self._read, args=(items, setup), name="modalign-prefetch", daemon=True
        )
        self._thread.start()

    def _put(self, entry: tuple[object, BaseException | None]) -> bool:
        """Queue ``entry`` unless the consumer has closed; False when it has."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, items: Iterable[T], setup: Callable[[], object] | None) -> None:
        try:
            if setup is not None:
                setup()
            for item in items:
                if not self._put((item, None)):
                    return
            self._put((_END, None))
        except BaseException as err:  # handed to the consumer, raised there
            self._put((_END, err))

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item, err = self._queue.get()
        if item is _END:
            self.close()
            if err is not None:
                raise err
            raise StopIteration
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop reading (after the item being read) and wait for the thread."""
        self._done = True
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
