"""Spoken audio embedded by what is said: speech recognition, then a text encoder.

``speech_text`` is the classic cascade: a transcriber turns each clip into words, and a frozen
text encoder (``sentence_transformer`` by default) embeds the transcript. Unlike log-mel
statistics, its features carry the content of an utterance, so a spoken "A frog." lands near the
written caption "Frog" with no training at all. Transcribers are registered in ``TRANSCRIBERS``:

* ``pocketsphinx``: CMU PocketSphinx with the US-English acoustic model, language model and
  dictionary that ship inside the PyPI package (``pip install 'modalign[speech]'``); runs on a
  CPU, offline, one to two seconds per short utterance on a busy 2-core machine.
* ``hf_asr``: a transformers ``automatic-speech-recognition`` pipeline over a local model folder
  (Whisper, wav2vec2, ...), for users who have one.

A clip that yields no words is embedded as the empty string (the text encoder's embedding of
""), so every clip gets a row and such clips all look alike.

Example:
    >>> "pocketsphinx" in TRANSCRIBERS and "hf_asr" in TRANSCRIBERS
    True
    >>> TRANSCRIBERS.get("hf_asr")(16000, model="/no/such/folder")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    modalign.errors.ConfigError: hf_asr transcriber: model folder /no/such/folder not found...

References:
    Huggins-Daines et al., 2006, "PocketSphinx: A Free, Real-Time Continuous Speech Recognition
    System for Hand-Held Devices" (ICASSP); Reimers & Gurevych, 2019, "Sentence-BERT";
    Radford et al., 2022, "Robust Speech Recognition via Large-Scale Weak Supervision" (Whisper).
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modalign.encoders.audio import load_audio, resample, resampler_name
from modalign.encoders.base import ENCODERS, Encoder, build_encoder
from modalign.encoders.common import hash_files, require, weight_files
from modalign.errors import ConfigError
from modalign.registry import Registry


class Transcriber:
    """Speech to text: ``transcribe`` a mono float waveform (T,) at ``sample_rate`` into words.

    Subclasses register a name in ``TRANSCRIBERS`` and take ``(sample_rate, **options)``.
    ``identity`` must change whenever a transcript could change (it is part of the encoder's
    cache key, which names the feature cache and is checked when a run is loaded).
    ``in_workers`` says whether it may run in forked DataLoader workers (one copy each).
    """

    #: PocketSphinx is a small C library made anew in each worker; a model pipeline that may sit
    #: on a GPU or use many threads stays in the main process.
    in_workers = False

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = int(sample_rate)

    def transcribe(self, wave: np.ndarray) -> str:
        """The words spoken in ``wave`` (T,) float32 in [-1, 1]; "" when none are heard."""
        raise NotImplementedError

    def identity(self) -> str:
        """Program version, model weights and options: what decides the transcripts."""
        raise NotImplementedError


TRANSCRIBERS: Registry[type[Transcriber]] = Registry("transcriber")

#: PocketSphinx options that name model files or folders (hashed into ``identity``).
_SPHINX_FILES = ("hmm", "lm", "dict", "fdict", "jsgf", "kws", "fsg", "lmctl", "mllr", "allphone")
#: Options that change the log, not the transcripts.
_SPHINX_QUIET = ("loglevel", "logfn")


@TRANSCRIBERS.register("pocketsphinx")
class PocketSphinxTranscriber(Transcriber):
    in_workers = True

    """CMU PocketSphinx, decoding whole utterances (``full_utt``) from 16-bit PCM.

    PocketSphinx normalises cepstra by a running mean (live CMN) that carries over from one
    utterance to the next, so a clip would be heard differently after different clips. Each clip
    therefore starts from a fresh feature state; with ``passes=2`` (the default) it is decoded
    twice and the second transcript kept: the first pass adapts the mean to the clip's own
    speaker and channel. Either way a transcript depends on its clip alone, which the feature
    cache needs. On the 65 Tux Paint spoken descriptions, description-to-caption Recall@1 (with
    all-MiniLM-L6-v2) is 0.45 with two passes, 0.37 with one, 0.40 carrying the mean over; on
    synthesised speech (espeak-ng, ``benchmarks/bench_speech.py``) one and two passes tie.

    Args:
        sample_rate: of the waves given to ``transcribe`` (the packaged model wants 16000).
        passes: 1 or 2 decodings per clip (2: adapted normalisation, twice the time).
        **options: PocketSphinx configuration (``hmm``, ``lm``, ``dict``, ``beam``, ...);
            default the US-English model inside the package, logging only fatal errors.

    Example:
        >>> sphinx = build_transcriber("pocketsphinx", 16000, {})
        >>> sphinx.transcribe(np.zeros(800, dtype=np.float32))  # 50 ms of silence: no words
        ''
        >>> sphinx.identity().startswith("pocketsphinx-5.1.1:")
        True

    References:
        Huggins-Daines et al., 2006, "PocketSphinx" (ICASSP).
    """

    def __init__(self, sample_rate: int = 16000, passes: int = 2, **options: Any) -> None:
        super().__init__(sample_rate)
        if passes not in (1, 2):
            raise ConfigError(f"pocketsphinx transcriber: passes {passes!r} must be 1 or 2")
        self.passes = int(passes)
        self._ps = require("pocketsphinx", extra="speech")
        self.options = {"loglevel": "FATAL", **options, "samprate": self.sample_rate}
        try:
            config = self._ps.Config(**self.options)  # resolves the packaged model's paths
        except (KeyError, ValueError, TypeError) as err:
            raise ConfigError(f"pocketsphinx transcriber: bad option ({err})") from None
        self.files = {k: config[k] for k in _SPHINX_FILES if config[k] is not None}
        self._decoder: Any = None  # made on first use: each DataLoader worker makes its own

    def identity(self) -> str:
        paths: list[Path] = []
        for key, value in sorted(self.files.items()):
            path = Path(value)
            if not path.exists():
                raise ConfigError(f"pocketsphinx transcriber: {key} {value} not found")
            paths += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        options = {
            k: v for k, v in self.options.items() if k not in (*_SPHINX_FILES, *_SPHINX_QUIET)
        }
        version = importlib.metadata.version("pocketsphinx")
        return f"pocketsphinx-{version}:{hash_files(paths)}:passes={self.passes}:{sorted(options.items())}"

    def transcribe(self, wave: np.ndarray) -> str:
        if self._decoder is None:
            try:
                self._decoder = self._ps.Decoder(**self.options)
            except RuntimeError as err:
                raise ConfigError(f"pocketsphinx transcriber: cannot start ({err})") from None
        pcm = (np.clip(wave, -1.0, 1.0) * 32767).astype(np.int16).tobytes()  # (T,) 16-bit
        self._decoder.reinit_feat()  # forget the normalisation of earlier clips
        for _ in range(self.passes):  # a first pass adapts the normalisation to this clip
            self._decoder.start_utt()
            self._decoder.process_raw(pcm, full_utt=True)
            self._decoder.end_utt()
        hyp = self._decoder.hyp()
        return str(hyp.hypstr).strip() if hyp is not None else ""

    def __getstate__(self) -> dict[str, Any]:  # the decoder is not picklable; made again on use
        return {**self.__dict__, "_decoder": None, "_ps": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._ps = require("pocketsphinx", extra="speech")


@TRANSCRIBERS.register("hf_asr")
class HFPipelineTranscriber(Transcriber):
    """A transformers ``automatic-speech-recognition`` pipeline over a local model folder.

    Args:
        sample_rate: of the waves given to ``transcribe`` (resampled to the model's own rate).
        model: the local folder (Whisper, wav2vec2, ... saved with ``save_pretrained``).
        device: where the model runs (``cpu``, ``cuda``, ...).
        generate_kwargs: passed to generation (e.g. ``{"language": "en"}`` for Whisper).

    References:
        Wolf et al., 2020, "Transformers"; Radford et al., 2022 (Whisper); Baevski et al., 2020
        (wav2vec 2.0).
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        model: str | None = None,
        device: str = "cpu",
        generate_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(sample_rate)
        folder = Path(model).expanduser() if model else None
        if folder is None or not folder.is_dir():
            raise ConfigError(
                f"hf_asr transcriber: model folder {folder} not found (give "
                "transcriber_options.model: a local Whisper or wav2vec2 folder)"
            )
        transformers = require("transformers", extra="speech")
        self.folder, self.generate_kwargs = folder, dict(generate_kwargs or {})
        self.pipe = transformers.pipeline(
            "automatic-speech-recognition", model=str(folder), device=device
        )
        self.model_rate = int(self.pipe.feature_extractor.sampling_rate)
        self._weights = hash_files(weight_files(folder))

    def identity(self) -> str:
        version = importlib.metadata.version("transformers")
        kwargs = sorted(self.generate_kwargs.items())
        return f"hf_asr-{version}:{self.folder.name}:{self._weights}:{kwargs}"

    def transcribe(self, wave: np.ndarray) -> str:
        wave = resample(np.asarray(wave, dtype=np.float32), self.sample_rate, self.model_rate)
        extra = {"generate_kwargs": self.generate_kwargs} if self.generate_kwargs else {}
        out = self.pipe({"raw": wave, "sampling_rate": self.model_rate}, **extra)
        return str(out["text"]).strip()


def build_transcriber(name: str, sample_rate: int, options: dict[str, Any]) -> Transcriber:
    """The transcriber registered as ``name``; a ``ConfigError`` for an unknown name."""
    if name not in TRANSCRIBERS:
        raise ConfigError(
            f"speech_text: transcriber {name!r} is unknown; known: {', '.join(TRANSCRIBERS.names())}"
        )
    cls = TRANSCRIBERS.get(name)
    try:
        inspect.signature(cls).bind(sample_rate, **options)
    except TypeError as err:
        raise ConfigError(f"speech_text: transcriber_options for {name!r}: {err}") from None
    return cls(sample_rate, **options)


@ENCODERS.register("speech_text")
class SpeechTextEncoder(Encoder):
    """Spoken audio -> transcript (``transcriber``) -> sentence embedding (``text`` encoder).

    Frozen by nature: recognition is not differentiable, so ``modalign embed`` computes the
    features once and training reads them from the feature file. A run trained on them rebuilds
    this encoder when loaded (``modalign.load``) and embeds new recordings the same way. It has no
    ONNX export (the recogniser is not a graph); other modalities of such a run still export.

    Args:
        modality: modality name. input_dim: unused (raw encoder).
        transcriber: a key of ``TRANSCRIBERS`` (``pocketsphinx`` or ``hf_asr``).
        transcriber_options: the transcriber's options (``pocketsphinx``: ``passes`` and
            PocketSphinx settings; ``hf_asr``: ``model``, a local folder, which it needs).
        text: the text encoder's registry name; it must read inline texts.
        text_options: its options (e.g. ``model``, ``normalize``).
        sample_rate: clips are decoded and resampled to this rate (Hz) for the transcriber.
        max_seconds: clips are cut to their first ``max_seconds`` seconds.
        frozen: must be True (False is refused).

    Returns:
        ``forward``: (B, text encoder's output_dim) embeddings of the B transcripts; an empty
        transcript is embedded as "".

    Example:
        >>> enc = SpeechTextEncoder("speech")
        >>> x = enc(enc.collate([torch.zeros(800)]))  # 50 ms of silence, embedded as ""
        >>> x.shape, bool(torch.allclose(x, enc.text(enc.text.collate([""]))))
        (torch.Size([1, 384]), True)

    References:
        Huggins-Daines et al., 2006, "PocketSphinx"; Reimers & Gurevych, 2019, "Sentence-BERT".
    """

    input_kind = "raw"
    reads_files = True
    frozen_default = True
    preferred_batch_size = 16  # recognition dominates; small batches show progress often

    def __init__(
        self,
        modality: str,
        input_dim: int | None = None,
        transcriber: str = "pocketsphinx",
        transcriber_options: dict[str, Any] | None = None,
        text: str = "sentence_transformer",
        text_options: dict[str, Any] | None = None,
        sample_rate: int = 16000,
        max_seconds: float = 30.0,
        frozen: bool = True,
    ) -> None:
        if not frozen:
            raise ConfigError(
                "speech_text: frozen: false is not supported (speech recognition is not trained)"
            )
        recogniser = build_transcriber(
            transcriber, int(sample_rate), dict(transcriber_options or {})
        )
        identity = recogniser.identity()  # before loading the text model: bad paths fail fast
        text_encoder = _build_text_encoder(modality, text, dict(text_options or {}))
        super().__init__(modality, text_encoder.output_dim, frozen=True)
        self.text, self.transcriber, self._transcriber_id = text_encoder, recogniser, identity
        self.sample_rate, self.max_seconds = int(sample_rate), float(max_seconds)

    def load(self, cell: str) -> str | torch.Tensor:
        """One file's transcript where the transcriber may run where files are read (in
        ``modalign embed``, the DataLoader workers, one recogniser each, beside the text model);
        otherwise its waveform (T,), transcribed by ``forward`` in this process."""
        if self.transcriber.in_workers:
            return self.transcribe(cell)
        return torch.from_numpy(load_audio(cell, self.sample_rate, self.max_seconds))

    def collate(self, items: Sequence[Any]) -> dict[str, Any]:
        """Transcripts (from ``load``) as ``{"texts": [...]}``; waveforms (T,) as zero-padded
        ``{"wave": (B, T_max), "lengths": (B,)}``, transcribed by ``forward``."""
        if all(isinstance(x, str) for x in items):
            return {"texts": list(items)}
        if any(isinstance(x, str) for x in items):
            raise TypeError("speech_text.collate: transcripts and waveforms in one batch")
        lengths = torch.tensor([len(x) for x in items], dtype=torch.int64)
        wave = torch.zeros(len(items), int(lengths.max()) if len(items) else 0)
        for i, x in enumerate(items):
            wave[i, : len(x)] = x
        return {"wave": wave, "lengths": lengths}

    def transcripts(self, batch: dict[str, Any]) -> list[str]:
        """The transcript of each clip of a collated batch (padding cut off first)."""
        if "texts" in batch:
            return list(batch["texts"])
        wave, lengths = batch["wave"].cpu(), batch["lengths"].cpu()
        return [
            self.transcriber.transcribe(wave[i, : int(n)].numpy()) for i, n in enumerate(lengths)
        ]

    def transcribe(self, path: str | Path) -> str:
        """The transcript of one audio file, as ``forward`` computes it (decoded the same way)."""
        return self.transcriber.transcribe(load_audio(path, self.sample_rate, self.max_seconds))

    def cache_key(self) -> str:
        prep = f"sr={self.sample_rate}:max={self.max_seconds}:{resampler_name()}"
        return f"speech_text:{self._transcriber_id}:{prep}|{self.text.cache_key()}"

    def train(self, mode: bool = True) -> SpeechTextEncoder:
        """Frozen: the text encoder stays in eval mode (no dropout) even inside a training model."""
        super().train(mode)
        self.text.eval()
        return self

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:  # (B, output_dim)
        texts = [self.text.load(t) for t in self.transcripts(batch)]
        return self.text(self.text.collate(texts))


def _build_text_encoder(modality: str, name: str, options: dict[str, Any]) -> Encoder:
    """The text encoder of ``speech_text``: registered, reading inline texts, frozen."""
    if name not in ENCODERS:
        raise ConfigError(
            f"speech_text: text encoder {name!r} is unknown; known: {', '.join(ENCODERS.names())}"
        )
    cls = ENCODERS.get(name)
    if cls.input_kind != "raw" or cls.reads_files:
        raise ConfigError(f"speech_text: text encoder {name!r} does not read texts")
    if options.get("frozen") is False:
        raise ConfigError("speech_text: the text encoder must stay frozen (text_options.frozen)")
    try:
        inspect.signature(cls).bind(modality, None, **options)
    except TypeError as err:
        raise ConfigError(f"speech_text: text_options for {name!r}: {err}") from None
    encoder = build_encoder(name, modality, None, options)
    encoder.requires_grad_(False)
    return encoder.eval()
