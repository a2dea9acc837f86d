import os
import stat
from pathlib import Path

import pytest

from modalign.io import atomic_path, write_json_atomic


def test_atomic_write_replaces_whole_file_with_usual_mode(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2})
    assert target.read_text() == '{\n  "a": 2\n}'
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary left behind


def test_failure_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    target.write_text("good")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_read_jsonl_drops_a_torn_last_line_and_names_a_broken_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from modalign.errors import DataError
    from modalign.io import read_jsonl

    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "lo')
    with caplog.at_level("WARNING"):
        assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    assert "dropping a torn last line 4" in caplog.text
    path.write_text('{"step": 1}\n{"step": 2, \n{"step": 3}\n')
    with pytest.raises(DataError, match=r"m.jsonl, line 2: not valid JSON"):
        read_jsonl(path)
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"line 2: expected a JSON object, got list"):
        read_jsonl(path)
    assert read_jsonl(tmp_path / "missing.jsonl") == []


HOLDER = """
import sys, time
from modalign.io import hold_folder
with hold_folder(sys.argv[1], "holder"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_hold_folder_refuses_a_second_process_and_takes_over_a_dead_ones_lock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import signal
    import socket
    import subprocess
    import sys

    from modalign.errors import DataError
    from modalign.io import hold_folder

    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path), "--flag"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(DataError) as err, hold_folder(tmp_path, "second"):
            pass
        message = str(err.value)
        assert f"holder, pid {proc.pid} on {socket.gethostname()} since " in message
        assert "--flag" in message and "\n" not in message
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with caplog.at_level("WARNING"), hold_folder(tmp_path, "second"):
        info = (tmp_path / ".modalign.lock.json").read_text()
    assert f"taking over a lock left by a process that died (holder, pid {proc.pid}" in caplog.text
    assert '"what": "second"' in info and not (tmp_path / ".modalign.lock.json").exists()
    (tmp_path / "file").write_text("x")
    with (
        pytest.raises(DataError, match="exists and is not a folder"),
        hold_folder(tmp_path / "file", "x"),
    ):
        pass


def test_atomic_writes_leave_the_process_umask_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # checkpoints are written by a background thread while training creates files: setting
    # the umask to 0 for a moment, even to read it, would create those world-writable
    import sys

    if not Path("/proc/self/status").exists() or sys.platform != "linux":
        pytest.skip("reads the umask from /proc")
    calls = []
    real = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real(mask))
    with atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("x")
    assert calls == []
    mask = real(0)
    real(mask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~mask
