"""Check an uploaded query file: declared content type, matching first bytes, size limit.

Example:
    >>> sniff(b"\\x89PNG\\r\\n\\x1a\\n....")
    'image/png'
    >>> sniff(b"GIF89a") == "image/gif", sniff(b"hello") is None
    (True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import UploadFile
from starlette.exceptions import HTTPException

#: content type -> (query modality, file suffix). Aliases map onto one canonical type.
ACCEPTED = {
    "image/png": ("image", ".png"),
    "image/jpeg": ("image", ".jpg"),
    "image/gif": ("image", ".gif"),
    "image/webp": ("image", ".webp"),
    "image/bmp": ("image", ".bmp"),
    "audio/ogg": ("audio", ".ogg"),
    "audio/wav": ("audio", ".wav"),
    "audio/flac": ("audio", ".flac"),
}
ALIASES = {
    "image/jpg": "image/jpeg",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/x-flac": "audio/flac",
    "application/ogg": "audio/ogg",
    "image/x-ms-bmp": "image/bmp",
}
CHUNK = 1 << 16


@dataclass(frozen=True)
class Upload:
    """An accepted upload: its bytes, a suffix for a temporary file and its modality."""

    data: bytes
    suffix: str
    modality: str


def sniff(head: bytes) -> str | None:
    """The content type the first bytes of a file announce, among :data:`ACCEPTED`, or None."""
    signatures = [
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"BM", "image/bmp"),
        (b"OggS", "audio/ogg"),
        (b"fLaC", "audio/flac"),
    ]
    for magic, kind in signatures:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"WAVE"):
        return "image/webp" if head[8:12] == b"WEBP" else "audio/wav"
    return None


def read_upload(file: UploadFile, limit: int) -> Upload:
    """Read an upload of at most ``limit`` bytes whose bytes match its declared type.

    Raises:
        HTTPException: 415 for a type not read here or bytes of another type, 413 when too
            large, 422 when empty.
    """
    declared = (file.content_type or "").split(";")[0].strip().lower()
    declared = ALIASES.get(declared, declared)
    if declared not in ACCEPTED:
        raise HTTPException(
            415,
            f"content type {declared or 'none'!r} is not accepted; send one of {', '.join(ACCEPTED)}",
        )
    data = bytearray()
    while chunk := file.file.read(CHUNK):
        data += chunk
        if len(data) > limit:
            raise HTTPException(413, f"upload larger than the limit of {limit / 2**20:g} MiB")
    if not data:
        raise HTTPException(422, "the uploaded file is empty")
    found = sniff(bytes(data[:16]))
    if found != declared:
        raise HTTPException(
            415,
            f"the file is declared {declared} but its bytes are {found or 'of no accepted type'}",
        )
    modality, suffix = ACCEPTED[declared]
    return Upload(bytes(data), suffix, modality)
