import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from modalign.errors import DataError
from modalign.train.checkpoint import (
    check_model_state,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)


class Marker:
    """Unpickling this creates a file: proof that loading ran code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.path, "code ran"))


def _draws() -> tuple[float, float, float, float]:
    return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(1).item()


def test_rng_states_survive_a_weights_only_round_trip(tmp_path: Path) -> None:
    seed_everything(3)
    np.random.randn()  # numpy caches a second gaussian: its state has has_gauss=1 now
    random.gauss(0, 1)  # so does python's
    save_checkpoint(tmp_path / "c.pt", {"model": {}, "rng": rng_state()})
    expected = _draws()
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])  # loaded with weights_only=True
    assert _draws() == expected


def test_a_pickled_object_is_refused_and_never_runs(tmp_path: Path) -> None:
    for pickler in ("torch", "pickle"):
        path = tmp_path / f"{pickler}.pt"
        state = {"model": {"w": torch.ones(2)}, "extra": Marker(tmp_path / "pwned")}
        if pickler == "torch":
            torch.save(state, path)
        else:
            import pickle

            path.write_bytes(pickle.dumps(state))
        reason = "refused: the checkpoint holds pickled" if pickler == "torch" else "damaged"
        with pytest.raises(DataError, match=reason):
            load_checkpoint(path)
        assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("data", [b"", b"garbage" * 30, b"\x80\x04K\x01.", b"PK\x03\x04broken"])
def test_damaged_checkpoints_are_one_line_errors(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_checkpoint_for_another_model_names_the_parameter() -> None:
    with pytest.raises(
        DataError, match=r"'heads.text.weight' has shape \(8, 4\) in the checkpoint but \(12, 4\)"
    ):
        check_model_state(
            {"heads.text.weight": torch.zeros(8, 4)},
            {"heads.text.weight": torch.zeros(12, 4)},
            Path("last.pt"),
        )
    with pytest.raises(DataError, match=r"'heads\.audio\.weight' exists only in the model"):
        check_model_state({}, {"heads.audio.weight": torch.zeros(1)}, Path("last.pt"))


FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys, torch
    from pathlib import Path
    from modalign.errors import DataError
    from modalign.train.checkpoint import save_checkpoint
    path = Path(sys.argv[1])
    save_checkpoint(path, {"model": {"w": torch.ones(4)}})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
    try:
        save_checkpoint(path, {"model": {"w": torch.zeros(100_000)}})
    except DataError as err:
        print(err)
    """
)


def test_a_full_disk_while_writing_is_one_line_and_keeps_the_previous_checkpoint(
    tmp_path: Path,
) -> None:
    # a real failed write (the kernel refuses it past RLIMIT_FSIZE), not a mock
    path = tmp_path / "last.pt"
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert (
        message.startswith(f"{path}: the disk is full")
        and "previous file (if any) is intact" in message
    )
    assert "\n" not in message
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(4))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_a_full_disk_reaches_the_user_as_one_line(tmp_path: Path) -> None:
    from modalign.cli import error_line

    err = OSError(28, "No space left on device", str(tmp_path / "x"))
    assert (
        error_line(err)
        == f"{tmp_path / 'x'}: No space left on device (the disk is full: free some space and run again)"
    )
    assert json.dumps(error_line(DataError("a\nb"))) == '"a b"'
