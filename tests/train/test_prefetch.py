"""Training with batches read in a background thread (``Trainer(prefetch=...)``) equals training
with batches read between the steps, and the default turns it on only where it can pay."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modalign.config import load_config
from modalign.features.store import write_features
from modalign.train.checkpoint import load_checkpoint
from modalign.train.loop import Trainer

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import synthetic_config

sf = pytest.importorskip("soundfile")


def audio_config(folder: Path, frame_cache: str, n: int = 12, *extra: str) -> object:
    """``audio_conv`` over n short clips paired with text features; dropout in both towers."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        t = np.arange(int(16000 * rng.uniform(0.2, 0.9))) / 16000
        wave = np.sin(2 * np.pi * 150 * (i + 1) * t) + 0.3 * rng.standard_normal(len(t))
        sf.write(folder / f"c{i}.wav", (0.3 * wave).astype(np.float32), 16000)
        rows.append(f"r{i},c{i}.wav,t{i}")
    write_features(folder / "t.npy", [f"t{i}" for i in range(n)], rng.standard_normal((n, 6), dtype=np.float32))  # fmt: skip
    (folder / "m.csv").write_text("id,sound,text\n" + "\n".join(rows) + "\n")
    return load_config(
        None,
        [
            f"data.manifest={folder / 'm.csv'}",
            f"data.features.text={folder / 't.npy'}",
            "data.split_fractions={train: 1.0}",
            f"data.frame_cache={frame_cache}",
            "model.encoders.sound.name=audio_conv",
            "model.encoders.sound.options={n_mels: 16, channels: [8, 8], output_dim: 8}",
            "model.embed_dim=8",
            "model.head.dropout=0.2",  # masks from the global generator, drawn by the steps
            "train.batch_size=4",
            "train.epochs=2",
            "train.log_every=1",
            "train.num_threads=1",
            "train.tensorboard=false",
            *extra,
        ],
    )


@pytest.mark.parametrize("frames", [True, False])
def test_prefetched_batches_train_the_same_run(tmp_path: Path, frames: bool) -> None:
    """Also: with frames, the first run fills the cache and the second reads it; filling it
    (DataLoader workers) draws nothing from the run's generator."""
    cfg = audio_config(tmp_path, str(tmp_path / "fc") if frames else "null")
    trainers = {}
    for prefetch in (False, True):
        trainer = Trainer(cfg, tmp_path / str(prefetch), prefetch=prefetch)  # type: ignore[arg-type]
        assert trainer._prefetches() is prefetch
        trainer.fit()
        trainers[prefetch] = trainer
    ours, plain = trainers[True].model.state_dict(), trainers[False].model.state_dict()
    assert ours.keys() == plain.keys()
    for name in ours:
        assert torch.equal(ours[name], plain[name]), name
    last = [load_checkpoint(tmp_path / str(p) / "last.pt")["model"] for p in (True, False)]
    assert all(torch.equal(last[0][k], last[1][k]) for k in last[0])
    logs = [(tmp_path / str(p) / "metrics.jsonl").read_text() for p in (True, False)]
    assert logs[0] == logs[1] and logs[0].count('"train/loss":') == 6


@pytest.mark.parametrize(
    ("cores", "threads", "workers", "local", "expected"),
    [
        (2, 1, 0, 1, True),  # one-thread steps leave a core to the reading
        (2, 2, 0, 1, False),  # the steps hold both cores
        (1, 1, 0, 1, False),
        (2, 1, 2, 1, False),  # worker processes read instead
        (2, 1, 0, 2, False),  # two torchrun processes: a core each
        (8, 1, 0, 2, True),
    ],
)
def test_the_default_prefetches_raw_inputs_beside_steps_that_leave_a_core(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cores: int,
    threads: int,
    workers: int,
    local: int,
    expected: bool,
) -> None:
    import modalign.train.loop as loop

    monkeypatch.setattr(loop, "usable_cores", lambda: cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local))
    cfg = audio_config(tmp_path, str(tmp_path / "fc"), 8, f"train.num_workers={workers}")
    trainer = Trainer(cfg, tmp_path / "run")  # type: ignore[arg-type]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        assert trainer._prefetches() is expected
        # features from stores only: a gather per batch, no thread
        store_only = Trainer(synthetic_config(tmp_path / "syn", n=300), tmp_path / "syn-run")
        assert store_only._prefetches() is False
    finally:
        torch.set_num_threads(before)


def test_the_reading_threads_setting_does_not_outlive_the_run(tmp_path: Path) -> None:
    """The reader runs one intra-op thread; torch makes a thread's setting the default of
    threads started later, so ``fit`` restores the caller's."""
    import threading

    def in_a_new_thread() -> int:
        seen: list[int] = []
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        return seen[0]

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cfg = audio_config(
            tmp_path, str(tmp_path / "fc"), 8, "train.epochs=1", "train.num_threads=2"
        )
        Trainer(cfg, tmp_path / "run", prefetch=True).fit()  # type: ignore[arg-type]
        assert torch.get_num_threads() == 2 and in_a_new_thread() == 2
    finally:
        torch.set_num_threads(before)
