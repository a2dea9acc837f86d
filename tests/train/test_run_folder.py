"""A run folder has one writer, survives a kill before its first checkpoint, and a torn log."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modalign.cli import main
from modalign.config import load_config, save_config
from modalign.io import read_jsonl
from modalign.train.loop import fit

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import synthetic_config


def _small(tmp_path: Path, *extra: str):  # type: ignore[no-untyped-def]
    return synthetic_config(
        tmp_path / "data", ["train.epochs=1", "train.log_every=1", *extra], n=300
    )


def test_a_second_train_into_a_folder_in_use_is_refused_naming_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = synthetic_config(
        tmp_path / "data", ["train.epochs=30", "train.early_stopping.patience=100"], n=2000
    )
    config = tmp_path / "c.yaml"
    save_config(cfg, config)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "modalign", "train", str(config), "--out", str(run)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    info = run / ".modalign.lock.json"
    deadline = time.time() + 120
    while not info.exists() and time.time() < deadline:
        time.sleep(0.02)
    try:
        assert main(["train", str(config), "--out", str(run)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"is being written by another process (train, pid {first.pid} on " in err
        assert "modalign train" in err  # the holder's command line
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.send_signal(signal.SIGKILL)  # its lock is now left by a dead process
        first.wait()
    with caplog.at_level("WARNING"):
        assert (
            main(["train", str(config), "--out", str(run), "--resume", "--set", "train.epochs=1"])
            == 0
        )
    assert f"taking over a lock left by a process that died (train, pid {first.pid}" in caplog.text
    assert json.loads((run / "metrics.json").read_text())
    assert not info.exists()


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _small(tmp_path)
    fresh = fit(cfg, tmp_path / "fresh")
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")  # what a run killed in its first epoch leaves
    (run / "metrics.jsonl").write_text('{"step": 1, "train/loss": 9.0}\n{"step": 2, "train/lo')
    with caplog.at_level("WARNING"):
        resumed = fit(cfg, run, resume=True)
    assert (
        "stopped before its first checkpoint; starting it again from the beginning" in caplog.text
    )
    assert resumed == fresh
    assert read_jsonl(run / "metrics.jsonl") == read_jsonl(tmp_path / "fresh" / "metrics.jsonl")


def test_a_torn_last_line_of_the_log_is_dropped_on_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _small(tmp_path)
    fit(cfg, tmp_path / "run")
    log = tmp_path / "run" / "metrics.jsonl"
    records = read_jsonl(log)
    with open(log, "a") as f:
        f.write('{"step": 99, "train/lo')  # what a full disk leaves mid-append
    more = load_config(
        None,
        [
            f"data.manifest={cfg.data.manifest}",
            *[f"data.features.{m}={p}" for m, p in cfg.data.features.items()],
            "model.embed_dim=32",
            "model.head.hidden_dim=64",
            "train.epochs=2",
            "train.log_every=1",
            "train.batch_size=128",
            "train.warmup_steps=5",
            "train.lr=0.003",
            "train.tensorboard=false",
            "eval.chunk_size=97",
        ],
    )
    with caplog.at_level("WARNING"):
        fit(more, tmp_path / "run", resume=True)
    assert "dropping a torn last line" in caplog.text
    after = read_jsonl(log)
    assert after[: len(records)] == records and len(after) > len(records)
    assert all(r["step"] != 99 for r in after)
