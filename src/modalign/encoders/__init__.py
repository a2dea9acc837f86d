"""Encoders: the registry, the base class and the built-ins (imported here so they register)."""

from modalign.encoders import audio, features, image, spectrogram, speech, text
from modalign.encoders.base import ENCODERS, Encoder, build_encoder

__all__ = [
    "ENCODERS",
    "Encoder",
    "audio",
    "build_encoder",
    "features",
    "image",
    "spectrogram",
    "speech",
    "text",
]
