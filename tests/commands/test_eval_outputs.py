"""``modalign eval`` writes its outputs as one unit; readers refuse an unfinished one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import modalign.report
from modalign.cli import main
from modalign.errors import DataError


def _npz(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((30, 6))
    np.savez(
        path,
        image=shared + 0.3 * rng.standard_normal((30, 6)),
        text=shared + 0.3 * rng.standard_normal((30, 6)),
    )
    return path


def _eval(npz: Path, out: Path) -> int:
    return main(["eval", "--embeddings", str(npz), "--out", str(out), "--bootstrap", "10"])


def test_an_evaluation_killed_before_its_report_is_refused_by_compare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert _eval(_npz(tmp_path / "a.npz", 0), a) == 0
    assert _eval(_npz(tmp_path / "b.npz", 1), b) == 0
    marker = json.loads((b / "eval_complete.json").read_text())
    assert sorted(marker["files"]) == [
        "intervals.json",
        "metrics.json",
        "per_query.npz",
        "report.html",
    ]
    assert main(["compare", str(a), str(b), "--bootstrap", "50"]) == 0
    old_report = (b / "report.html").read_bytes()

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # a kill after metrics.json, intervals.json and per_query.npz

    monkeypatch.setattr(modalign.report, "write_report", killed)
    assert _eval(_npz(tmp_path / "b2.npz", 2), b) == 130
    assert not (b / "eval_complete.json").exists()
    assert not (b / "report.html").exists()  # never an old report beside new metrics
    capsys.readouterr()
    assert main(["compare", str(a), str(b)]) == 1
    assert "has no finished evaluation" in capsys.readouterr().err
    monkeypatch.undo()
    assert _eval(_npz(tmp_path / "b.npz", 1), b) == 0
    assert (b / "report.html").read_bytes() != b"" and old_report
    assert main(["compare", str(a), str(b), "--bootstrap", "50"]) == 0


def test_verbose_still_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "e.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot read as \.npz"):
        main(["-v", "eval", "--embeddings", str(tmp_path / "e.npz"), "--out", str(tmp_path / "o")])
    with pytest.raises(NotADirectoryError):  # OSErrors are re-raised with -v too
        (tmp_path / "f").write_text("x")
        main(["-v", "synth", str(tmp_path / "f" / "sub"), "--rows", "10"])


def test_an_os_error_without_a_reader_to_catch_it_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "f").write_text("x")
    assert main(["synth", str(tmp_path / "f" / "sub"), "--rows", "10"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("modalign synth: error: ") and "Not a directory" in err
