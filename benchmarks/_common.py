"""Shared measuring helpers for the benchmark scripts: alternation, medians, GEMM rate, memory, load.

The machines these benchmarks run on are shared and noisy, so a speed-up is measured as a ratio
against a peer run side by side (DESIGN.md, "Benchmarks"):

* :func:`alternate` runs the implementations in turn within every repeat (A, B, A, B, ...), so a
  change of load hits both; :func:`paired_ratio` takes the median of the per-repeat ratios and
  :func:`summary` reports a median with its spread.
* :func:`gemm_gflops` measures the machine's fp32 matrix-multiply rate now, with a large square
  product (4096^2 by default: smaller products read 20-40% low), to state a bound beside a time.
* :class:`PeakRSS` measures the peak resident memory of a block above the resident set just
  before it (the interpreter, the imports and the inputs), so a ratio of memories compares what
  the methods themselves allocate; run each configuration in a fresh process (:func:`run_json`).
* :func:`load` is the one-, five- and fifteen-minute load average, to print with every result.

Import from a script in ``benchmarks/`` with ``from _common import ...`` (the script's folder is
on ``sys.path`` when it runs).
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def alternate(runners: Mapping[str, Callable[[], T]], repeats: int) -> dict[str, list[T]]:
    """Results of every runner, ``repeats`` times each, interleaved: A, B, A, B, ...

    Args:
        runners: name -> a call that performs one measurement (in insertion order).
        repeats: rounds; each round calls every runner once.

    Returns:
        name -> its ``repeats`` results, in call order.

    Example:
        >>> calls = []
        >>> out = alternate({"a": lambda: calls.append("a") or 1, "b": lambda: calls.append("b") or 2}, 2)
        >>> calls, out
        (['a', 'b', 'a', 'b'], {'a': [1, 1], 'b': [2, 2]})
    """
    out: dict[str, list[T]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            out[name].append(run())
    return out


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and relative spread ``(max - min) / median`` of repeated measurements.

    Example:
        >>> summary([2.0, 1.0, 4.0])
        {'median': 2.0, 'min': 1.0, 'max': 4.0, 'spread': 1.5, 'n': 3}
    """
    if not values:
        raise ValueError("no measurements")
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {
        "median": med,
        "min": lo,
        "max": hi,
        "spread": (hi - lo) / med if med else float("inf"),
        "n": len(values),
    }


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, float]:
    """:func:`summary` of the per-repeat ratios ``numerators[i] / denominators[i]``.

    Pairing each repeat's two runs (made seconds apart) cancels load that changes between
    repeats, which a ratio of the two medians would not.

    Example:
        >>> paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0])["median"]
        2.0
    """
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} numerators for {len(denominators)} denominators")
    return summary([a / b for a, b in zip(numerators, denominators, strict=True)])


def gemm_gflops(n: int = 4096, repeats: int = 2, threads: int | None = None) -> float:
    """The machine's fp32 matrix-multiply rate now: the median GFLOP/s of ``(n, n) @ (n, n)``.

    ``threads`` sets torch's intra-op threads for the measurement (default: unchanged).
    """
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        torch.mm(a[:256], b, out=out[:256])  # load code and thread pools before timing
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2.0 * n**3 / statistics.median(times) / 1e9


def load() -> list[float]:
    """The one-, five- and fifteen-minute load averages, rounded (all zeros where unknown)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return [0.0, 0.0, 0.0]


def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"{field}:\s+(\d+)", text)
    return int(found.group(1)) if found else None


def _reset_peak() -> bool:
    """Reset the kernel's peak resident set (VmHWM) to the current one (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Peak resident memory of a ``with`` block above the resident set when it began, in MiB.

    Attributes (after the block): ``baseline_mib`` (resident set at entry: interpreter, imports,
    inputs), ``peak_mib`` (peak during the block), ``above_mib`` (their difference). Where the
    peak cannot be reset (not Linux), the process's lifetime peak stands in, so the figure is an
    upper bound; run one configuration per fresh process.

    Example:
        >>> with PeakRSS() as mem:
        ...     block = bytearray(64 << 20)
        >>> mem.above_mib > 32
        True
    """

    def __init__(self) -> None:
        self.baseline_mib = self.peak_mib = self.above_mib = 0.0

    def __enter__(self) -> PeakRSS:
        _reset_peak()
        now = _status_kib("VmRSS")
        self.baseline_mib = now / 1024 if now is not None else _max_rss_mib()
        return self

    def __exit__(self, *exc: object) -> None:
        peak = _status_kib("VmHWM")
        self.peak_mib = peak / 1024 if peak is not None else _max_rss_mib()
        self.above_mib = max(0.0, self.peak_mib - self.baseline_mib)


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_json(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run a fresh process and parse the JSON object on its last line of output."""
    done = subprocess.run(
        list(cmd), capture_output=True, text=True, env=None if env is None else dict(env)
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{' '.join(cmd)} printed nothing")
    return dict(json.loads(lines[-1]))


def rounded(record: Mapping[str, Any], digits: int = 4) -> dict[str, Any]:
    """``record`` with its floats rounded to ``digits`` significant digits, for JSON lines.

    Example:
        >>> rounded({"a": 1.23456789, "b": "x", "c": [0.000123456]})
        {'a': 1.235, 'b': 'x', 'c': [0.0001235]}
    """

    def one(value: Any) -> Any:
        if isinstance(value, float):
            return float(f"{value:.{digits}g}")
        if isinstance(value, list):
            return [one(v) for v in value]
        if isinstance(value, dict):
            return {k: one(v) for k, v in value.items()}
        return value

    return {k: one(v) for k, v in record.items()}
