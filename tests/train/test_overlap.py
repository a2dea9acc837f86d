"""Validation beside the next epoch's steps gives the run that validates in turn, file for file.

The Trainer may validate an epoch in a background thread while the next one trains; when that
validation ends the run (early stopping), the epoch trained meanwhile is undone. Both ways must
leave the same weights, optimiser state, RNG, early-stopping state, ``best.pt``, ``last.pt``,
``metrics.jsonl`` and ``metrics.json``.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from modalign.train.checkpoint import load_checkpoint
from modalign.train.loop import Trainer
from modalign.train.metrics_log import read_log

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import synthetic_config


class _Counting(Trainer):
    """Counts trained epochs and background validations, and holds each background validation
    back until ``gate`` steps of the next epoch (0: not held; None: until that epoch's end), so
    that a verdict arrives after steps that it may have to undo."""

    trained = resolved = steps = 0
    gate: int | None = 0
    opened = threading.Event()  # replaced at every epoch's end

    def _train_epoch(self) -> None:
        self.trained += 1
        self.steps = 0
        super()._train_epoch()

    def _end_epoch(self) -> None:
        self.opened = threading.Event()
        super()._end_epoch()

    def _validate_beside(self, model):  # type: ignore[no-untyped-def]
        if self.gate != 0:
            self.opened.wait()
        return super()._validate_beside(model)

    def _optimizer_step(self) -> float:
        self.steps += 1
        if self.steps == self.gate:
            self.opened.set()
        return super()._optimizer_step()

    def _resolve(self) -> None:
        self.resolved += 1
        self.opened.set()
        super()._resolve()


def _assert_same(a: Any, b: Any, where: str) -> None:
    """Nested dicts/lists of tensors and plain values, equal exactly."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("gate", [0, 3, None])
@pytest.mark.parametrize(
    ("mode", "patience", "epochs_run"),
    [
        ("max", 100, 4),  # trains to the end
        ("min", 2, 3),  # recall rises, so "min" sees no progress: stops after epoch 3
    ],
)
def test_overlapped_validation_equals_validation_in_turn(
    tmp_path: Path, mode: str, patience: int, epochs_run: int, gate: int | None
) -> None:
    cfg = synthetic_config(
        tmp_path / "data",
        [
            "model.head.dropout=0.2",  # masks from the global generator: an undone epoch must
            "train.epochs=4",  # give back its draws
            "train.batch_size=64",
            "train.log_every=2",
            f"train.early_stopping.mode={mode}",
            f"train.early_stopping.patience={patience}",
            "train.num_threads=1",
        ],
        n=700,
    )
    runs = {}
    for overlap in (False, True):
        trainer = _Counting(cfg, tmp_path / str(overlap), overlap=overlap)
        trainer.gate = gate
        metrics = trainer.fit()
        runs[overlap] = (trainer, metrics)
    (seq, seq_metrics), (ovl, ovl_metrics) = runs[False], runs[True]
    assert seq.resolved == 0 and seq.trained == epochs_run
    # epochs 1-3 were validated beside the next one: epoch 4's steps, or an epoch 4 that epoch
    # 3's verdict undid
    assert ovl.resolved == 3 and ovl.trained == 4
    if gate is None and patience < 100:
        assert ovl.steps == seq.state.step // 3  # a whole epoch 4 was trained, then undone
    assert vars(ovl.state) == vars(seq.state)
    assert seq.state.epoch == epochs_run
    _assert_same(ovl.model.state_dict(), seq.model.state_dict(), "model")
    _assert_same(ovl._checkpoint(), seq._checkpoint(), "live state")
    for name in ("best.pt", "last.pt"):
        a, b = load_checkpoint(tmp_path / "True" / name), load_checkpoint(tmp_path / "False" / name)
        _assert_same(a, b, name)
    assert read_log(tmp_path / "True") == read_log(tmp_path / "False")
    assert ovl_metrics == seq_metrics
    saved = json.loads((tmp_path / "True" / "metrics.json").read_text())
    assert saved == json.loads((tmp_path / "False" / "metrics.json").read_text())


@pytest.mark.parametrize(
    ("others", "threads", "expected"),
    [
        (0.0, None, True),  # small heads take one thread; the second core is free
        (1.0, None, False),  # another process holds the second core
        (0.0, 2, False),  # the steps use both cores
        (0.0, 1, True),
    ],
)
def test_validation_overlaps_only_beside_one_thread_steps_with_a_free_core(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    others: float,
    threads: int | None,
    expected: bool,
) -> None:
    import modalign.train.loop as loop

    extra = [] if threads is None else [f"train.num_threads={threads}"]
    trainer = Trainer(synthetic_config(tmp_path / "data", extra, n=300), tmp_path / "run")
    monkeypatch.setattr(loop, "usable_cores", lambda: 2)
    monkeypatch.setattr(loop, "runnable_others", lambda: others)
    assert not trainer._overlaps()  # outside fit()
    trainer._fitting = True
    assert trainer._overlaps() is expected
    trainer.state.epoch = trainer.cfg.train.epochs  # no epoch to come
    assert not trainer._overlaps()
    trainer._lock.close()


@pytest.mark.parametrize("overlap", [True, False])  # checkpoints are written beside either way
def test_a_checkpoint_that_fails_in_the_background_ends_the_run_with_its_error(
    tmp_path: Path, overlap: bool
) -> None:
    from modalign.errors import DataError

    class _FullDisk(Trainer):
        def _save(self, name: str, state: dict[str, Any]) -> None:
            if name == "last.pt" and state["state"]["epoch"] == 2:
                raise DataError(f"{self.run_dir / name}: the disk is full")
            super()._save(name, state)

    cfg = synthetic_config(tmp_path / "data", ["train.epochs=3", "train.num_threads=1"], n=300)
    trainer = _FullDisk(cfg, tmp_path / "run", overlap=overlap)
    with pytest.raises(DataError, match="the disk is full"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["state"]["epoch"] == 1
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_an_overlapped_epoch_record_keeps_its_metrics_when_the_log_flushes_at_once(
    tmp_path: Path,
) -> None:
    # the log flushes whenever flush_secs have passed since the last flush: the record of an
    # epoch validated beside the next one must wait for its metrics even then
    cfg = synthetic_config(tmp_path / "data", ["train.epochs=2", "train.num_threads=1"], n=300)
    logs = []
    for overlap in (False, True):
        trainer = Trainer(cfg, tmp_path / str(overlap), overlap=overlap)
        trainer.logger.flush_secs = 0.0
        trainer.fit()
        logs.append(read_log(tmp_path / str(overlap)))
    epochs = [[r for r in log if "epoch" in r] for log in logs]
    assert all(any(k.startswith("val/") for k in r) for r in epochs[1])
    assert logs[1] == logs[0]


def test_an_undone_epoch_is_restored_before_its_checkpoint_is_queued_for_writing(
    tmp_path: Path,
) -> None:
    # restoring reads the epoch's snapshot with torch's load_state_dict, and LambdaLR's pops and
    # puts back a key of the dict it is given: done while the background thread pickles that
    # same dict into last.pt, the write can fail ("dictionary changed size during iteration")
    class _Watching(Trainer):
        queued: ClassVar[list[dict[str, Any]]] = []
        release = threading.Event()

        def _save_beside(self, name: str, state: dict[str, Any]) -> None:
            self.queued.append(state)
            super()._save_beside(name, state)

        def _save(self, name: str, state: dict[str, Any]) -> None:
            if name == "last.pt" and state["state"]["bad_epochs"] >= 1:  # the run's last one
                self.release.wait(10)  # still being written when the main thread goes on
            super()._save(name, state)
            self.queued = [s for s in self.queued if s is not state]

        def _restore(self, ckpt: dict[str, Any], path: Path) -> None:
            try:
                assert not any(s is ckpt for s in self.queued), "restored while being written"
            finally:
                self.release.set()
            super()._restore(ckpt, path)

    cfg = synthetic_config(
        tmp_path / "data",
        [
            "train.epochs=3",
            "train.num_threads=1",
            "train.early_stopping.mode=min",  # recall rises: epoch 2 ends the run
            "train.early_stopping.patience=1",
        ],
        n=300,
    )
    trainer = _Watching(cfg, tmp_path / "run", overlap=True)
    trainer.fit()
    assert trainer.state.epoch == 2
    assert load_checkpoint(tmp_path / "run" / "last.pt")["state"]["epoch"] == 2


def test_an_error_while_an_epoch_is_validated_beside_still_checkpoints_that_epoch(
    tmp_path: Path,
) -> None:
    # a run validating in turn has epoch 1's last.pt when epoch 2 fails (Ctrl-C, an error): the
    # run that validates beside must not lose it (its validation is awaited anyway)
    class _Failing(Trainer):
        failed = threading.Event()

        def _validate_beside(self, model):  # type: ignore[no-untyped-def]
            self.failed.wait(10)  # still validating when the error comes
            return super()._validate_beside(model)

        def _optimizer_step(self) -> float:
            if self.state.epoch == 1:
                self.failed.set()
                raise KeyboardInterrupt
            return super()._optimizer_step()

    cfg = synthetic_config(tmp_path / "data", ["train.epochs=3", "train.num_threads=1"], n=300)
    with pytest.raises(KeyboardInterrupt):
        _Failing(cfg, tmp_path / "run", overlap=True).fit()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["state"]["epoch"] == 1
    records = [r for r in read_log(tmp_path / "run") if r.get("epoch") == 1]
    assert len(records) == 1 and any(k.startswith("val/") for k in records[0])


def test_snapshot_copy_keeps_a_state_dict_with_metadata():
    """A snapshot's copy: tensors cloned, a state dict still an OrderedDict with its
    ``_metadata`` (module versions, which loading reads)."""
    from modalign.train.loop import _copied

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    state = model.state_dict()
    copied = _copied({"model": state, "n": [1, (2.0, "x")]})["model"]
    assert type(copied) is type(state)
    assert copied._metadata == state._metadata
    for key, tensor in state.items():
        assert torch.equal(copied[key], tensor)
        assert copied[key].data_ptr() != tensor.data_ptr()
    model.load_state_dict(copied)
