"""Audio front end against independent numpy references; encoders on generated and real clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from modalign.encoders.audio import (
    AudioFileEncoder,
    ConvAudioEncoder,
    LogMelSpectrogram,
    LogMelStatsEncoder,
    _PairMax,
    batch_norm_rows,
    conv_blocks_channels_last,
    conv_blocks_reference,
    group_length,
    hz_to_mel,
    load_audio,
    masked_mean_std,
    mel_filterbank,
    mel_to_hz,
    resample,
    split_by_length,
    standardise_frames_last,
)

sf = pytest.importorskip("soundfile")
TUX_OGG = Path("/usr/share/tuxpaint/stamps/animals/marsupials/koala.ogg")


def reference_filterbank(n_fft: int, n_mels: int, sr: int) -> np.ndarray:
    """Hand-built Slaney filterbank, one triangle and one bin at a time: (n_mels, n_fft // 2 + 1)."""

    def mel(f: float) -> float:  # Slaney's Auditory Toolbox scale
        return f / (200 / 3) if f < 1000 else 15 + np.log(f / 1000) / (np.log(6.4) / 27)

    def hz(m: float) -> float:
        return m * (200 / 3) if m < 15 else 1000 * np.exp((m - 15) * np.log(6.4) / 27)

    points = [hz(m) for m in np.linspace(mel(0.0), mel(sr / 2), n_mels + 2)]
    out = np.zeros((n_mels, n_fft // 2 + 1))
    for i in range(n_mels):
        left, centre, right = points[i], points[i + 1], points[i + 2]
        for j in range(n_fft // 2 + 1):
            f = j * sr / n_fft
            if left < f <= centre:
                out[i, j] = (f - left) / (centre - left)
            elif centre < f < right:
                out[i, j] = (right - f) / (right - centre)
        out[i] *= 2 / (right - left)
    return out


def test_mel_scale_round_trip() -> None:
    hz = np.array([0.0, 500.0, 1000.0, 4000.0, 8000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-9, atol=1e-9)
    assert float(hz_to_mel(1000.0)) == pytest.approx(15.0)


@pytest.mark.parametrize(("n_fft", "n_mels", "sr"), [(400, 64, 16000), (512, 40, 22050)])
def test_filterbank_matches_hand_built_reference(n_fft: int, n_mels: int, sr: int) -> None:
    mine = mel_filterbank(n_fft, n_mels, sr).numpy().T
    np.testing.assert_allclose(mine, reference_filterbank(n_fft, n_mels, sr), atol=1e-7)


def test_filterbank_matches_librosa_when_installed() -> None:
    librosa = pytest.importorskip("librosa", reason="librosa is an optional cross-check")
    np.testing.assert_allclose(
        mel_filterbank(400, 64, 16000).numpy().T,
        librosa.filters.mel(sr=16000, n_fft=400, n_mels=64),
        atol=1e-7,
    )


def test_logmel_matches_numpy_stft() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=5000).astype(np.float64)
    n_fft, hop = 400, 160
    padded = np.pad(x, n_fft // 2)  # centred frames, zero padding
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.stack(
        [padded[t * hop : t * hop + n_fft] * window for t in range(1 + len(x) // hop)]
    )
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, F)
    ref = np.log(power @ reference_filterbank(n_fft, 64, 16000).T + 1e-6).T  # (M, T)
    mine = LogMelSpectrogram(16000, n_fft, hop, 64)(torch.from_numpy(x).float()[None])[0].numpy()
    assert mine.shape == ref.shape
    np.testing.assert_allclose(mine, ref, atol=2e-3)


def test_resample_keeps_a_tone() -> None:
    sr_in, sr_out, f = 44100, 16000, 440.0
    t = np.arange(sr_in) / sr_in
    y = resample(np.sin(2 * np.pi * f * t).astype(np.float32), sr_in, sr_out)
    assert abs(len(y) - sr_out) <= 1
    peak = np.argmax(np.abs(np.fft.rfft(y))) * sr_out / len(y)
    assert peak == pytest.approx(f, abs=2.0)


@pytest.mark.parametrize("fmt", ["WAV", "OGG", "FLAC"])
def test_load_audio_mixes_resamples_and_crops(tmp_path: Path, fmt: str) -> None:
    sr = 22050
    stereo = (
        np.stack([np.sin(np.arange(2 * sr) * 0.05), np.zeros(2 * sr)], axis=1).astype(np.float32)
        * 0.5
    )
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, stereo, sr, format=fmt)
    wave = load_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 32000) <= 2
    assert np.abs(wave).max() == pytest.approx(0.25, abs=0.03)  # mono = mean of the channels
    assert len(load_audio(path, 16000, max_seconds=0.5)) == 8000


def test_conv_encoder_ignores_batch_padding() -> None:
    torch.manual_seed(0)
    enc = ConvAudioEncoder("sound", n_mels=32, channels=(16, 16, 16), output_dim=8).eval()
    clip = torch.randn(3000)
    alone = enc(enc.collate([clip]))
    padded = enc(enc.collate([clip, torch.randn(20000)]))
    torch.testing.assert_close(alone[0], padded[0], atol=1e-5, rtol=1e-5)


def test_conv_encoder_trains() -> None:
    enc = ConvAudioEncoder("sound", n_mels=16, channels=(8,), output_dim=4)
    assert not enc.frozen and enc.input_kind == "raw"
    enc(enc.collate([torch.randn(4000), torch.randn(2000)])).sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_logmel_stats_on_generated_and_real_clips(tmp_path: Path) -> None:
    enc = LogMelStatsEncoder("sound")
    assert enc.frozen and enc.output_dim == 128
    path = tmp_path / "tone.ogg"
    sf.write(path, (0.3 * np.sin(np.arange(8000) * 0.2)).astype(np.float32), 8000, format="OGG")
    clips = [enc.load(str(path))]
    if TUX_OGG.exists():
        clips.append(enc.load(str(TUX_OGG)))
    feats = enc(enc.collate(clips))
    assert feats.shape == (len(clips), 128) and torch.isfinite(feats).all()
    torch.testing.assert_close(enc(enc.collate(clips[:1]))[0], feats[0], atol=1e-4, rtol=1e-4)


def frames_batch(lengths: list[int], n_mels: int = 24) -> dict[str, torch.Tensor]:
    """A padded log-mel batch as the frame cache gives it (not standardised, as it is when
    augmenting): clips of odd and even lengths."""
    gen = torch.Generator().manual_seed(1)
    enc = ConvAudioEncoder("sound", n_mels=n_mels, channels=(4,), output_dim=2)
    return AudioFileEncoder.collate(enc, [torch.randn(n_mels, n, generator=gen) for n in lengths])


def test_fast_blocks_run_in_float64_as_the_reference_does() -> None:
    fast, plain = twin_encoders(dropout=0.0)
    fast.double(), plain.double()
    batch = frames_batch([37, 20, 9])
    batch["logmel"] = batch["logmel"].double()
    torch.testing.assert_close(fast(batch), plain(batch), rtol=1e-10, atol=1e-10)
    waves = fast.collate(
        [torch.randn(4000, dtype=torch.float64), torch.randn(1500, dtype=torch.float64)]
    )
    assert fast(waves).dtype == torch.float64


@pytest.mark.parametrize("fast", [True, False])
def test_frames_standardised_by_collate_give_the_outputs_of_standardising_the_batch(
    fast: bool,
) -> None:
    gen = torch.Generator().manual_seed(2)
    clips = [torch.randn(24, n, generator=gen) * 3 - 7 for n in (37, 20, 1, 36, 9)]
    torch.manual_seed(0)
    enc = ConvAudioEncoder("sound", n_mels=24, channels=(12, 16), dropout=0.0, fast=fast)
    batch = enc.collate(clips)
    assert set(batch) == {"standardised", "frames"}
    assert batch["standardised"].transpose(1, 2).is_contiguous()  # frames last
    raw = AudioFileEncoder.collate(enc, clips)  # the batch forward standardises itself
    for mode in (enc.train, enc.eval):
        mode()
        torch.testing.assert_close(enc(batch), enc(raw), rtol=1e-5, atol=1e-5)
    augmenting = ConvAudioEncoder("sound", n_mels=24, augment={"time_masks": 1})
    assert set(augmenting.collate(clips)) == {"logmel", "frames"}  # augmented before standardising


def twin_encoders(**options: object) -> tuple[ConvAudioEncoder, ConvAudioEncoder]:
    """The fast and the reference blocks with the same weights."""
    pair = []
    for fast in (True, False):
        torch.manual_seed(0)
        pair.append(
            ConvAudioEncoder("sound", n_mels=24, channels=(12, 12, 16), fast=fast, **options)  # type: ignore[arg-type]
        )
    return pair[0], pair[1]


@pytest.mark.parametrize(
    "lengths", [[37, 20, 1, 36, 9, 2], [16, 16], [33], [5 + (7 * i) % 53 for i in range(24)]]
)
def test_channels_last_blocks_match_the_reference_in_training(lengths: list[int]) -> None:
    fast, plain = twin_encoders(dropout=0.0)
    batch = frames_batch(lengths)
    out_fast, out_plain = fast(batch), plain(batch)
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-5, atol=1e-5)
    (out_fast**2).sum().backward()
    (out_plain**2).sum().backward()
    largest = max(float(p.grad.abs().max()) for p in plain.parameters() if p.grad is not None)
    for (name, a), b in zip(fast.named_parameters(), plain.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        # a convolution's bias before batch norm has a zero gradient up to rounding: compare it
        # against the largest gradient; every other one against its own scale
        before_norm = name.startswith("blocks.") and name.endswith(".0.bias")
        scale = largest if before_norm else float(b.grad.abs().max())
        assert float((a.grad - b.grad).abs().max()) <= 1e-4 * scale, name
    for a, b in zip(fast.buffers(), plain.buffers(), strict=True):  # batch-norm running stats
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    fast.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(batch), plain(batch), rtol=1e-5, atol=1e-5)
    assert fast.state_dict().keys() == plain.state_dict().keys()


def test_channels_last_pooling_gives_a_tie_to_the_first_frame() -> None:
    # all-zero inputs make every window of every block a tie; max-pooling sends the gradient to
    # the first frame, which a symmetric max (half to each) would not: the input gradient differs.
    # Batch norm in eval mode: in training, a constant input has zero variance, and its gradient
    # is rounding noise times 1 / sqrt(eps) ** 3
    fast, plain = twin_encoders()
    grads = []
    for enc, blocks in ((fast, conv_blocks_channels_last), (plain, conv_blocks_reference)):
        enc.eval()
        x = torch.zeros(2, 24, 11, requires_grad=True)
        mask = (torch.arange(11) < torch.tensor([[11], [6]])).float()[:, None]  # (2, 1, 11)
        out, _ = blocks(enc.blocks, x * mask, mask)
        (out * torch.arange(1.0, out.shape[-1] + 1)).sum().backward()
        assert x.grad is not None
        grads.append(x.grad)
    assert float(grads[1].abs().max()) > 1e-3  # the check below can fail
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("frames", [8, 9])
def test_pair_max_matches_masked_max_pool(frames: int) -> None:
    """_PairMax against the reference's -inf fill, max_pool1d(ceil_mode) and re-zeroing, ties included."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (5, frames, 4), generator=gen).float()  # small integers: many ties
    valid = torch.tensor([frames, frames - 1, 3, 1, 4])
    grad = torch.randn(5, (frames + 1) // 2, 4, generator=gen)
    a = x.clone().requires_grad_()
    out = _PairMax.apply(a, valid)
    out.backward(grad)
    b = x.clone().requires_grad_()
    inside = (torch.arange(frames) < valid[:, None])[:, :, None]  # (B, T, 1)
    pooled = F.max_pool1d(b.masked_fill(~inside, float("-inf")).transpose(1, 2), 2, ceil_mode=True)
    kept = (torch.arange(pooled.shape[-1]) < ((valid + 1) // 2)[:, None])[:, None]  # (B, 1, T')
    ref = pooled.masked_fill(~kept, 0.0).transpose(1, 2)
    ref.backward(grad)
    assert torch.equal(out, ref)
    assert a.grad is not None and b.grad is not None
    assert torch.equal(a.grad, b.grad)
    assert float(a.grad[:, 1::2].abs().sum()) > 0  # second frames do win some pairs


def test_batch_norm_rows_matches_float64_batch_norm() -> None:
    """Outputs, gradients and running statistics against a float64 formula, at a size where
    torch's row-wise kernel (sums in row order) is measurably less accurate."""
    gen = torch.Generator().manual_seed(0)
    x64 = 0.5 * torch.randn(40000, 8, generator=gen, dtype=torch.float64) + 3.0
    grad64 = torch.randn(40000, 8, generator=gen, dtype=torch.float64) + 1.0
    norm = torch.nn.BatchNorm1d(8, momentum=None)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=gen), norm.bias.uniform_(-1, 1, generator=gen)
    w, b = norm.weight.detach().double(), norm.bias.detach().double()
    mean, var = x64.mean(0), x64.var(0, unbiased=False)
    g, xh = grad64, (x64 - mean) / torch.sqrt(var + norm.eps)
    grad_ref = (g - g.mean(0) - xh * (g * xh).mean(0)) * w / torch.sqrt(var + norm.eps)
    for rows in (batch_norm_rows, lambda n, v: n(v)):
        x = x64.float().requires_grad_()
        norm.reset_running_stats()
        out = rows(norm, x)
        out.backward(grad64.float())
        assert x.grad is not None
        err_out = float((out.detach().double() - (xh * w + b)).abs().max())
        err_grad = float((x.grad.double() - grad_ref).abs().max() / grad_ref.abs().max())
        if rows is batch_norm_rows:
            assert err_out < 4e-6 and err_grad < 4e-6, (err_out, err_grad)
            torch.testing.assert_close(norm.running_mean.double(), mean, rtol=0, atol=1e-6)
            unbiased = x64.var(0, unbiased=True)
            torch.testing.assert_close(norm.running_var.double(), unbiased, rtol=1e-5, atol=0)
            assert int(norm.num_batches_tracked) == 1
            ours = err_out
        else:  # torch's kernel: what the check above guards against
            assert err_out > 3 * ours, (err_out, ours)
    norm.eval()
    x = torch.randn(6, 8)
    torch.testing.assert_close(batch_norm_rows(norm, x), norm(x))


def test_standardise_frames_last_matches_the_plain_formula() -> None:
    batch = frames_batch([37, 20, 1, 36])
    logmel, mask = batch["logmel"], (torch.arange(37) < batch["frames"][:, None]).float()[:, None]
    mean, std = masked_mean_std(logmel, mask)
    plain = (logmel - mean[..., None]) / (std[..., None] + 1e-3) * mask
    fast = standardise_frames_last(logmel, mask)
    assert fast.transpose(1, 2).is_contiguous()  # frames last, as the fast blocks read it
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    leaf = logmel.clone().requires_grad_()  # the path with a gradient (no out= arguments)
    torch.testing.assert_close(standardise_frames_last(leaf, mask), plain, rtol=1e-5, atol=1e-5)


def test_batch_norm_rows_with_virtual_rows_matches_batch_norm_over_all_rows() -> None:
    """Groups of rows plus virtual rows equal to a vector: outputs, every gradient (the vector's
    included) and running statistics as torch's batch norm over all rows concatenated, float64."""
    gen = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, 5, generator=gen, dtype=torch.float64) + 2 for n in (7, 12)]
    value = torch.randn(5, generator=gen, dtype=torch.float64)
    grads = [torch.randn(n, 5, generator=gen, dtype=torch.float64) for n in (7, 12)]
    weight, bias = torch.rand(5, dtype=torch.float64) + 0.5, torch.randn(5, dtype=torch.float64)
    results = []
    for virtual in (True, False):
        norm = torch.nn.BatchNorm1d(5).double()
        with torch.no_grad():
            norm.weight.copy_(weight), norm.bias.copy_(bias)
        xs = [x.clone().requires_grad_() for x in parts]
        v = value.clone().requires_grad_()
        if virtual:
            outs = batch_norm_rows(norm, xs, 4, v)
        else:  # the virtual rows written out; their outputs unused (zero upstream gradient)
            full = norm(torch.cat([xs[0], v.expand(4, 5), xs[1]]))
            outs = [full[:7], full[11:]]
        torch.autograd.backward(list(outs), grads)
        grads_of = [t.grad for t in (*xs, v, norm.weight, norm.bias)]
        results.append((list(outs), grads_of, norm.running_mean.clone(), norm.running_var.clone()))
    (outs_a, grads_a, mean_a, var_a), (outs_b, grads_b, mean_b, var_b) = results
    for a, b in zip(
        [*outs_a, *grads_a, mean_a, var_a], [*outs_b, *grads_b, mean_b, var_b], strict=True
    ):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert float(grads_a[2].abs().max()) > 1e-3  # the virtual rows' gradient is not trivially 0


