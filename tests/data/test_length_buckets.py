"""``train.sampler: length_buckets``: the unique-group guarantee kept, less padding than shuffled
batches, every row once per epoch, and item lengths read from audio files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modalign.data.samplers import LengthBucketBatches, UniqueGroupBatches


def padding(batches: list[list[int]], lengths: np.ndarray) -> int:
    """Padded positions a batch of items padded to its longest would compute."""
    return int(sum(lengths[b].max() * len(b) - lengths[b].sum() for b in batches))


@pytest.mark.parametrize("groups_of", [1, 3])  # every row its own group / three rows a group
def test_batches_keep_groups_apart_and_pad_less(groups_of: int) -> None:
    rng = np.random.default_rng(0)
    rows = np.arange(3000)
    groups = rows // groups_of
    lengths = rng.integers(50, 300, len(rows))
    bucketed = LengthBucketBatches(rows, groups, lengths, batch_size=32, seed=1)
    plain = UniqueGroupBatches(rows, groups, batch_size=32, seed=1)
    for epoch in (0, 1):
        bucketed.set_epoch(epoch)
        plain.set_epoch(epoch)
        got = bucketed.global_batches()
        assert all(len(set(groups[b])) == len(b) for b in got)  # the guarantee of unique_groups
        assert padding(got, lengths) < 0.2 * padding(plain.global_batches(), lengths)
        if groups_of == 1:  # every row lands in exactly one batch (less the dropped tail)
            seen = np.concatenate(got)
            assert len(seen) == len(set(seen.tolist())) == len(rows) // 32 * 32
    bucketed.set_epoch(0)
    first = bucketed.global_batches()
    bucketed.set_epoch(1)
    assert bucketed.global_batches() != first  # a new shuffle each epoch
    again = LengthBucketBatches(rows, groups, lengths, batch_size=32, seed=1)
    assert again.global_batches() == first  # and the same one for the same (seed, epoch)


def test_batch_order_is_shuffled_not_sorted() -> None:
    rows = np.arange(6400)
    lengths = np.arange(6400)[::-1].copy()
    got = LengthBucketBatches(rows, rows, lengths, batch_size=32, seed=0).global_batches()
    longest = [int(lengths[b].max()) for b in got]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_audio_item_length_is_the_front_ends_frame_count(tmp_path: Path) -> None:
    sf = pytest.importorskip("soundfile")
    from modalign.encoders.audio import LogMelStatsEncoder

    enc = LogMelStatsEncoder("sound", max_seconds=1.0)
    for seconds, rate in (
        (0.37, 22050),
        (0.777, 48000),
        (0.5, 16000),
        (0.123, 44100),
        (2.5, 44100),
    ):
        path = tmp_path / f"{seconds}.wav"
        sf.write(path, np.zeros(int(seconds * rate), np.float32), rate)
        with torch.no_grad():
            frames = enc.front(enc.load(str(path))[None]).shape[-1]
        assert enc.item_length(str(path)) == frames
    assert enc.item_length(str(tmp_path / "missing.wav")) == 0


def test_a_run_trains_with_it_and_features_alone_are_refused(tmp_path: Path) -> None:
    sf = pytest.importorskip("soundfile")
    from tests.conftest import synthetic_config

    from modalign.config import load_config
    from modalign.errors import ConfigError
    from modalign.features.store import write_features
    from modalign.train.loop import Trainer, fit

    rng = np.random.default_rng(0)
    lines = []
    for i in range(40):
        sf.write(
            tmp_path / f"c{i}.wav", rng.standard_normal(int(rng.uniform(800, 4000))) * 0.1, 16000
        )
        lines.append(f"r{i},c{i}.wav,t{i}")
    (tmp_path / "m.csv").write_text("id,sound,text\n" + "\n".join(lines) + "\n")
    write_features(tmp_path / "t.npy", [f"t{i}" for i in range(40)], rng.standard_normal((40, 8)))
    cfg = load_config(None, [
        f"data.manifest={tmp_path / 'm.csv'}", f"data.features.text={tmp_path / 't.npy'}",
        "data.frame_cache=null", "model.encoders.sound.name=audio_conv",
        "model.encoders.sound.options={n_mels: 8, channels: [4], output_dim: 8}",
        "model.embed_dim=8", "train.batch_size=8", "train.epochs=1", "train.tensorboard=false",
        "train.sampler=length_buckets", "data.min_rows=2",
    ])  # fmt: skip
    trainer = Trainer(cfg, tmp_path / "run")
    lengths = trainer.sampler.lengths  # type: ignore[attr-defined]
    train = trainer.parts.data.rows("train")
    assert (lengths[train] > 0).all()
    trainer.fit()
    features_only = synthetic_config(tmp_path / "syn", ["train.sampler=length_buckets"], n=100)
    with pytest.raises(ConfigError, match="length_buckets: no modality"):
        fit(features_only, tmp_path / "run2")
