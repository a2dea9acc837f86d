"""Crash-safe files: atomic writes, one JSONL reader, and a lock on a folder being written.

A write goes to a temporary file beside the target, is fsynced, then renamed: a kill at any
moment leaves either the old file or the new one, never a half-written file. A full disk is
reported as such (``DataError``), with the old file intact.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_json_atomic(d / "m.json", {"a": 1.0})
    >>> (d / "m.json").read_text()
    '{\\n  "a": 1.0\\n}'
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from modalign.errors import DataError

log = logging.getLogger(__name__)

#: errors a write raises when there is no room left: reported as a full disk
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is fsynced and renamed onto it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as err:
        if err.errno in DISK_FULL:
            raise DataError(
                f"{target}: the disk is full ({err.strerror}); nothing was replaced, the previous "
                "file (if any) is intact: free some space and run the command again"
            ) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    """The process's umask: read from /proc where it is there, since setting it to read it
    changes it for every thread for a moment (checkpoints are written beside training)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows fsync on a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(
    target: str | os.PathLike[str], write: Callable[[IO[Any]], None], mode: str = "w"
) -> None:
    """Open a temporary file in ``mode``, let ``write`` fill it, then rename it onto ``target``."""
    with atomic_path(target) as tmp, open(tmp, mode) as f:
        write(f)


def write_json_atomic(target: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``target`` atomically."""
    write_atomic(target, lambda f: json.dump(obj, f, indent=2))


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (e.g. a run's ``metrics.jsonl``); [] if it is missing.

    A torn last line (what a kill or a full disk leaves mid-append) is dropped with a warning; a
    broken line before the last one, or a line that is not a JSON object, is a ``DataError``
    naming the file and the line number.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.jsonl"
        >>> _ = p.write_text('{"step": 1}\\n{"step": 2}\\n{"st')
        >>> read_jsonl(p)
        [{'step': 1}, {'step': 2}]
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read ({err})") from None
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if i == last and not path.read_bytes().endswith(b"\n"):
                log.warning("%s: dropping a torn last line %d (an interrupted write)", path, i + 1)
                break
            raise DataError(f"{path}, line {i + 1}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise DataError(
                f"{path}, line {i + 1}: expected a JSON object, got {type(record).__name__}"
            )
        records.append(record)
    return records


LOCK_NAME = ".modalign.lock"


@contextlib.contextmanager
def hold_folder(path: str | os.PathLike[str], what: str) -> Iterator[Path]:
    """Hold an exclusive lock on folder ``path`` while ``what`` writes into it.

    The lock is an OS file lock (``filelock``) on ``path/.modalign.lock``; the holder's pid,
    host, command and start time go to ``path/.modalign.lock.json``. A second writer gets a
    one-line ``DataError`` naming the holder. The OS releases the lock of a process that dies,
    so a lock left by a killed process is taken over (with a warning naming it).

    Args:
        path: the folder (created if missing). what: what holds it, e.g. ``"train"``.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> with hold_folder(d, "doctest"):
        ...     with hold_folder(d, "another"):
        ...         pass
        Traceback (most recent call last):
        ...
        modalign.errors.DataError: ... is being written by another process (doctest, pid ...
    """
    from filelock import FileLock, Timeout

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{folder}: cannot create the folder ({err.strerror})") from None
    info = folder / (LOCK_NAME + ".json")
    lock = FileLock(folder / LOCK_NAME, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise DataError(
            f"{folder}: is being written by another process ({_holder(info)}); wait for it to "
            "finish or choose another folder"
        ) from None
    try:
        if info.exists():
            log.warning(
                "%s: taking over a lock left by a process that died (%s)", folder, _holder(info)
            )
        write_json_atomic(
            info,
            {
                "what": what,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": " ".join(sys.argv),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            },
        )
        yield folder
    finally:
        info.unlink(missing_ok=True)
        lock.release()


def _holder(info: Path) -> str:
    """``what, pid N on HOST since TIME: COMMAND`` from a lock's side file."""
    try:
        h = json.loads(info.read_text(encoding="utf-8"))
        return f"{h['what']}, pid {h['pid']} on {h['host']} since {h['started']}: {h['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
