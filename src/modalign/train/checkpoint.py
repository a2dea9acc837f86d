"""Checkpoints written atomically and read without running code.

A kill at any moment leaves the last good checkpoint intact, and so does a full disk (a
``DataError`` that says so). Loading uses ``torch.load(weights_only=True)``: a checkpoint holds
only tensors and plain values (the random generators' states included, see ``rng_state``), so a
file that holds any other pickled object is refused before anything in it runs.
"""

from __future__ import annotations

import pickle
import random
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modalign.errors import DataError
from modalign.io import atomic_path


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, rename.

    Python's own file object carries the write, so a full disk surfaces as ``OSError(ENOSPC)``,
    which ``atomic_path`` turns into a one-line ``DataError`` (torch's writer would say only
    "unexpected pos").
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(state, f)
        except RuntimeError as err:  # torch's zip writer wraps the failed write; unwrap it
            cause = _os_error(err)
            if cause is None:
                raise
            raise cause from None


def _os_error(err: BaseException | None) -> OSError | None:
    """The ``OSError`` behind ``err`` (through ``__cause__``/``__context__``), if any."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` onto the CPU, tensors and plain values only.

    Raises:
        DataError: the file is missing, unreadable, not a checkpoint, or holds pickled objects.
    """
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols on stderr
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):
            raise DataError(
                f"{path}: refused: the checkpoint holds pickled Python objects, not only tensors "
                "(loading it could run code); was it written by modalign?"
            ) from None
        raise DataError(
            f"{path}: damaged, or not a checkpoint written by torch.save ({_unpickler_reason(err)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        why = _first_line(err).split(". ")[0]
        if isinstance(err, EOFError | KeyError):  # an empty file; bytes that are no pickle at all
            why = "the file is empty" if isinstance(err, EOFError) else "not a torch file"
        raise DataError(f"{path}: unreadable or damaged checkpoint ({why})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise DataError(f"{path}: not a modalign checkpoint (no 'model' weights)")
    return state


def _unpickler_reason(err: BaseException) -> str:
    """The line after "WeightsUnpickler error:" in torch's long message (or its first line)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for i, line in enumerate(lines[:-1]):
        if line.endswith("WeightsUnpickler error:"):
            return lines[i + 1][:200]
    return _first_line(err)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def check_model_state(
    saved: Mapping[str, torch.Tensor], built: Mapping[str, torch.Tensor], path: Path
) -> None:
    """A one-line error naming the first parameter that differs between a checkpoint and a model.

    Example:
        >>> check_model_state({"w": torch.zeros(2, 3)}, {"w": torch.zeros(2, 4)}, Path("last.pt"))
        Traceback (most recent call last):
        ...
        modalign.errors.DataError: last.pt: the weights do not fit the model the config builds: 'w' has shape (2, 3) in the checkpoint but (2, 4) now (was model.embed_dim, a head option or a feature file's width changed?)
    """
    for name in sorted(saved.keys() | built.keys()):
        if name not in saved or name not in built:
            where = "checkpoint" if name in saved else "model the config builds"
            raise DataError(
                f"{path}: parameter {name!r} exists only in the {where}: the config builds "
                "another model (was model.head, model.encoders or a modality changed?)"
            )
        if not isinstance(saved[name], torch.Tensor) or saved[name].shape != built[name].shape:
            shape = tuple(getattr(saved[name], "shape", ()))
            raise DataError(
                f"{path}: the weights do not fit the model the config builds: {name!r} has shape "
                f"{shape} in the checkpoint but {tuple(built[name].shape)} now (was "
                "model.embed_dim, a head option or a feature file's width changed?)"
            )


def rng_state() -> dict[str, Any]:
    """Every random generator training touches, as tensors and plain values (weights_only-safe).

    Example:
        >>> s = rng_state(); a = (random.random(), np.random.rand(), torch.rand(1).item())
        >>> set_rng_state(s); a == (random.random(), np.random.rand(), torch.rand(1).item())
        True
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # numpy's MT19937: (624,) uint32 words, stored as int64 (torch has no uint32 to pickle)
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
