"""Audio: decoding (soundfile), resampling, a log-mel front end in torch, and two encoders.

* ``audio_conv``: a small trainable convolutional network over log-mel spectrograms; clips of
  different lengths are padded in a batch and pooled over their valid frames only.
* ``audio_logmel_stats``: frozen features, the mean and standard deviation over time of each
  log-mel band (2 * n_mels values); cheap, cacheable, and a fair "no learning" audio baseline.

The mel filterbank follows librosa's defaults (Slaney mel scale, Slaney area normalisation), so a
spectrogram here matches ``librosa.feature.melspectrogram(..., center=True, pad_mode="constant")``.

Example:
    >>> front = LogMelSpectrogram(sample_rate=16000, n_fft=400, hop_length=160, n_mels=40)
    >>> front(torch.zeros(2, 16000)).shape
    torch.Size([2, 40, 101])

References:
    Slaney, 1998, "Auditory Toolbox" (mel scale); McFee et al., 2015, "librosa".
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from modalign import distributed
from modalign.encoders.base import ENCODERS, Encoder
from modalign.encoders.common import require
from modalign.errors import ConfigError, DataError
from modalign.memory import reuse_freed_memory

if TYPE_CHECKING:
    from modalign.features.frames import FrameCache


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    mel = hz / f_sp
    log_part = min_log_hz / f_sp + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log_part, mel)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(
        mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel
    )


def mel_filterbank(
    n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> torch.Tensor:
    """Triangular mel filters, Slaney-normalised (each has unit area in Hz): (n_fft // 2 + 1, n_mels).

    Example:
        >>> mel_filterbank(400, 40, 16000).shape
        torch.Size([201, 40])
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    fft_hz = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)  # (F,)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))  # (M + 2,)
    widths = np.diff(edges)  # (M + 1,)
    ramps = edges[:, None] - fft_hz[None, :]  # (M + 2, F): distance from each edge to each bin
    rising = -ramps[:-2] / widths[:-1, None]  # (M, F)
    falling = ramps[2:] / widths[1:, None]  # (M, F)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # Slaney: equal area per filter
    return torch.from_numpy(weights.T.astype(np.float32))


class LogMelSpectrogram(nn.Module):
    """Waveforms (B, T) -> natural-log mel power spectrogram (B, n_mels, 1 + T // hop_length).

    Frames are centred (the signal is zero-padded by n_fft // 2 on each side), with a periodic
    Hann window; ``log(mel + eps)`` keeps silence finite.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 400,
        hop_length: int = 160,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float | None = None,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.eps = n_fft, hop_length, eps
        self.window: torch.Tensor
        self.filters: torch.Tensor
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.register_buffer(
            "filters", mel_filterbank(n_fft, n_mels, sample_rate, f_min, f_max), persistent=False
        )

    def power(self, wave: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, F, frames)
        if torch.onnx.is_in_onnx_export():  # ONNX exporters cannot trace complex tensors
            return self.power_by_dft(wave)
        spec = torch.stft(
            wave.float(),
            self.n_fft,
            self.hop_length,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        return spec.real.square() + spec.imag.square()

    def power_by_dft(self, wave: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, F, frames)
        """:meth:`power` in real arithmetic: each hop-strided frame times the windowed cosine and
        sine rows of the DFT (a strided conv1d), the same sums ``torch.stft`` computes by FFT."""
        n_bins = self.n_fft // 2 + 1
        k = torch.arange(n_bins, device=wave.device, dtype=torch.float64)[:, None]  # (F, 1)
        t = torch.arange(self.n_fft, device=wave.device, dtype=torch.float64)[None, :]  # (1, n)
        angle = 2 * math.pi * ((k * t) % self.n_fft) / self.n_fft  # (F, n), reduced mod n_fft
        window = self.window.double()[None, :]
        basis = torch.cat([angle.cos() * window, angle.sin() * window]).float()  # (2F, n)
        padded = F.pad(wave.float()[:, None, :], (self.n_fft // 2, self.n_fft // 2))  # (B, 1, T')
        spec = F.conv1d(padded, basis[:, None, :], stride=self.hop_length)  # (B, 2F, frames)
        return spec[:, :n_bins].square() + spec[:, n_bins:].square()

    def forward(self, wave: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, M, frames)
        mel = torch.einsum("bft,fm->bmt", self.power(wave), self.filters)
        return torch.log(mel + self.eps)

    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Number of frames that overlap real samples, per clip of ``lengths`` samples."""
        return 1 + lengths // self.hop_length


