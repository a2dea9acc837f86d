"""Feature extraction at scale: length-sorted batches, preferred batch sizes, two real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modalign.cli import main
from modalign.data.manifest import read_manifest
from modalign.encoders.base import Encoder
from modalign.features.extract import embed_manifest, plan_batches
from modalign.features.store import FeatureStore

sf = pytest.importorskip("soundfile")

# Run by torchrun in each of two processes: fill the frame cache, then `modalign embed`.
WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from modalign import distributed
    from modalign.cli import main
    from modalign.encoders.audio import ConvAudioEncoder
    from modalign.features.frames import FrameCache, fill_frame_cache

    folder = Path(sys.argv[1])
    assert distributed.init_from_env(backend="gloo")
    enc = ConvAudioEncoder("sound", n_mels=16, channels=(4,), output_dim=2)
    cache = FrameCache(folder / "frames", enc.frame_key())
    paths = sorted(folder.glob("c*.wav"))
    decoded = fill_frame_cache(enc, paths, cache, num_workers=0, progress=False)
    seen = sum(cache.lookup(p) is not None for p in paths)
    (folder / f"frames{distributed.rank()}.json").write_text(json.dumps([decoded, seen]))
    sys.exit(main(sys.argv[2:]))
    """
)


def write_clips(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    rows = ["id,sound"]
    for i in range(n):
        sr = (8000, 22050)[i % 2]
        wave = 0.2 * rng.normal(size=sr // 5 + 131 * i)
        sf.write(folder / f"c{i}.wav", wave.astype(np.float32), sr)
        rows.append(f"r{i},c{i}.wav")
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    return folder / "m.csv"


def embed_args(manifest: Path) -> list[str]:
    """``modalign embed`` of the clips' log-mel statistics in batches of 3 (no ``--out-dir``)."""
    args = ["embed", "--manifest", str(manifest), "--encoder", "sound=audio_logmel_stats"]
    args += ["--option", "sound.n_mels=16", "--batch-size", "3", "--workers", "0"]
    return [*args, "--no-progress"]


def run_two_processes(
    folder: Path, worker: str, args: list[str]
) -> subprocess.CompletedProcess[str]:
    """Run ``worker`` (a script's text) under torchrun in two gloo processes, as
    ``worker FOLDER ARGS --out-dir FOLDER/two``; fails the test if it fails."""
    script = folder / "worker.py"
    script.write_text(worker)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = subprocess.run(
        [*cmd, str(script), str(folder), *args, "--out-dir", str(folder / "two")],
        capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_processes_write_the_store_of_one(tmp_path: Path) -> None:
    args = embed_args(write_clips(tmp_path, n=11))
    assert main([*args, "--out-dir", str(tmp_path / "one")]) == 0
    done = run_two_processes(tmp_path, WORKER, args)
    for name in ("sound.npy", "sound.ids.json"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    shards = list((tmp_path / "two" / "cache" / "sound").glob("*/shard-*.npz"))
    assert len(shards) == 2  # one per process: 4 batches of 3, two each
    decoded = [json.loads((tmp_path / f"frames{r}.json").read_text()) for r in range(2)]
    assert sorted(d for d, _ in decoded) == [5, 6] and all(s == 11 for _, s in decoded)
    assert "items" in done.stdout and done.stdout.count("\nsound ") == 1  # rank 0 prints alone


class Recorder(Encoder):
    """A toy raw encoder that records its batch sizes; its feature is the text's length."""

    input_kind = "raw"
    preferred_batch_size = 5

    def __init__(self, modality: str, sort: bool = True) -> None:
        super().__init__(modality, 1, frozen=True)
        self.sort, self.sizes = sort, []  # type: list[int]

    def load(self, cell: str) -> str:
        return cell

    def item_length(self, cell: str) -> int | None:
        return len(cell) if self.sort else None

    def collate(self, items: Sequence[Any]) -> list[str]:
        return list(items)

    def forward(self, batch: list[str]) -> torch.Tensor:
        self.sizes.append(len(batch))
        return torch.tensor([[float(len(t))] for t in batch])


def test_plan_batches_sorts_longest_first_and_keeps_ties_in_order() -> None:
    texts = ["bb", "a", "dddd", "cc", "eee"]
    assert plan_batches(range(5), texts, Recorder("t"), 2) == [[2, 4], [0, 3], [1]]
    assert plan_batches([4, 0, 1], texts, Recorder("t", sort=False), 2) == [[4, 0], [1]]


def test_the_encoders_preferred_batch_size_is_the_default(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("text\n" + "\n".join(f"t{'x' * i}" for i in range(12)) + "\n")
    enc = Recorder("text")
    out = embed_manifest(read_manifest(tmp_path / "m.csv"), {"text": enc}, {"text": tmp_path / "f.npy"}, progress=False)  # fmt: skip
    assert enc.sizes == [5, 5, 2] and out["text"].n_computed == 12
    store = FeatureStore.open(tmp_path / "f.npy")
    assert store.ids[:2] == ["t", "tx"]  # the store keeps manifest order
    np.testing.assert_array_equal(store.array[:, 0], [len(c) for c in store.ids])


def test_length_sorted_text_features_equal_unsorted(tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    from modalign.encoders.text import SentenceTransformerEncoder

    texts = [" ".join(["word"] * (1 + (7 * i) % 23)) + f" {i}." for i in range(20)]
    (tmp_path / "m.csv").write_text("text\n" + "\n".join(texts) + "\n")
    manifest = read_manifest(tmp_path / "m.csv")
    enc = SentenceTransformerEncoder("text")
    sorted_run = embed_manifest(manifest, {"text": enc}, {"text": tmp_path / "s.npy"}, batch_size=6, progress=False)  # fmt: skip
    enc.item_length = lambda cell: None  # type: ignore[method-assign]  # manifest order
    embed_manifest(manifest, {"text": enc}, {"text": tmp_path / "u.npy"}, cache_dir=tmp_path / "c2", batch_size=6, progress=False)  # fmt: skip
    a, b = FeatureStore.open(tmp_path / "s.npy"), FeatureStore.open(tmp_path / "u.npy")
    assert a.ids == b.ids == texts and sorted_run["text"].n_computed == 20
    np.testing.assert_allclose(a.array, b.array, rtol=0, atol=1e-6)
    plain = enc.model.encode(texts, batch_size=6, normalize_embeddings=True)
    np.testing.assert_allclose(a.array, plain, rtol=0, atol=1e-6)


# A process that lists a cache late (here: two seconds late, on rank 1) must still compute its
# share of the plan every process made from the same listing: the frame cache (clips in shards
# of 2, so the other process writes early), then the feature cache of `modalign embed`.
SLOW_LISTER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from modalign import distributed
    from modalign.cli import main
    from modalign.encoders.audio import ConvAudioEncoder
    from modalign.features.cache import FeatureCache
    from modalign.features.frames import FrameCache, fill_frame_cache

    def late(method):
        def wrapper(self):
            time.sleep(2.0)
            return method(self)
        return wrapper

    folder = Path(sys.argv[1])
    assert distributed.init_from_env(backend="gloo")
    if distributed.rank() == 1:
        FeatureCache.keys = late(FeatureCache.keys)
        FrameCache.refresh = late(FrameCache.refresh)
    enc = ConvAudioEncoder("sound", n_mels=16, channels=(4,), output_dim=2)
    cache = FrameCache(folder / "frames", enc.frame_key())
    paths = sorted(folder.glob("c*.wav"))
    fill_frame_cache(enc, paths, cache, num_workers=0, shard_size=2, progress=False)
    seen = sum(cache.lookup(p) is not None for p in paths)
    (folder / f"frames{distributed.rank()}.json").write_text(json.dumps(seen))
    sys.exit(main(sys.argv[2:]))
    """
)


def test_a_process_listing_the_cache_late_loses_no_rows(tmp_path: Path) -> None:
    run_two_processes(tmp_path, SLOW_LISTER, embed_args(write_clips(tmp_path, n=11)))
    assert [json.loads((tmp_path / f"frames{r}.json").read_text()) for r in range(2)] == [11, 11]
    assert len(FeatureStore.open(tmp_path / "two" / "sound.npy").ids) == 11
