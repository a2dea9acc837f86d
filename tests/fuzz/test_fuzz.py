"""The fuzz suite: every generated bad input is one line on stderr, never a traceback or a
complete-looking output; every equivalent valid input gives the valid input's exact results.

Cases run in-process through ``modalign.cli.main`` (a few through a real ``python -m modalign``
process); see ``cases.py`` for the families. ``python -m tests.fuzz.cases`` is not needed: the
case count per family is asserted below and printed with ``pytest -s``.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modalign.cli import main

from .base import Base, make_base, read_metrics
from .cases import Case, all_cases

CASES = all_cases()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    """The valid inputs, a trained and evaluated run of them, and the evaluated embeddings file."""
    b = make_base(tmp_path_factory.mktemp("fuzz-base"))
    b.run = b.root / "run"
    assert main(["train", str(b.config), "--out", str(b.run)]) == 0
    b.train_metrics = read_metrics(b.run)
    assert main(["eval", str(b.run), "--bootstrap", "5", "--no-report"]) == 0
    out = b.root / "npz-eval"
    assert (
        main(
            [
                "eval",
                "--embeddings",
                str(b.npz),
                "--out",
                str(out),
                "--bootstrap",
                "10",
                "--no-report",
            ]
        )
        == 0
    )
    b.npz_metrics = read_metrics(out)
    return b


def test_suite_size_per_family() -> None:
    counts = collections.Counter(c.family for c in CASES)
    print("\nfuzz cases per family:", dict(counts), "total", sum(counts.values()))
    assert sum(counts.values()) >= 150
    assert set(counts) == {"manifest", "features", "config", "eval-npz", "cli-args", "checkpoint"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case, base: Base, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = case.build(base, tmp_path)
    before = _results(tmp_path)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's usage errors
        code = int(stop.code or 0)
    err = capsys.readouterr().err
    if case.expect == "error":
        _check_one_line_error(case, code, err, tmp_path)
        assert _results(tmp_path) == before, "a failed command wrote a complete-looking result"
    else:
        assert code == 0, err
        _check_same_results(case, argv, base, tmp_path)


def _check_one_line_error(case: Case, code: int, err: str, tmp_path: Path) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0, f"exit 0 for a bad input; stderr: {err}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("modalign"), lines[0]
    assert case.needle in lines[0], f"{case.needle!r} not in {lines[0]!r}"
    assert not (tmp_path / "pwned").exists(), "a checkpoint ran code"


def _results(folder: Path) -> dict[str, bytes]:
    """The files that say "finished": a run's metrics.json and an evaluation's marker."""
    names = ("metrics.json", "eval_complete.json")
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.name in names and p.is_file()}


def _check_same_results(case: Case, argv: list[str], base: Base, tmp_path: Path) -> None:
    if case.baseline == "npz":
        assert read_metrics(tmp_path / "ev") == base.npz_metrics
        assert (tmp_path / "ev" / "eval_complete.json").exists()
        return
    if argv[0] == "eval":  # a copy of the valid run, evaluated again: the same numbers
        assert read_metrics(tmp_path / "run") == read_metrics(base.run)
        return
    assert read_metrics(tmp_path / "run") == base.train_metrics


SUBPROCESS_CASES = [
    "manifest/jsonl-list-line",
    "features/npy-zero-bytes",
    "checkpoint/best-pt-pickled-object",
]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_case_in_a_real_process(case_id: str, base: Base, tmp_path: Path) -> None:
    """The same property through ``python -m modalign``: real stderr, real exit code, no traceback."""
    case = next(c for c in CASES if c.id == case_id)
    argv = case.build(base, tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "modalign", *argv], capture_output=True, text=True, env=env
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and case.needle in lines[0], result.stderr
    assert not (tmp_path / "pwned").exists()