def resample(wave: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono float32 signal (soxr if installed, else scipy's polyphase filter)."""
    if orig_rate == target_rate:
        return wave
    if importlib.util.find_spec("soxr") is not None:
        import soxr

        return np.asarray(
            soxr.resample(wave, orig_rate, target_rate, quality="HQ"), dtype=np.float32
        )
    from scipy.signal import resample_poly

    g = math.gcd(orig_rate, target_rate)
    return resample_poly(wave, target_rate // g, orig_rate // g).astype(np.float32)


def resampler_name() -> str:
    """Which resampler :func:`resample` uses here (its output, and so cached frames, depend on it)."""
    if importlib.util.find_spec("soxr") is not None:
        import soxr

        return f"soxr-HQ-{getattr(soxr, '__version__', '?')}"
    import scipy

    return f"scipy-resample_poly-{scipy.__version__}"


def load_audio(path: str | Path, sample_rate: int, max_seconds: float | None = None) -> np.ndarray:
    """Decode WAV/OGG/FLAC with soundfile, mix to mono, resample; crop to ``max_seconds``: (T,)."""
    sf = require("soundfile")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (T, channels)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise DataError(f"{path}: cannot decode audio ({err})") from None
    if max_seconds is not None:  # crop before resampling: long files cost nothing extra
        data = data[: math.ceil(max_seconds * rate)]
    wave = resample(np.ascontiguousarray(data.mean(axis=1)), int(rate), sample_rate)
    if max_seconds is not None:
        wave = wave[: int(max_seconds * sample_rate)]
    if wave.size == 0:
        raise DataError(f"{path}: audio file has no samples")
    return wave


@dataclass(frozen=True)
class FrameAugment:
    """On-the-fly augmentation of log-mel frames while training (SpecAugment-style, plus gain and speed).

    Each clip draws, from a generator seeded with ``seed`` (plus the process's rank): a speed
    factor uniform in ``speed`` (a time-stretch of its frames by linear interpolation: the
    duration changes, the pitch does not), a gain uniform in +-``gain_db`` decibels (applied to
    the mel power, exactly: the cached frames are ``log(mel + eps)``), then ``freq_masks`` bands
    of up to ``freq_width`` mels and ``time_masks`` spans of up to ``time_width`` frames set to
    the clip's mean log-mel. With per-band normalisation (``audio_conv``) a gain only changes
    frames near the ``eps`` floor.

    Example:
        >>> FrameAugment.from_options({"time_masks": 1, "speed": [0.9, 1.1]}).speed
        (0.9, 1.1)

    References:
        Park et al., 2019, "SpecAugment: A Simple Data Augmentation Method for Automatic Speech
        Recognition" (time and frequency masking); Ko et al., 2015, "Audio Augmentation for
        Speech Recognition" (speed perturbation).
    """

    time_masks: int = 2
    time_width: int = 20
    freq_masks: int = 2
    freq_width: int = 8
    gain_db: float = 0.0
    speed: tuple[float, float] = (1.0, 1.0)
    seed: int = 0

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> FrameAugment:
        """From an encoder's ``augment`` option; a ``ConfigError`` names an unknown key."""
        known = {f.name for f in fields(cls)}
        for key in options:
            if key not in known:
                raise ConfigError(
                    f"audio augment: unknown key {key!r}; valid keys: {', '.join(sorted(known))}"
                )
        aug = cls(**{**options, "speed": tuple(options.get("speed", (1.0, 1.0)))})
        if len(aug.speed) != 2 or not 0 < aug.speed[0] <= aug.speed[1]:
            raise ConfigError(
                f"audio augment: speed {list(aug.speed)} must be [low, high], 0 < low <= high"
            )
        return aug


def augment_logmel(
    logmel: torch.Tensor,
    valid: torch.Tensor,
    aug: FrameAugment,
    generator: torch.Generator,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply :class:`FrameAugment` to each clip of a padded batch.

    Args:
        logmel: (B, M, T) natural-log mel power. valid: (B,) frames that belong to each clip.
        aug: what to apply. generator: a CPU generator (the draws; seeded by the caller).
        eps: the front end's floor, to apply a gain to ``log(mel + eps)`` exactly.

    Returns:
        The augmented (B, M, T') batch (zero padding) and its (B,) valid frame counts.

    Example:
        >>> x, v = augment_logmel(torch.zeros(2, 4, 10), torch.tensor([10, 6]),
        ...                       FrameAugment(speed=(2.0, 2.0)), torch.Generator().manual_seed(0))
        >>> x.shape, v.tolist()
        (torch.Size([2, 4, 5]), [5, 3])
    """
    clips = [
        _augment_clip(logmel[b, :, : int(valid[b])], aug, generator, eps)  # (M, T_b')
        for b in range(logmel.shape[0])
    ]
    lengths = torch.tensor([c.shape[1] for c in clips], dtype=torch.int64, device=logmel.device)
    out = logmel.new_zeros(logmel.shape[0], logmel.shape[1], int(lengths.max()))  # (B, M, T')
    for b, c in enumerate(clips):
        out[b, :, : c.shape[1]] = c
    return out, lengths


def _augment_clip(
    x: torch.Tensor, aug: FrameAugment, generator: torch.Generator, eps: float
) -> torch.Tensor:
    """One clip's (M, T) valid log-mels, stretched, gained and masked: (M, T')."""

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    def randint(high: int) -> int:  # uniform in [0, high)
        return int(torch.randint(max(1, high), (), generator=generator))

    rate = uniform(*aug.speed)
    if rate != 1.0:
        size = max(1, round(x.shape[1] / rate))
        x = F.interpolate(x[None], size=size, mode="linear", align_corners=True)[0]
    if aug.gain_db:
        gain = 10.0 ** (uniform(-aug.gain_db, aug.gain_db) / 10.0)  # on power
        x = torch.log((x.exp() - eps).clamp_min(0.0) * gain + eps)
    else:
        x = x.clone()
    fill = x.mean()
    masks = ((0, aug.freq_masks, aug.freq_width), (1, aug.time_masks, aug.time_width))
    for axis, count, width in masks:
        for _ in range(count):
            span = randint(min(width, x.shape[axis]) + 1)
            start = randint(x.shape[axis] - span + 1)
            x.narrow(axis, start, span).fill_(fill)
    return x


class AudioFileEncoder(Encoder):
    """Base of audio encoders: ``load`` decodes a clip, ``collate`` zero-pads a batch.

    A batch is ``{"wave": (B, T_max) float, "lengths": (B,) int64}``, or, once a frame cache is
    attached (:func:`modalign.features.frames.attach_frame_cache`, which ``PairedData`` does for
    training), ``{"logmel": (B, n_mels, T_max) float, "frames": (B,) int64}`` (a view of
    (B, T_max, n_mels) memory, each frame's bands contiguous): ``load`` then
    reads a clip's log-mel frames from a memory map instead of decoding and resampling the file.
    Both give the same outputs (the front end runs per clip instead of per batch).
    """

    input_kind = "raw"
    reads_files = True

    def __init__(
        self,
        modality: str,
        output_dim: int,
        frozen: bool,
        sample_rate: int,
        max_seconds: float,
        n_mels: int,
    ) -> None:
        super().__init__(modality, output_dim, frozen=frozen)
        self.sample_rate, self.max_seconds, self.n_mels = (
            int(sample_rate),
            float(max_seconds),
            int(n_mels),
        )
        self.front = LogMelSpectrogram(sample_rate=self.sample_rate, n_mels=self.n_mels)
        self.frame_cache: FrameCache | None = None
        self.augment: FrameAugment | None = None
        self._augment_generator: torch.Generator | None = None

    def frame_key(self) -> str:
        """Identifies the front end's output (decoding, resampler, log-mel settings) for the frame cache."""
        f = self.front
        return f"logmel-v1:{self._prep_key()}:n_fft={f.n_fft}:hop={f.hop_length}:eps={f.eps}:{resampler_name()}"

    def decode_frames(self, path: str) -> np.ndarray:
        """Decode, resample and run the front end on one file: (frames, n_mels) float32."""
        wave = torch.from_numpy(load_audio(path, self.sample_rate, self.max_seconds))
        with torch.no_grad():
            logmel = self.front(wave[None].to(self.front.filters.device))[0]  # (M, frames)
        return logmel.T.contiguous().cpu().numpy()

    def item_length(self, cell: str) -> int:
        """Frames the front end gives ``cell`` (from the frame cache, else the file's header),
        for batching clips of similar lengths (``train.sampler: length_buckets``)."""
        frames = self.frame_cache.lookup(cell) if self.frame_cache is not None else None
        if frames is not None:
            return int(frames.shape[0])
        import soundfile as sf

        try:
            info = sf.info(cell)
        except (RuntimeError, OSError):  # unreadable: loading it will say why
            return 0
        seconds = min(info.frames / max(info.samplerate, 1), self.max_seconds)
        samples = math.ceil(seconds * self.sample_rate - 1e-9)  # as resampling rounds up
        return 1 + samples // self.front.hop_length

    def use_frames(self, cache: FrameCache | None) -> None:
        """Make ``load`` return log-mel frames read from ``cache`` (None: decode waves again)."""
        self.frame_cache = cache

    def load(self, cell: str) -> torch.Tensor:
        if self.frame_cache is None:
            return torch.from_numpy(load_audio(cell, self.sample_rate, self.max_seconds))
        frames = self.frame_cache.lookup(cell)  # (frames, M) view of a memory map, or None
        if frames is None:  # a file added or changed since the cache was filled
            frames = self.decode_frames(cell)
        # a copy: numpy's, then shared (torch.tensor copies 1.2-1.6x slower)
        return torch.from_numpy(np.array(frames)).T  # (M, frames)

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        if items[0].dim() == 2:  # log-mel frames from the frame cache: (M, frames) each
            frames = torch.tensor([x.shape[1] for x in items], dtype=torch.int64)
            # frames-last memory, as the cache stores them and the fast blocks read them:
            # each clip's rows are one contiguous copy
            rows = torch.zeros(len(items), int(frames.max()), items[0].shape[0])  # (B, T, M)
            for i, x in enumerate(items):
                rows[i, : x.shape[1]] = x.T
            return {"logmel": rows.transpose(1, 2), "frames": frames}  # (B, M, T) view
        lengths = torch.tensor([len(x) for x in items], dtype=torch.int64)
        wave = torch.zeros(len(items), int(lengths.max()))
        for i, x in enumerate(items):
            wave[i, : len(x)] = x
        return {"wave": wave, "lengths": lengths}

    def logmel_and_mask(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mels (B, M, frames) and a float mask (B, 1, frames) of frames inside each clip.

        In training mode with ``augment`` set, the log-mels are augmented (:func:`augment_logmel`).
        """
        device = self.front.filters.device
        if "logmel" in batch:
            logmel, valid = batch["logmel"].to(device), batch["frames"].to(device)  # (B,)
        else:
            logmel = self.front(batch["wave"].to(device))
            valid = self.front.frames(batch["lengths"].to(device))  # (B,)
        if self.training and self.augment is not None:
            if self._augment_generator is None:  # each process draws its own augmentations
                seed = self.augment.seed + 1_000_003 * distributed.rank()
                self._augment_generator = torch.Generator().manual_seed(seed)
            logmel, valid = augment_logmel(
                logmel, valid, self.augment, self._augment_generator, self.front.eps
            )
        return logmel, frame_mask(valid, logmel.shape[-1], logmel.dtype)

    def _prep_key(self) -> str:
        return f"sr={self.sample_rate}:max={self.max_seconds}:mels={self.n_mels}"


def frame_mask(valid: torch.Tensor, frames: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, frames) mask of ``dtype``, 1 on the first ``valid[b]`` frames of each clip.

    Example:
        >>> frame_mask(torch.tensor([2, 3]), 3, torch.float32)[:, 0].tolist()
        [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    """
    return (torch.arange(frames, device=valid.device) < valid[:, None])[:, None].to(dtype)


def masked_mean_std(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over the last axis of ``x`` (B, C, T), counting only frames where mask (B, 1, T) is 1."""
    count = mask.sum(-1).clamp_min(1.0)  # (B, 1)
    mean = (x * mask).sum(-1) / count  # (B, C)
    var = (((x - mean[..., None]) ** 2) * mask).sum(-1) / count
    return mean, var.clamp_min(0.0).sqrt()


@ENCODERS.register("audio_logmel_stats")
class LogMelStatsEncoder(AudioFileEncoder):
    """Frozen features: per-band mean and std of the log-mel spectrogram over time (2 * n_mels).

    Example:
        >>> enc = LogMelStatsEncoder("sound", n_mels=8)
        >>> batch = enc.collate([torch.randn(1600), torch.randn(800)])
        >>> enc(batch).shape
        torch.Size([2, 16])
    """

    frozen_default = True

    def __init__(
        self,
        modality: str,
        input_dim: int | None = None,
        sample_rate: int = 16000,
        n_mels: int = 64,
        max_seconds: float = 10.0,
    ) -> None:
        super().__init__(modality, 2 * n_mels, True, sample_rate, max_seconds, n_mels)

    def cache_key(self) -> str:
        return f"audio_logmel_stats:{self._prep_key()}"

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # -> (B, 2 * n_mels)
        logmel, mask = self.logmel_and_mask(batch)
        mean, std = masked_mean_std(logmel, mask)
        return torch.cat([mean, std], dim=-1)


@ENCODERS.register("audio_conv")
class ConvAudioEncoder(AudioFileEncoder):
    """A trainable 1-D conv net over log-mels: (conv-BN-GELU-maxpool) blocks, then masked mean+max pooling.

    Log-mel bands are the input channels; each block halves the time axis. The log-mels are
    standardised per band over each clip (instance normalisation), so loudness does not dominate.
    ``augment`` (a mapping of :class:`FrameAugment` fields; None: off) augments the log-mels of
    each training batch; training reads them from the frame cache (``data.frame_cache``).
    ``fast`` runs the blocks as :func:`conv_blocks_channels_last` (False: the plain reference,
    :func:`conv_blocks_reference`; same weights, outputs within 1e-5). Training on a CPU keeps
    freed memory in the process for the next step (:func:`modalign.memory.reuse_freed_memory`).

    Example:
        >>> enc = ConvAudioEncoder("sound", n_mels=16, channels=(8, 8), output_dim=12)
        >>> enc(enc.collate([torch.randn(4000), torch.randn(1000)])).shape
        torch.Size([2, 12])
    """

    def __init__(
        self,
        modality: str,
        input_dim: int | None = None,
        sample_rate: int = 16000,
        n_mels: int = 64,
        max_seconds: float = 5.0,
        channels: Sequence[int] = (64, 128, 128, 256),
        output_dim: int = 256,
        dropout: float = 0.1,
        frozen: bool = False,
        augment: Mapping[str, Any] | None = None,
        fast: bool = True,
    ) -> None:
        super().__init__(modality, output_dim, frozen, sample_rate, max_seconds, n_mels)
        self.fast = bool(fast)
        self.augment = None if augment is None else FrameAugment.from_options(augment)
        blocks: list[nn.Module] = []
        width = n_mels
        for out in channels:
            blocks.append(
                nn.Sequential(nn.Conv1d(width, out, 3, padding=1), nn.BatchNorm1d(out), nn.GELU())
            )
            width = out
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width, output_dim))
        if frozen:
            self.requires_grad_(False)

    def cache_key(self) -> str:
        return f"audio_conv:{self._prep_key()}:untrained-random-weights"

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        """As :meth:`AudioFileEncoder.collate`, except that frames from the frame cache are
        standardised here, clip by clip, when nothing augments them (``augment`` None): the
        batch is ``{"standardised": (B, n_mels, T_max), "frames": (B,)}`` (a view of
        (B, T_max, n_mels) memory, 0 on padding). Each clip's frames are then normalised while
        they are in cache, by the loader (in a thread or a worker beside the step), instead of
        in passes over the whole padded batch in the step; the same maths as :meth:`forward`'s."""
        if self.augment is not None or items[0].dim() != 2:
            return super().collate(items)
        frames = torch.tensor([x.shape[1] for x in items], dtype=torch.int64)
        rows = np.empty((len(items), int(frames.max()), items[0].shape[0]), np.float32)  # (B, T, M)
        for i, x in enumerate(items):  # x: (M, T_i), a view of (T_i, M) memory
            standardise_clip(x.numpy().T, out=rows[i, : x.shape[1]])
            rows[i, x.shape[1] :] = 0.0  # padding
        return {"standardised": torch.from_numpy(rows).transpose(1, 2), "frames": frames}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # -> (B, output_dim)
        x: torch.Tensor | None = None
        if "standardised" in batch:  # standardised by ``collate``: (B, M, T)
            x = batch["standardised"].to(self.front.filters.device)
            mask = frame_mask(batch["frames"].to(x.device), x.shape[-1], x.dtype)
        else:
            logmel, mask = self.logmel_and_mask(batch)  # (B, M, T), (B, 1, T)
        if self.training and mask.device.type == "cpu":
            reuse_freed_memory()  # once per process: a step's activations reuse freed pages
        if self.fast and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            if x is None:
                x = standardise_frames_last(logmel, mask)  # (B, M, T) view of (B, T, M) memory
            pooled = mean_max_channels_last(self.blocks, x, mask[:, 0].sum(-1).to(torch.int64))
            return self.out(pooled)
        # the reference; a trace must not bake in this batch's clip lengths (the fast path
        # indexes them)
        if x is None:
            mean, std = masked_mean_std(logmel, mask)
            x = (logmel - mean[..., None]) / (std[..., None] + 1e-3) * mask  # padding is 0
        x, mask = conv_blocks_reference(self.blocks, x, mask)
        avg = (x * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)  # (B, C)
        top = x.masked_fill(mask == 0, float("-inf")).amax(-1)  # (B, C)
        return self.out(torch.cat([avg, top], dim=-1))


def standardise_clip(frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """One clip's (T, M) log-mel frames standardised per band over its T frames, as
    ``audio_conv`` does: ``(frames - mean) / (std + 1e-3)`` (biased std), into ``out``.

    In numpy: a call on one clip's frames costs a microsecond or two where a torch operation
    costs several, and ``collate`` makes five per clip.

    Example:
        >>> x = torch.randn(50, 4) * 3 + 1
        >>> mean, std = masked_mean_std(x.T[None], torch.ones(1, 1, 50))
        >>> plain = (x.T - mean[0, :, None]) / (std[0, :, None] + 1e-3)
        >>> np.allclose(standardise_clip(x.numpy()), plain.T.numpy(), atol=1e-5)
        True
    """
    count = np.float32(len(frames))
    centred = frames - np.add.reduce(frames, axis=0) / count  # (T, M)
    scale = np.sqrt(np.einsum("tm,tm->m", centred, centred) / count) + np.float32(1e-3)  # (M,)
    return np.divide(centred, scale, out=out)


def standardise_frames_last(logmel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``audio_conv``'s per-band standardisation, written frames-last for the fast blocks.

    The same maths as ``(logmel - mean) / (std + 1e-3) * mask`` with :func:`masked_mean_std`
    (within float rounding), in 6 passes over the batch (4 of them writing) instead of 10 and a
    layout copy: the means are a batched product with the mask.

    Args:
        logmel: (B, M, T) log-mels. mask: (B, 1, T) float, 1 on the frames inside each clip.

    Returns:
        (B, M, T), a view of (B, T, M) memory (each frame's bands contiguous); 0 on padding.

    Example:
        >>> x, mask = torch.randn(2, 3, 5), torch.tensor([[[1.0] * 5], [[1.0] * 2 + [0.0] * 3]])
        >>> mean, std = masked_mean_std(x, mask)
        >>> plain = (x - mean[..., None]) / (std[..., None] + 1e-3) * mask
        >>> torch.allclose(standardise_frames_last(x, mask), plain, atol=1e-6)
        True
    """
    if torch.is_grad_enabled() and logmel.requires_grad:  # out= has no gradient
        mean, std = masked_mean_std(logmel, mask)
        plain = (logmel - mean[..., None]) / (std[..., None] + 1e-3) * mask
        return plain.transpose(1, 2).contiguous().transpose(1, 2)
    rows = logmel.transpose(1, 2)  # (B, T, M): the collated memory when it is frames-last
    mask = mask.to(logmel.dtype)  # (a product takes one dtype)
    count = mask.sum(-1)[..., None].clamp_min(1.0)  # (B, 1, 1)
    mean = torch.bmm(mask, rows) / count  # (B, 1, M): one read, nothing written
    centred = torch.sub(rows, mean).mul_(mask.transpose(1, 2))  # (B, T, M), 0 on padding
    std = (torch.mul(centred, centred).sum(1, keepdim=True) / count).sqrt()  # (B, 1, M)
    return centred.mul_(1.0 / (std + 1e-3)).transpose(1, 2)


def conv_blocks_reference(
    blocks: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``audio_conv``'s (conv-BN-GELU-maxpool) blocks in plain ops: the reference of the fast path.

    Args:
        blocks: (Conv1d, BatchNorm1d, GELU) triples. x: (B, C, T) inputs, 0 on padding.
        mask: (B, 1, T) float, 1 on the frames inside each clip.

    Returns:
        (B, C', T') outputs, 0 on padding, and their (B, 1, T') mask (T' = ceil(T / 2^blocks)).
    """
    for block in blocks:
        # re-zero the padding after every block, so a clip's output does not depend on how
        # much padding its batch needed; a pooled frame is valid if any of its inputs was
        x = block(x).masked_fill(mask == 0, float("-inf"))  # padding never wins the max
        x = F.max_pool1d(x, 2, ceil_mode=True)  # (B, C, ceil(T / 2))
        mask = F.max_pool1d(mask, 2, ceil_mode=True)  # (B, 1, ceil(T / 2))
        x = x.masked_fill(mask == 0, 0.0)
    return x, mask


class _BatchNormRows(torch.autograd.Function):
    """Training-mode batch norm over the rows of several (N_i, C) tensors and ``extra`` virtual
    rows that all equal ``value`` (C,): one set of statistics per column, two-pass.

    The virtual rows stand for the padding frames the reference computes and the fast blocks
    skip: a convolution over all-zero inputs gives exactly its bias, and the reference's batch
    norm counts those frames in its statistics. Their outputs are never used, so their upstream
    gradient is 0; ``value``'s gradient (the convolution's bias) gets theirs through the mean
    and variance.

    torch's own kernel for a (N, C) or channels-last input sums N rows one after another in
    float32: on 128 clips x 301 frames its outputs are 20x, and the network's gradients 100x,
    further from a float64 reference than the (B, C, T) kernel's. Here every sum is torch's
    cascaded (pairwise-like) reduction and the variance is taken around the mean.
    """

    @staticmethod
    def forward(  # -> each (N_i, C) normalised, batch mean (C,), biased variance (C,)
        ctx: Any,
        weight: torch.Tensor,
        bias: torch.Tensor,
        value: torch.Tensor,
        extra: int,
        eps: float,
        *rows: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        n = sum(x.shape[0] for x in rows) + extra
        mean = (sum(x.sum(0) for x in rows) + extra * value) / n  # (C,)
        centred = [x - mean for x in rows]  # (N_i, C)
        # the outputs' memory serves first for the squares: a fresh (N, C) block costs page
        # faults comparable to the arithmetic, so each pass reuses one
        outs = [torch.mul(c, c) for c in centred]
        var = (sum(o.sum(0) for o in outs) + extra * (value - mean).square()) / n
        invstd = torch.rsqrt(var + eps)
        scale = weight * invstd
        for c, o in zip(centred, outs, strict=True):
            torch.addcmul(bias, c, scale, out=o)
        ctx.save_for_backward(invstd, weight, value - mean, *centred)
        ctx.n, ctx.extra = n, extra
        ctx.mark_non_differentiable(mean, var)
        return (*outs, mean, var)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        invstd, weight, value_centred, *centred = ctx.saved_tensors
        grads = grads[: len(centred)]  # (the mean and the variance have none)
        n = ctx.n
        grad_sum = sum(g.sum(0) for g in grads)  # (C,)
        grad_x = [torch.mul(g, c) for g, c in zip(grads, centred, strict=True)]
        dot = sum(gx.sum(0) for gx in grad_x)  # (C,): sum of grad * (x - mean)
        scale = weight * invstd
        # d/dx of w * (x - mean) * invstd + b, through the batch's mean and variance
        slope = -scale * invstd * invstd * dot / n
        shift = -scale * grad_sum / n
        for g, c, gx in zip(grads, centred, grad_x, strict=True):
            torch.addcmul(shift, g, scale, out=gx).addcmul_(c, slope)
        grad_value = ctx.extra * (shift + value_centred * slope)  # the virtual rows' gradient
        return dot * invstd, grad_sum, grad_value, None, None, *grad_x


def batch_norm_rows(
    norm: nn.Module,
    rows: torch.Tensor | Sequence[torch.Tensor],
    extra: int = 0,
    value: torch.Tensor | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """``norm`` (a ``BatchNorm1d``) over (N, C) rows, as ``norm(x)`` but accurate in float32.

    Args:
        norm: the batch norm. rows: one (N, C) tensor, or several (N_i, C) normalised together
            (one set of statistics). extra: virtual rows, all equal to ``value`` (C,) (default
            0), counted in the statistics but not returned (:class:`_BatchNormRows`).

    Returns:
        The normalised rows, as given (a tensor or a list).

    In training mode the batch statistics come from :class:`_BatchNormRows` and the running
    statistics are updated as ``nn.BatchNorm1d`` does (unbiased variance, ``momentum`` or a
    cumulative mean when it is None); in eval mode, or for a norm without affine parameters or
    running statistics, torch's kernel runs (an eval-mode norm is a per-column affine map).

    Example:
        >>> norm, x = nn.BatchNorm1d(3), torch.randn(50, 3)
        >>> torch.allclose(batch_norm_rows(norm, x), nn.BatchNorm1d(3)(x), atol=1e-5)
        True
        >>> y = batch_norm_rows(nn.BatchNorm1d(3), [x[:20], x[20:45]], 5, x[45])
        >>> torch.allclose(torch.cat(y), norm(torch.cat([x[:45], x[45:46].expand(5, 3)]))[:45], atol=1e-5)
        True
    """
    bn = cast("nn.BatchNorm1d", norm)
    parts = [rows] if isinstance(rows, torch.Tensor) else list(rows)
    if not (
        isinstance(bn, nn.BatchNorm1d) and bn.training and bn.affine and bn.track_running_stats
    ):
        if extra:
            raise ValueError("batch_norm_rows: virtual rows need batch statistics (training)")
        outs = [cast("torch.Tensor", bn(x)) for x in parts]
    else:
        n = sum(x.shape[0] for x in parts) + extra
        if n == 1:  # as torch's batch norm: one value has no variance
            raise ValueError("Expected more than 1 value per channel when training, got 1 row")
        fill = value if value is not None else parts[0].new_zeros(parts[0].shape[1])
        *outs, mean, var = _BatchNormRows.apply(bn.weight, bn.bias, fill, extra, bn.eps, *parts)
        _update_running_stats(bn, mean, var, n)
    return outs[0] if isinstance(rows, torch.Tensor) else outs


def _update_running_stats(
    bn: nn.BatchNorm1d, mean: torch.Tensor, var: torch.Tensor, n: int
) -> None:
    """As ``nn.BatchNorm1d`` in training: unbiased variance; ``momentum`` or a cumulative mean."""
    tracked = cast("torch.Tensor", bn.num_batches_tracked)
    with torch.no_grad():
        tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(tracked)
        cast("torch.Tensor", bn.running_mean).lerp_(mean, momentum)
        cast("torch.Tensor", bn.running_var).lerp_(var * (n / max(n - 1, 1)), momentum)


class _PairMax(torch.autograd.Function):
    """Masked max over pairs of frames, (B, T, C) -> (B, ceil(T / 2), C), as the reference's
    ``max_pool1d(x, 2, ceil_mode=True)`` along T with the padding at -inf and the pooled padding
    re-zeroed: a clip's last frame alone in its pair (odd length) is kept, a pair of padding
    frames gives 0, and the gradient of a tie goes to the first frame of its pair. One pass
    writes the pooled frames, and two bool masks (which frame of each pair gets the gradient)
    stand in for max-pooling's int64 indices, the -inf fill and the masking's copies.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        batch, frames, width = x.shape
        half, pooled = frames // 2, (frames + 1) // 2
        first, second = x[:, 0 : 2 * half : 2], x[:, 1 : 2 * half : 2]  # (B, T // 2, C) views
        out = x.new_empty(batch, pooled, width)
        torch.maximum(first, second, out=out[:, :half])
        if frames % 2:  # the lone last frame
            out[:, half] = x[:, -1]
        # float masks: a product with a bool mask runs 2x slower (torch 2.13 CPU)
        to_first = torch.ge(first, second, out=x.new_empty(first.shape))  # (B, T // 2, C)
        # an odd clip's last pair mixes its last frame with padding: the frame wins alone
        odd = ((valid % 2 == 1) & (valid < frames)).nonzero().squeeze(1)  # (K,)
        last = valid[odd] // 2  # (K,)
        out[odd, last] = first[odd, last]
        to_first[odd, last] = 1.0
        keep = (torch.arange(pooled, device=x.device) < ((valid + 1) // 2)[:, None]).to(x.dtype)
        keep = keep[:, :, None]  # (B, T', 1)
        out.mul_(keep)  # (B, T', C): pairs of padding give 0
        ctx.save_for_backward(to_first, keep)
        ctx.frames = frames
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        to_first, keep = ctx.saved_tensors  # (B, T // 2, C), (B, T', 1)
        batch, half, width = to_first.shape
        kept = grad * keep  # (B, T', C): none to pairs of padding
        out = grad.new_empty(batch, ctx.frames, width)  # (B, T, C)
        pairs = out[:, : 2 * half].view(batch, half, 2, width)  # (B, T // 2, 2, C) view
        first = torch.mul(kept[:, :half], to_first, out=pairs[:, :, 0])  # (torch.where: 5x slower)
        torch.sub(kept[:, :half], first, out=pairs[:, :, 1])  # exact: to_first is 0 or 1
        if ctx.frames % 2:  # the lone last frame of an odd-length batch
            out[:, -1:] = kept[:, half:]
        return out, None


def group_length(longest: int, frames: int, levels: int) -> int:
    """Frames a group of clips needs, its longest ``longest`` frames, to give the fast blocks'
    exact results when the whole batch has ``frames``: at each of ``levels`` halvings it keeps
    the frame after its longest clip wherever the whole batch has it (that frame's convolution
    output sees the clip's last frame, and batch norm counts it); every frame beyond is the
    convolution's bias alone, which batch norm counts without computing.

    Example:
        >>> group_length(100, 301, 4), group_length(101, 301, 4), group_length(300, 301, 4)
        (105, 105, 301)
    """
    for start in range(min(longest + 1, frames), frames + 1):
        size, clip, full = start, longest, frames
        for _ in range(levels):
            if size < min(clip + 1, full):
                break
            size, clip, full = (size + 1) // 2, (clip + 1) // 2, (full + 1) // 2
        else:
            return start
    return frames


def split_by_length(
    valid: torch.Tensor, frames: int, levels: int, groups: int = 4
) -> list[tuple[torch.Tensor, int]]:
    """Split a padded batch into ``groups`` groups of clips of similar length, each padded less.

    Args:
        valid: (B,) frames of each clip. frames: the batch's padded length. levels: the blocks.
        groups: how many groups (of equal counts, by length).

    Returns:
        (indices into the batch, the group's frames: :func:`group_length`) per group; one group
        of the whole batch when splitting would save under 10% of the frames.

    Example:
        >>> [(i.tolist(), n) for i, n in split_by_length(torch.tensor([90, 10, 100, 12]), 100, 2, 2)]
        [([1, 3], 13), ([0, 2], 100)]
    """
    batch = len(valid)
    order = torch.argsort(valid, stable=True)
    bounds = [round(i * batch / groups) for i in range(groups + 1)]
    parts = []
    for start, stop in itertools.pairwise(bounds):
        if stop > start:
            idx = order[start:stop]
            parts.append((idx, group_length(int(valid[idx[-1]]), frames, levels)))
    if sum(len(idx) * n for idx, n in parts) > 0.9 * batch * frames:
        return [(torch.arange(batch, device=valid.device), frames)]
    return parts


def _splittable(blocks: nn.ModuleList) -> bool:
    """Whether every block's norm can take virtual padding rows (:func:`batch_norm_rows`)."""
    norms = [list(block.children())[1] for block in blocks]
    return all(
        # without running statistics, batch norm uses the batch's own in eval mode as well
        isinstance(n, nn.BatchNorm1d) and n.track_running_stats and (not n.training or n.affine)
        for n in norms
    )


def conv_blocks_channels_last(
    blocks: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`conv_blocks_reference`, the same maths laid out for speed on a CPU (same outputs within 1e-5).

    The batch is split into groups of clips of similar length (:func:`split_by_length`), each
    padded only as far as its own longest clip needs: a third of a randomly drawn batch of 1-3 s
    clips is padding, which the reference convolves, normalises and pools. Batch norm's
    statistics still count every padding frame the reference computes, the ones no group
    computes as virtual rows that equal the convolution's bias (:func:`batch_norm_rows`).
    Every block works on frames-last memory: (B, T, C), each frame's channels contiguous. The
    convolution is oneDNN's on a channels-last (B, C, 1, T) view of it, batch norm runs on the
    (B * T, C) rows, GELU on the same rows, and the max-pool over pairs of frames
    (:class:`_PairMax`) reads them in place: no layout copy between operations. Max-pooling
    sends the gradient to the first maximum of a pair, as before.
    ``benchmarks/bench_audio_step.py`` times it against the reference.

    Args and Returns: as :func:`conv_blocks_reference`.

    Example:
        >>> enc = ConvAudioEncoder("sound", n_mels=4, channels=(3, 5), output_dim=2)
        >>> x, mask = torch.randn(2, 4, 9), (torch.arange(9) < torch.tensor([[9], [4]])).float()
        >>> fast = conv_blocks_channels_last(enc.blocks, x * mask[:, None], mask[:, None])
        >>> plain = conv_blocks_reference(enc.blocks, x * mask[:, None], mask[:, None])
        >>> [torch.allclose(a, b, atol=1e-5) for a, b in zip(fast, plain)]
        [True, True]
    """
    valid = mask[:, 0].sum(-1).to(torch.int64)  # (B,) frames inside each clip
    batch = x.shape[0]
    parts, hs, _, frames = _blocks_by_groups(blocks, x, valid)
    if len(parts) == 1:
        h = hs[0]
    else:  # back in the batch's order, zero-padded to the batch's frames
        h = hs[0].new_zeros(batch, frames, hs[0].shape[2])  # (B, T', C)
        for (idx, _), part in zip(parts, hs, strict=True):
            h[idx, : part.shape[1]] = part
    for _ in blocks:
        valid = (valid + 1) // 2
    keep = torch.arange(frames, device=h.device) < valid[:, None]  # (B, T')
    return h.transpose(1, 2), keep[:, None, :].to(h.dtype)


def _blocks_by_groups(
    blocks: nn.ModuleList, x: torch.Tensor, valid: torch.Tensor
) -> tuple[list[tuple[torch.Tensor, int]], list[torch.Tensor], list[torch.Tensor], int]:
    """The fast blocks over groups of clips of similar length (:func:`split_by_length`).

    Args:
        blocks: the (conv, batch norm, GELU) blocks. x: (B, C, T) inputs, 0 on padding, any
            layout (frames-last memory is read without a copy). valid: (B,) frames per clip.

    Returns:
        The groups (batch indices, frames), each group's (B_g, T_g', C') outputs, its (B_g,)
        valid output frames, and the batch's output frames T'.
    """
    batch, frames = x.shape[0], x.shape[-1]
    whole = [(torch.arange(batch, device=x.device), frames)]
    parts = split_by_length(valid, frames, len(blocks)) if _splittable(blocks) else whole
    rows_first = x.transpose(1, 2)  # (B, T, C)
    if len(parts) == 1:
        hs = [rows_first.contiguous()]
    else:  # each group's clips, cropped to the group's frames: (B_g, T_g, C)
        hs = [torch.index_select(rows_first[:, :n], 0, idx) for idx, n in parts]
    valids = [valid[idx] for idx, _ in parts]
    for block in blocks:
        hs, frames = _block_groups(block, hs, valids, batch * frames), (frames + 1) // 2
        valids = [(v + 1) // 2 for v in valids]  # a pooled frame is valid if any input was
    return parts, hs, valids, frames


def mean_max_channels_last(
    blocks: nn.ModuleList, x: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """``audio_conv``'s fast blocks, then each clip's mean and max over its valid output frames:
    (B, 2 * C'), as :func:`conv_blocks_channels_last` and the masked mean and max of
    ``ConvAudioEncoder.forward``, but pooled group by group: the groups' outputs are never
    put back into one padded (B, T', C') batch (a zero fill, a scatter and their backward).

    Args:
        blocks: the blocks. x: (B, C, T) standardised inputs, 0 on padding. valid: (B,) frames.

    Example:
        >>> enc = ConvAudioEncoder("sound", n_mels=4, channels=(3, 5), output_dim=2)
        >>> x, valid = torch.randn(3, 4, 9), torch.tensor([9, 4, 2])
        >>> x = x * (torch.arange(9) < valid[:, None])[:, None]
        >>> h, mask = conv_blocks_channels_last(enc.blocks, x, (torch.arange(9) < valid[:, None])[:, None].float())
        >>> plain = torch.cat([(h * mask).sum(-1) / mask.sum(-1), h.masked_fill(mask == 0, -torch.inf).amax(-1)], -1)
        >>> torch.allclose(mean_max_channels_last(enc.blocks, x, valid), plain, atol=1e-6)
        True
    """
    parts, hs, valids, _ = _blocks_by_groups(blocks, x, valid)
    pooled = []
    for h, v in zip(hs, valids, strict=True):  # (B_g, T_g', C'), (B_g,)
        keep = (torch.arange(h.shape[1], device=h.device) < v[:, None]).to(h.dtype)  # (B_g, T_g')
        avg = torch.bmm(keep[:, None], h)[:, 0] / v[:, None].clamp_min(1)  # (B_g, C')
        top = h.masked_fill(keep[..., None] == 0, float("-inf")).amax(1)  # (B_g, C')
        pooled.append(torch.cat([avg, top], dim=-1))
    if len(parts) == 1:
        return pooled[0]
    order = torch.argsort(torch.cat([idx for idx, _ in parts]))  # back in the batch's order
    return torch.cat(pooled)[order]


def _block_groups(
    block: nn.Module, hs: list[torch.Tensor], valids: list[torch.Tensor], full: int
) -> list[torch.Tensor]:
    """One (conv, batch norm, GELU, pair max) block over groups of (B_g, T_g, C) frames-last
    clips; ``full``: the frames the reference computes (B * T), the rest counted as virtual."""
    conv, norm, act = cast("tuple[nn.Conv1d, nn.Module, nn.Module]", tuple(block.children()))
    rows = []
    # the weight in the inputs' layout once, not a copy per group (and its gradient summed once)
    weight = conv.weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    for h in hs:  # (B_g, T_g, C) memory seen as a channels-last (B_g, C, 1, T_g) tensor
        y = F.conv2d(h.transpose(1, 2).unsqueeze(2), weight, conv.bias, padding=(0, 1))
        rows.append(y.squeeze(2).transpose(1, 2).reshape(-1, y.shape[1]))  # (B_g * T_g, C') view
    extra = full - sum(r.shape[0] for r in rows) if norm.training else 0
    normed = batch_norm_rows(norm, rows, extra, conv.bias)
    return [
        _PairMax.apply(act(r).view(h.shape[0], h.shape[1], r.shape[1]), v)
        for r, h, v in zip(normed, hs, valids, strict=True)
    ]