def test_group_length_is_the_shortest_that_keeps_every_edge_frame() -> None:
    """Against the definition, by brute force: at each halving the group's frames reach one past
    its longest clip wherever the whole batch's do; no shorter length does."""

    def keeps(size: int, longest: int, frames: int, levels: int) -> bool:
        for _ in range(levels):
            if size < min(longest + 1, frames):
                return False
            size, longest, frames = (size + 1) // 2, (longest + 1) // 2, (frames + 1) // 2
        return True

    for frames in range(1, 70):
        for longest in range(1, frames + 1):
            n = group_length(longest, frames, 4)
            assert longest <= n <= frames and keeps(n, longest, frames, 4)
            assert n == frames or not keeps(n - 1, longest, frames, 4) or n - 1 < longest


def test_split_by_length_groups_clips_and_skips_small_savings() -> None:
    valid = torch.tensor([5 + (7 * i) % 53 for i in range(24)])
    parts = split_by_length(valid, int(valid.max()), 3)
    assert len(parts) == 4
    assert sorted(torch.cat([i for i, _ in parts]).tolist()) == list(range(24))
    for idx, n in parts:
        assert int(valid[idx].max()) < n <= int(valid.max()) or n == int(valid.max())
    assert len(split_by_length(torch.tensor([50, 49, 50, 48]), 50, 3)) == 1


