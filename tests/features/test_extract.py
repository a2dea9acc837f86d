"""embed_manifest: features per distinct cell, cache reuse, resume after a real kill, skips."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from modalign.cli import main
from modalign.data.manifest import read_manifest
from modalign.encoders.audio import ConvAudioEncoder, LogMelStatsEncoder
from modalign.encoders.common import ItemSkipped
from modalign.errors import ConfigError, DataError
from modalign.features.extract import embed_manifest
from modalign.features.store import FeatureStore

sf = pytest.importorskip("soundfile")

SLOW_SCRIPT = """
import sys, time
from modalign.data.manifest import read_manifest
from modalign.features.extract import embed_manifest
from modalign.encoders.audio import LogMelStatsEncoder

class Slow(LogMelStatsEncoder):  # a user encoder, slowed so the kill lands mid-run
    def load(self, cell):
        time.sleep(0.05)
        return super().load(cell)

m = read_manifest(sys.argv[1])
embed_manifest(m, {"sound": Slow("sound")}, {"sound": sys.argv[2]}, cache_dir=sys.argv[3],
               batch_size=4, num_workers=1, shard_size=4, progress=False)
"""


def make_manifest(folder: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(0)
    rows = ["id,sound,text"]
    for i in range(n):
        sr = (8000, 22050, 44100)[i % 3]
        sf.write(
            folder / f"c{i}.wav", (0.2 * rng.normal(size=sr // 4 + 97 * i)).astype(np.float32), sr
        )
        rows.append(f"r{i},c{i}.wav,caption {i % 5}")
    rows.append(f"r{n},c0.wav,")  # a repeated cell is embedded once
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    return folder / "m.csv"


def run(manifest: Path, out: Path, **kw: object) -> dict:
    m = read_manifest(manifest)
    return embed_manifest(
        m,
        {"sound": LogMelStatsEncoder("sound")},
        {"sound": out / "sound.npy"},
        progress=False,
        **kw,
    )  # type: ignore[arg-type]


def test_embed_writes_a_store_keyed_by_cells_and_reuses_the_cache(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path)
    first = run(manifest, tmp_path / "out")["sound"]
    assert (first.n_items, first.n_cached, first.n_computed) == (12, 0, 12)
    store = FeatureStore.open(first.path)
    assert store.ids == [f"c{i}.wav" for i in range(12)] and store.dim == 128
    second = run(manifest, tmp_path / "out")["sound"]
    assert (second.n_cached, second.n_computed) == (12, 0)
    np.testing.assert_array_equal(FeatureStore.open(second.path).array, store.array)
    # a changed file (size + mtime) is recomputed, the rest reused
    sf.write(tmp_path / "c3.wav", np.zeros(5000, np.float32), 8000)
    third = run(manifest, tmp_path / "out")["sound"]
    assert (third.n_cached, third.n_computed) == (11, 1)


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path, n=40)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [
        sys.executable,
        "-c",
        SLOW_SCRIPT,
        str(manifest),
        str(tmp_path / "killed.npy"),
        str(cache),
    ]
    proc = subprocess.Popen(args, env=env)
    try:
        while proc.poll() is None and len(list(cache.glob("sound/*/shard-*.npz"))) < 2:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed.npy").exists()
    resumed = run(manifest, tmp_path, cache_dir=cache)["sound"]
    assert 8 <= resumed.n_cached < 40 and resumed.n_computed == 40 - resumed.n_cached
    clean = run(manifest, tmp_path / "clean")["sound"]
    assert clean.n_cached == 0
    a, b = FeatureStore.open(resumed.path), FeatureStore.open(clean.path)
    assert a.ids == b.ids
    np.testing.assert_allclose(a.array, b.array, rtol=1e-5, atol=1e-5)


def test_half_written_shard_is_ignored(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path, n=4)
    run(manifest, tmp_path / "out")
    shard_dir = next((tmp_path / "out" / "cache" / "sound").iterdir())
    (shard_dir / ".shard-99.npz.abc.tmp").write_bytes(b"PK\x03\x04 truncated")
    assert run(manifest, tmp_path / "out")["sound"].n_cached == 4


def test_trainable_encoder_and_missing_file_are_refused(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path, n=3)
    m = read_manifest(manifest)
    with pytest.raises(ConfigError, match="trainable"):
        embed_manifest(
            m, {"sound": ConvAudioEncoder("sound")}, {"sound": tmp_path / "x.npy"}, progress=False
        )
    (tmp_path / "c1.wav").unlink()
    with pytest.raises(DataError, match=r"c1\.wav"):
        run(manifest, tmp_path / "out")


def test_unreadable_and_skipped_items_are_counted(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path, n=4)
    (tmp_path / "c2.wav").write_bytes(b"not audio")
    with pytest.raises(DataError, match=r"c2\.wav"):
        run(manifest, tmp_path / "out", num_workers=0)
    res = run(manifest, tmp_path / "out", num_workers=0, skip_unreadable=True)["sound"]
    assert res.skipped == {"unreadable": 1} and res.n_items == 3

    class Picky(LogMelStatsEncoder):
        def load(self, cell: str) -> torch.Tensor:
            if cell.endswith("c1.wav"):
                raise ItemSkipped("svg_without_rasteriser", cell)
            return super().load(cell)

    (tmp_path / "c2.wav").unlink()
    m = read_manifest(manifest)
    m.cells["sound"][2] = None  # type: ignore[index]
    out = embed_manifest(
        m, {"sound": Picky("sound")}, {"sound": tmp_path / "p.npy"}, progress=False, num_workers=1
    )
    assert out["sound"].skipped == {"svg_without_rasteriser": 1}
    assert "c1.wav" not in FeatureStore.open(tmp_path / "p.npy").index


def test_cli_embed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = make_manifest(tmp_path, n=3)
    argv = [
        "embed",
        "--manifest",
        str(manifest),
        "--encoder",
        "sound=audio_logmel_stats",
        "--option",
        "sound.n_mels=16",
    ]
    assert main([*argv, "--out-dir", str(tmp_path / "f"), "--no-progress"]) == 0
    assert FeatureStore.open(tmp_path / "f" / "sound.npy").dim == 32
    assert "sound" in capsys.readouterr().out
    assert (
        main(["embed", "--manifest", str(manifest), "--encoder", "sound=mlp"]) == 1
    )  # nothing raw to embed
