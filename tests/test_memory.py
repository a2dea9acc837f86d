"""reuse_freed_memory: glibc keeps freed blocks for reuse (counted in page faults, not time)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from modalign.memory import reuse_freed_memory

# allocate, touch and free blocks of two sizes just under 10 MB in turn (as the activations of
# two convolution layers are), after one warm-up pair; print the page faults per block
PROBE = textwrap.dedent(
    """
    import ctypes, resource, sys
    from modalign.memory import reuse_freed_memory
    print(reuse_freed_memory())
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    def cycle(sizes):
        for n in sizes:
            block = libc.malloc(n)
            ctypes.memset(block, 1, n)
            libc.free(block)
    sizes = [9_863_168, 9_895_936]
    cycle(sizes)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cycle(sizes * 5)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 10)
    """
)


def probe(tuning: str) -> tuple[bool, float]:
    env = {**os.environ, "MODALIGN_MALLOC_TUNING": tuning}
    env.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    applied, faults = out.stdout.split()
    return applied == "True", float(faults)


def test_reuse_freed_memory_is_idempotent() -> None:
    assert reuse_freed_memory() is reuse_freed_memory()


@pytest.mark.skipif(
    sys.platform != "linux" or not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"),
    reason="glibc's malloc only",
)
def test_freed_blocks_are_reused_without_page_faults() -> None:
    applied, faults = probe("1")
    assert applied
    off, faults_off = probe("0")
    assert not off
    pages = 9_863_168 // 4096
    # without it (measured: about 240 faults per 2,408-page block), fresh pages come back
    assert faults_off > pages / 40, faults_off  # (so the check below can fail)
    assert faults < pages / 200, (faults, faults_off)  # with it (measured: 0)
