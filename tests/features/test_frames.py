"""The frame cache: trainable audio encoders read cached log-mels, same outputs as decoding."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from modalign.config import load_config
from modalign.encoders.audio import ConvAudioEncoder, FrameAugment, augment_logmel
from modalign.errors import ConfigError, DataError
from modalign.features.frames import FrameCache, attach_frame_cache, fill_frame_cache
from modalign.features.store import write_features
from modalign.pipeline import build_parts

sf = pytest.importorskip("soundfile")


def write_clips(folder: Path, n: int = 9) -> list[str]:
    """n noisy tones of 0.2-1.5 s at three sample rates (so resampling runs)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        sr = (16000, 22050, 44100)[i % 3]
        t = np.arange(int(sr * rng.uniform(0.2, 1.5))) / sr
        wave = np.sin(2 * np.pi * 220 * (i + 1) * t) + 0.3 * rng.standard_normal(len(t))
        sf.write(folder / f"c{i}.wav", (0.3 * wave).astype(np.float32), sr)
        paths.append(str(folder / f"c{i}.wav"))
    return paths


def small_encoder(**options: object) -> ConvAudioEncoder:
    torch.manual_seed(0)
    return ConvAudioEncoder("sound", n_mels=24, channels=(12, 12, 16), output_dim=8, **options)  # type: ignore[arg-type]


def test_cached_frames_give_the_outputs_of_decoded_audio(tmp_path: Path) -> None:
    paths = write_clips(tmp_path)
    enc = small_encoder().eval()
    waves = [enc.load(p) for p in paths]
    assert waves[0].dim() == 1
    with torch.no_grad():
        reference = enc(enc.collate(waves))  # (B, 8): the front end over the padded batch
        attach_frame_cache(enc, paths, tmp_path / "frames", num_workers=0, progress=False)
        frames = [enc.load(p) for p in paths]
        assert frames[0].shape[0] == 24 and "standardised" in enc.collate(frames)
        cached = enc(enc.collate(frames))
    torch.testing.assert_close(cached, reference, rtol=0, atol=1e-6)


