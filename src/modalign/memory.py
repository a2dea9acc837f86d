"""Keep freed memory in the process for reuse, so a CPU training step does not page-fault anew.

glibc's ``malloc`` serves a block above its mmap threshold (128 KiB at start, raised to the size
of the largest mmapped block freed so far, at most 32 MiB) with a fresh ``mmap``, and returns it
to the system on ``free``; it also trims the top of its heap once 2x that threshold is free there.
PyTorch's CPU allocator keeps no cache of its own, so each (N, C) activation of a convolutional
step (10 MB for 128 clips x 301 frames x 64 channels) comes back as fresh pages that the kernel
zeroes on first touch: in ``audio_conv``'s step, element-wise passes over a 9.90 MB tensor ran 3x
slower than over a 9.86 MB one (only the larger exceeded the threshold the smaller had set).

:func:`reuse_freed_memory` fixes the mmap threshold at 32 MiB and the trim threshold at 1 GiB
(``mallopt``), as ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=...``
would at start-up: freed blocks stay in the heap and the next step reuses their pages. The process
keeps up to its peak heap (and at most 1 GiB free on top of it) instead of returning it. This is
the part of what PyTorch's CPU launcher (``python -m torch.backends.xeon.run_cpu``) gets by
preloading jemalloc or tcmalloc that needs no other library. Elsewhere (no glibc: macOS, musl),
with ``MODALIGN_MALLOC_TUNING=0``, or when ``GLIBC_TUNABLES`` already sets malloc options, it
changes nothing.

Example:
    >>> isinstance(reuse_freed_memory(), bool)
    True
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h> parameter numbers
MMAP_THRESHOLD = 32 << 20
"""Blocks up to this size (bytes) come from the heap and are reused: glibc's largest allowed."""
TRIM_THRESHOLD = 1 << 30
"""Free memory (bytes) at the top of the heap before glibc returns it to the system."""

_applied: bool | None = None


def reuse_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process; True where they are set.

    Returns:
        True when ``mallopt`` accepted both settings (now or on an earlier call), False where it
        does not apply (see the module's docstring).
    """
    global _applied
    if _applied is None:
        _applied = _set_thresholds()
    return _applied


def _set_thresholds() -> bool:
    if os.environ.get("MODALIGN_MALLOC_TUNING", "1").strip().lower() in {"0", "false", "off"}:
        return False
    if sys.platform != "linux" or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, ValueError, AttributeError):  # no such name, no libc symbols
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
