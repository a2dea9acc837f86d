"""Per-step metrics to JSONL (always) and TensorBoard (when enabled)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from modalign.errors import DataError
from modalign.io import read_jsonl, write_atomic

FLUSH_SECS = 10.0
"""Records wait in memory at most about this long (and until :meth:`MetricsLogger.flush`)."""


class MetricsLogger:
    """Appends one JSON object per record to ``metrics.jsonl``; mirrors scalars to TensorBoard.

    Records are buffered and written together every ``flush_secs`` seconds, on :meth:`flush`
    (the trainer flushes before each ``last.pt``) and on :meth:`close`. TensorBoard's writer
    hands every scalar to a background thread, which then needs the GIL while the training
    steps run; on a busy 2-core machine each hand-over could stall a step for a scheduler time
    slice (steps of the synthetic config ran 10-25% slower with TensorBoard on than off). A
    record lost in a crash is one a resumed run would drop anyway: resuming keeps only the
    records up to the step of ``last.pt``.

    On resume, ``truncate_after(step)`` drops records a killed run wrote after its last
    checkpoint, so the log of a resumed run equals that of an uninterrupted one.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> log = MetricsLogger(run, tensorboard=False)
        >>> log.log(1, {"train/loss": 0.5})
        >>> (run / "metrics.jsonl").exists()  # buffered
        False
        >>> log.flush(); (run / "metrics.jsonl").read_text()
        '{"step": 1, "train/loss": 0.5}\\n'
    """

    def __init__(
        self, run_dir: Path, tensorboard: bool, enabled: bool = True, flush_secs: float = FLUSH_SECS
    ) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled  # False on all but the first of several processes
        self.flush_secs = flush_secs
        self._pending: list[tuple[int, dict[str, float]]] = []
        self._flushed_at = time.monotonic()
        self.held = False  # True: only an explicit flush() writes (a record awaits its values)
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
        """Add a record of ``step`` (written at the next flush)."""
        if not self.enabled:
            return
        self._pending.append((step, values))
        if not self.held and time.monotonic() - self._flushed_at >= self.flush_secs:
            self.flush()

    def discard_after(self, step: int) -> None:
        """Forget the buffered records of steps after ``step`` (work that was undone)."""
        self._pending = [(s, values) for s, values in self._pending if s <= step]

    def flush(self) -> None:
        """Write the buffered records to ``metrics.jsonl`` and TensorBoard's event file."""
        self._flushed_at = time.monotonic()
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        with open(self.path, "a") as f:
            f.writelines(json.dumps({"step": step, **values}) + "\n" for step, values in pending)
        if self.writer is not None:
            for step, values in pending:
                for key, value in values.items():
                    if key != "epoch":
                        self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def close(self) -> None:
        """Flush, and close TensorBoard's writer (a second call does nothing)."""
        self.flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _step(record: dict[str, Any], path: Path) -> int:
    step = record.get("step")
    if not isinstance(step, int):
        raise DataError(f"{path}: a record has no integer 'step' ({str(record)[:80]})")
    return step


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (see ``modalign.io.read_jsonl``)."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")