def test_fast_blocks_refuse_a_single_value_per_channel_in_training_as_the_reference_does() -> None:
    # one clip of 2 frames: the second block normalises 1 frame. torch's batch norm refuses it;
    # accepting it would pull the running variance towards 0 (the eval outputs blow up)
    fast, plain = twin_encoders(dropout=0.0)
    batch = frames_batch([2])
    for enc in (plain, fast):
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            enc(batch)
    second = fast.blocks[1][1]
    assert second.running_var is not None and float(second.running_var.min()) == 1.0  # untouched


def test_fast_blocks_match_the_reference_with_batch_statistics_in_eval_mode() -> None:
    # a batch norm without running statistics uses the batch's own in eval mode too: the groups
    # of clips must not be normalised each on its own
    from modalign.encoders.audio import conv_blocks_channels_last, conv_blocks_reference

    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(
        torch.nn.Sequential(
            torch.nn.Conv1d(c, 6, 3, padding=1),
            torch.nn.BatchNorm1d(6, track_running_stats=False),
            torch.nn.GELU(),
        )
        for c in (4, 6)
    ).eval()
    lengths = [40, 3, 38, 5, 2, 39, 4, 1]
    x = torch.randn(len(lengths), 4, 40)
    mask = (torch.arange(40)[None, :] < torch.tensor(lengths)[:, None]).float()[:, None, :]
    x = x * mask
    with torch.no_grad():
        fast, fast_mask = conv_blocks_channels_last(blocks, x, mask)
        plain, plain_mask = conv_blocks_reference(blocks, x, mask)
    torch.testing.assert_close(fast_mask, plain_mask)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