def test_frames_are_decoded_once_and_again_when_a_file_changes(tmp_path: Path) -> None:
    paths = write_clips(tmp_path, n=5)
    enc = small_encoder()
    cache = attach_frame_cache(enc, paths, tmp_path / "frames", num_workers=0, progress=False)
    assert len(cache) == 5
    assert fill_frame_cache(enc, paths, cache, num_workers=0, progress=False) == 0
    np.testing.assert_array_equal(cache.lookup(paths[1]), enc.decode_frames(paths[1]))
    sf.write(paths[1], np.zeros(800, np.float32), 8000)  # new size and mtime
    assert cache.lookup(paths[1]) is None
    assert enc.load(paths[1]).shape == (24, 1 + 1600 // 160)  # decoded on the fly meanwhile
    assert fill_frame_cache(enc, paths, cache, num_workers=1, progress=False) == 1
    np.testing.assert_array_equal(cache.lookup(paths[1]), enc.decode_frames(paths[1]))


def test_an_unreadable_clip_is_named(tmp_path: Path) -> None:
    paths = write_clips(tmp_path, n=3)
    Path(paths[2]).write_bytes(b"not audio")
    with pytest.raises(DataError, match=r"c2\.wav"):
        attach_frame_cache(small_encoder(), paths, tmp_path / "f", num_workers=0, progress=False)


def test_a_torn_shard_is_never_read(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    cache = FrameCache(folder, "k")
    cache.write(["a"], [np.ones((2, 3), np.float32)])
    # an orphan frames file (kill before the index rename), a temp file, a damaged index
    (folder / "shard-9-1.frames.npy").write_bytes(b"\x93NUMPY")
    (folder / ".shard-9-2.index.npz.x.tmp").write_bytes(b"PK")
    (folder / "shard-9-3.index.npz").write_bytes(b"not a zip")
    again = FrameCache(folder, "k")
    assert len(again) == 1
    np.testing.assert_array_equal(again.get("a"), np.ones((2, 3)))


def test_training_data_reads_frames_from_the_cache(tmp_path: Path) -> None:
    paths = write_clips(tmp_path, n=12)
    write_features(tmp_path / "t.npy", [f"t{i}" for i in range(12)], np.eye(12, dtype=np.float32))
    rows = [f"r{i},{Path(p).name},t{i}" for i, p in enumerate(paths)]
    (tmp_path / "m.csv").write_text("id,sound,text\n" + "\n".join(rows) + "\n")
    base = [
        f"data.manifest={tmp_path / 'm.csv'}",
        f"data.features.text={tmp_path / 't.npy'}",
        "data.min_rows=2",
        "model.encoders.sound.name=audio_conv",
        "model.encoders.sound.options={n_mels: 16, channels: [8], output_dim: 4}",
    ]
    parts = build_parts(load_config(None, [*base, f"data.frame_cache={tmp_path / 'fc'}"]))
    assert parts.data.batch([0, 3]).inputs["sound"]["standardised"].shape[:2] == (2, 16)
    assert len(list((tmp_path / "fc").glob("*/shard-*.index.npz"))) == 1
    plain = build_parts(load_config(None, [*base, "data.frame_cache=null"]))
    assert "wave" in plain.data.batch([0, 3]).inputs["sound"]


def test_augmentation_is_off_by_default_seeded_and_only_in_training(tmp_path: Path) -> None:
    paths = write_clips(tmp_path, n=6)
    aug = {"time_masks": 2, "freq_masks": 2, "gain_db": 6, "speed": [0.8, 1.2], "seed": 3}
    plain, a, b = small_encoder(dropout=0.0), small_encoder(dropout=0.0, augment=aug), small_encoder(dropout=0.0, augment=aug)  # fmt: skip
    for enc in (plain, a, b):
        attach_frame_cache(enc, paths, tmp_path / "frames", num_workers=0, progress=False)
    outs = [enc(enc.collate([enc.load(p) for p in paths])) for enc in (plain, a, b)]
    torch.testing.assert_close(outs[1], outs[2], rtol=0, atol=0)  # same seed, same draws
    assert not torch.allclose(outs[0], outs[1], atol=1e-3)
    fresh_plain, fresh_aug = small_encoder().eval(), small_encoder(augment=aug).eval()
    batch = fresh_aug.collate([fresh_aug.load(p) for p in paths])
    torch.testing.assert_close(fresh_plain(batch), fresh_aug(batch), rtol=0, atol=0)


def test_augment_logmel_against_hand_checks() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 10, 40)  # (B, M, T)
    valid = torch.tensor([40, 25, 7])
    out, lengths = augment_logmel(x, valid, FrameAugment(0, 0, 0, 0, speed=(2.0, 2.0)), g)
    assert lengths.tolist() == [20, 12, 4] and out.shape == (3, 10, 20)
    torch.testing.assert_close(out[0, :, 0], x[0, :, 0])  # align_corners keeps both ends
    torch.testing.assert_close(out[1, :, 11], x[1, :, 24])
    assert out[2, :, 4:].abs().sum() == 0  # zero padding
    out, lengths = augment_logmel(x, valid, FrameAugment(0, 0, 0, 0, gain_db=6.0), g)
    power_ratio = (out[:, :, :7].exp() - 1e-6) / (x[:, :, :7].exp() - 1e-6)  # (B, M, 7)
    for b in range(3):  # one gain per clip, within +-6 dB
        ratio = power_ratio[b]
        torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio), rtol=1e-3, atol=0)
        assert 10**-0.6 <= ratio.mean() <= 10**0.6
    out, _ = augment_logmel(
        x, valid, FrameAugment(time_masks=1, time_width=5, freq_masks=1, freq_width=3), g
    )
    for b in range(3):  # masked entries hold the clip's mean; at most 5 frames and 3 bands
        changed = out[b, :, : valid[b]] != x[b, :, : valid[b]]
        assert changed.any(0).sum() <= 5 + 40 and changed.any(1).sum() <= 3 + 10
        assert torch.allclose(out[b, :, : valid[b]][changed], x[b, :, : valid[b]].mean())


def test_unknown_augment_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="time_maks"):
        small_encoder(augment={"time_maks": 2})
    with pytest.raises(ConfigError, match="speed"):
        small_encoder(augment={"speed": [1.2, 0.8]})


def test_default_root_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from modalign.features.frames import default_frame_root

    monkeypatch.setenv("MODALIGN_CACHE_DIR", os.sep + "x")
    assert default_frame_root() == Path(os.sep, "x", "frames")
