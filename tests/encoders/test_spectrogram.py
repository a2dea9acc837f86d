"""``audio_efficientnet``: the spectrogram image against numpy, the network path against a
direct call, and features that do not depend on the batch a clip came in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modalign.encoders import build_encoder
from modalign.encoders.audio import LogMelSpectrogram, load_audio
from modalign.encoders.spectrogram import SpectrogramCNNEncoder, spectrogram_image

sf = pytest.importorskip("soundfile")
pytest.importorskip("efficientnet_lite_pytorch")


@pytest.fixture(scope="module")
def encoder() -> SpectrogramCNNEncoder:
    return SpectrogramCNNEncoder("sound", n_mels=32, min_frames=48)


def write_clip(path: Path, seconds: float, freq: float, rate: int = 22050) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) * np.exp(-t) + 0.01 * np.sin(2 * np.pi * 3 * freq * t)
    sf.write(path, wave.astype(np.float32), rate)
    return path


def test_spectrogram_image_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    logmel = rng.normal(size=(6, 5)).astype(np.float32)
    got = spectrogram_image(torch.from_numpy(logmel), min_frames=9).numpy()
    padded = np.concatenate([logmel, np.full((6, 4), logmel.min(), np.float32)], axis=1)
    want = ((padded - padded.mean()) / (padded.std(ddof=1) + 1e-5))[::-1]
    assert got.shape == (1, 3, 6, 9)
    for channel in got[0]:
        np.testing.assert_allclose(channel, want, atol=1e-5)
    long = spectrogram_image(torch.from_numpy(logmel), min_frames=3)  # long enough: no padding
    assert long.shape == (1, 3, 6, 5)


def test_features_equal_a_direct_network_call(
    tmp_path: Path, encoder: SpectrogramCNNEncoder
) -> None:
    path = write_clip(tmp_path / "a.wav", 1.3, 440.0)
    with torch.no_grad():
        got = encoder(encoder.collate([encoder.load(str(path))]))[0]
        wave = torch.from_numpy(load_audio(path, 16000, 10.0))
        logmel = LogMelSpectrogram(16000, n_mels=32)(wave[None])[0]  # (32, frames)
        image = spectrogram_image(logmel, 48)
        maps = encoder.cnn.net.extract_features(image.contiguous())  # (1, 1280, h, w)
        freq_mean = maps.mean(2)[0]  # (1280, w)
        want = torch.cat([freq_mean.mean(-1), freq_mean.amax(-1)])
    assert got.shape == (2560,)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_a_clip_does_not_depend_on_its_batch(
    tmp_path: Path, encoder: SpectrogramCNNEncoder
) -> None:
    short = write_clip(tmp_path / "short.wav", 0.2, 300.0)  # fewer frames than min_frames
    long = write_clip(tmp_path / "long.wav", 2.0, 900.0)
    with torch.no_grad():
        alone = encoder(encoder.collate([encoder.load(str(short))]))
        batched = encoder(encoder.collate([encoder.load(str(long)), encoder.load(str(short))]))
    torch.testing.assert_close(batched[1:], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched[0], batched[1])
    assert torch.isfinite(batched).all()


def test_cache_key_names_the_front_end(encoder: SpectrogramCNNEncoder) -> None:
    other = build_encoder("audio_efficientnet", "sound", None, {"n_mels": 64, "min_frames": 48})
    assert other.cache_key() != encoder.cache_key()
    assert encoder.frozen and not any(p.requires_grad for p in encoder.parameters())


def test_training_the_cnn_is_refused() -> None:
    from modalign.errors import ConfigError

    with pytest.raises(ConfigError, match="frozen: false is not supported"):
        build_encoder("audio_efficientnet", "sound", None, {"frozen": False})
