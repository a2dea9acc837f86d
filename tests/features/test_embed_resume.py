"""``modalign embed`` killed after its first cache shard resumes to bitwise-equal features."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from modalign.cli import main

soundfile = pytest.importorskip("soundfile")

N_CLIPS = 400


def _clips(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    rows = ["sound"]
    for i in range(N_CLIPS):
        name = f"c{i}.wav"
        soundfile.write(folder / name, (0.1 * rng.standard_normal(800)).astype(np.float32), 16000)
        rows.append(name)
    manifest = folder / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def _args(manifest: Path, out: Path) -> list[str]:
    return [
        "embed", "--manifest", str(manifest), "--encoder", "sound=audio_logmel_stats",
        "--option", "sound.n_mels=8", "--out-dir", str(out), "--batch-size", "1",
        "--shard-size", "1", "--workers", "0", "--no-progress",
    ]  # fmt: skip


def test_embed_killed_after_its_first_shard_resumes_to_bitwise_equal_features(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _clips(tmp_path / "clips")
    assert main(_args(manifest, tmp_path / "full")) == 0
    cut = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modalign", *_args(manifest, cut)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not list(cut.glob("cache/sound/*/shard-*.npz")) and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(cut.glob("cache/sound/*/shard-*.npz")))
    assert done_before >= 1, "killed before the first shard"
    assert not (cut / "sound.npy").exists(), "the run finished before it was killed"
    capsys.readouterr()
    assert main(_args(manifest, cut)) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("sound"))
    items, cached, computed = (int(v) for v in row.split()[1:4])
    assert items == N_CLIPS and cached >= done_before and computed == N_CLIPS - cached > 0
    full, resumed = np.load(tmp_path / "full" / "sound.npy"), np.load(cut / "sound.npy")
    assert full.tobytes() == resumed.tobytes()  # bitwise
    ids = [json.loads((d / "sound.ids.json").read_text())["ids"] for d in (tmp_path / "full", cut)]
    assert ids[0] == ids[1]
