"""Per-step metrics to JSONL (always) and TensorBoard (when enabled)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modalign.errors import DataError
from modalign.io import read_jsonl, write_atomic


class MetricsLogger:
    """Appends one JSON object per record to ``metrics.jsonl``; mirrors scalars to TensorBoard.

    On resume, ``truncate_after(step)`` drops records a killed run wrote after its last
    checkpoint, so the log of a resumed run equals that of an uninterrupted one.
    """

    def __init__(self, run_dir: Path, tensorboard: bool, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled  # False on all but the first of several processes
        self.writer: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Keep the records up to ``step`` (all records: a torn last line is dropped), atomically."""
        if not self.path.exists():
            return
        kept = [r for r in read_jsonl(self.path) if _step(r, self.path) <= step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        write_atomic(self.path, lambda f: f.writelines([text]))

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _step(record: dict[str, Any], path: Path) -> int:
    step = record.get("step")
    if not isinstance(step, int):
        raise DataError(f"{path}: a record has no integer 'step' ({str(record)[:80]})")
    return step


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (see ``modalign.io.read_jsonl``)."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")
