"""A SIGKILL in the middle of a save leaves the previous index readable (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from modalign.errors import DataError
from modalign.index import Index
from modalign.index import store as store_module

# Saves version after version of an index (~5 MB, so a save takes a while), printing each
# version number once its save has returned.
CHILD = """
import sys, numpy as np
from modalign.index import Index
folder = sys.argv[1]
try:
    idx = Index.load(folder)
except Exception:
    idx = Index(model_id="m")
    idx.add([f"base{i}" for i in range(20_000)], "image", np.random.default_rng(0).standard_normal((20_000, 64)).astype(np.float32))
version = sum(1 for i in idx.items if i.startswith("v"))
while True:
    idx.add([f"v{version}"], "text", np.ones((1, 64), np.float32), [{"version": version}])
    idx.save(folder)
    print(version, flush=True)
    version += 1
"""


def test_kill_mid_save_leaves_a_readable_index(tmp_path: Path) -> None:
    folder = tmp_path / "ix"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rng = np.random.default_rng(0)
    mid_save: list[bool] = []
    for attempt in range(2):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(folder)], stdout=subprocess.PIPE, text=True, env=env
        )
        assert child.stdout is not None
        saved = int(child.stdout.readline())  # one complete save at least
        time.sleep(float(rng.uniform(0.0, 0.4)))  # then kill it at some point of a later save
        child.send_signal(signal.SIGKILL)
        child.wait()
        mid_save.append(any(p.name.startswith(".tmp") for p in folder.iterdir()))
        lines = [int(x) for x in child.stdout.read().split()]
        saved = max([saved, *lines])
        idx = Index.load(folder)
        versions = sorted(int(i[1:]) for i in idx.items if i.startswith("v"))
        # consistent: vectors and items of one complete version, never a mix
        assert versions == list(range(len(versions))) and len(versions) - 1 >= saved, attempt
        assert len(idx) == 20_000 + len(versions) == sum(len(b) for b in idx.backends.values())
        assert idx.search(np.ones((1, 64), np.float32), 1, modality="text")[0][
            0
        ].score == pytest.approx(1.0)
    assert any(mid_save)  # the loop is mostly saving: some kill landed inside a save
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(("gen-", ".tmp"))]
    assert len(leftovers) <= 2  # the current generation, and perhaps the killed save's temporary


def test_a_held_lock_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    idx = Index()
    idx.add(["a"], "image", np.eye(2, dtype=np.float32)[:1])
    idx.save(tmp_path / "ix")
    monkeypatch.setattr(store_module, "LOCK_TIMEOUT_S", 0.1)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import filelock, sys, time; l = filelock.FileLock(sys.argv[1]); l.acquire(); print('held', flush=True); time.sleep(30)",
            str(tmp_path / "ix" / ".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DataError, match="locked by another process"):
            idx.save(tmp_path / "ix")
    finally:
        holder.kill()
        holder.wait()
    assert len(Index.load(tmp_path / "ix")) == 1
