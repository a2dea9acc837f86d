import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from modalign.config import load_config
from modalign.errors import ConfigError
from modalign.pipeline import build_parts
from modalign.train.loop import Trainer, fit, make_optimizer, make_schedule
from modalign.train.metrics_log import read_log

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import synthetic_config


def test_trains_far_above_chance_and_writes_run_folder(tmp_path: Path) -> None:
    cfg = synthetic_config(tmp_path / "data", ["train.epochs=8"], n=2000, noise=0.6)
    metrics = fit(cfg, tmp_path / "run")
    n_test = metrics["test/image_to_text/n_gallery"]
    chance = 1 / n_test
    for direction in ("image_to_text", "text_to_image"):
        assert (
            metrics[f"test/{direction}/recall@1"] > 40 * chance
        )  # measured about 0.45 at 196 items
        assert metrics[f"test/{direction}/recall@10"] > metrics[f"test/{direction}/recall@1"]
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "metrics.json", "last.pt", "best.pt"):
        assert (run / name).exists(), name
    stored = json.loads((run / "metrics.json").read_text())
    assert stored == pytest.approx(metrics)
    assert all(k.split("/")[0] in ("val", "test") and "_to_" in k.split("/")[1] for k in stored)
    assert all(isinstance(v, float) for v in stored.values())
    log = read_log(run)
    losses = [r["train/loss"] for r in log if "train/loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    assert any("val/image_to_text/recall@1" in r for r in log)
    # an untrained model with the same architecture is near chance: training did the work
    untrained = Trainer(
        load_config(None, [*_data_overrides(cfg), "train.epochs=0"]), tmp_path / "untrained"
    ).fit()
    assert untrained["test/image_to_text/recall@1"] < 0.3 * metrics["test/image_to_text/recall@1"]


def _data_overrides(cfg) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        f"data.manifest={cfg.data.manifest}",
        "train.tensorboard=false",
        "model.embed_dim=32",
        "model.head.hidden_dim=64",
        "model.head.init=random",
    ] + [f"data.features.{m}={p}" for m, p in cfg.data.features.items()]


def test_three_modalities_missing_cells_groups_siglip(tmp_path: Path) -> None:
    cfg = synthetic_config(
        tmp_path / "data",
        ["loss.name=siglip", "train.epochs=6", "train.tensorboard=true"],
        n=1500,
        dims={"image": 24, "text": 16, "audio": 12},
        missing=0.3,
        groups=500,
        noise=0.3,
    )
    metrics = fit(cfg, tmp_path / "run")
    directions = {k.split("/")[1] for k in metrics}
    assert len(directions) == 6  # every ordered pair of three modalities
    for d in directions:
        assert metrics[f"test/{d}/recall@5"] > 0.3, d
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    assert any("train/bias" in r for r in read_log(tmp_path / "run"))


def test_no_weight_decay_on_biases_norms_temperature(small_config) -> None:  # type: ignore[no-untyped-def]
    model = build_parts(small_config).model
    opt = make_optimizer(model, small_config.train)
    decay, no_decay = opt.param_groups
    assert (
        decay["weight_decay"] == small_config.train.weight_decay and no_decay["weight_decay"] == 0.0
    )
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert any(p is model.log_scale for p in no_decay["params"])


def test_schedule_warms_up_then_decays_to_floor(small_config) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config(None, ["train.warmup_steps=10", "train.lr=1.0", "train.min_lr_ratio=0.1"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_schedule(opt, cfg.train, total_steps=110)
    lrs = []
    for _ in range(110):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))


def test_temperature_starts_at_007_and_is_clamped(small_config) -> None:  # type: ignore[no-untyped-def]
    model = build_parts(small_config).model
    assert 1 / model.scale().item() == pytest.approx(0.07)
    with torch.no_grad():
        model.log_scale.fill_(10.0)
    model.clamp_scale()
    assert model.scale().item() == pytest.approx(100.0)


def test_refuses_to_overwrite_a_run(small_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fit(small_config, tmp_path / "run")
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        Trainer(small_config, tmp_path / "run")
    with pytest.raises(ConfigError, match="nothing to resume"):
        Trainer(small_config, tmp_path / "other", resume=True)


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "modalign", *args]


def test_resume_after_kill_reproduces_uninterrupted_loss_curve(tmp_path: Path) -> None:
    cfg = synthetic_config(tmp_path / "data", n=3000, noise=0.5)
    config_path = tmp_path / "c.yaml"
    from modalign.config import save_config

    save_config(
        load_config(
            None,
            [
                *_data_overrides(cfg),
                "train.epochs=5",
                "train.batch_size=64",
                "train.log_every=1",
                "model.head.dropout=0.2",
                "train.early_stopping.patience=100",
            ],
        ),
        config_path,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        _cli(["train", str(config_path), "--out", str(tmp_path / "full")]),
        check=True,
        env=env,
        capture_output=True,
    )
    proc = subprocess.Popen(
        _cli(["train", str(config_path), "--out", str(tmp_path / "cut")]),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (tmp_path / "cut" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # somewhere in epoch 2 (or while writing its checkpoint)
    proc.wait()
    done = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert not (tmp_path / "cut" / "metrics.json").exists()
    subprocess.run(
        _cli(["train", str(config_path), "--out", str(tmp_path / "cut"), "--resume"]),
        check=True,
        env=env,
        capture_output=True,
    )
    full, cut = read_log(tmp_path / "full"), read_log(tmp_path / "cut")
    assert [r["step"] for r in cut] == [r["step"] for r in full]
    np.testing.assert_allclose(
        [r.get("train/loss", 0.0) for r in cut], [r.get("train/loss", 0.0) for r in full], rtol=1e-6
    )
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text()) == pytest.approx(done)


def _run_losses(cfg, run_dir: Path, extra: list[str]) -> list[float]:  # type: ignore[no-untyped-def]
    from modalign.config import load_config as load

    overrides = [
        *_data_overrides(cfg),
        "train.epochs=2",
        "train.log_every=1",
        "train.batch_size=64",
        "model.head.dropout=0",
        *extra,
    ]
    fit(load(None, overrides), run_dir)
    return [r["train/loss"] for r in read_log(run_dir) if "train/loss" in r]


def test_gradient_cached_training_matches_plain_training(tmp_path: Path) -> None:
    cfg = synthetic_config(tmp_path / "data", n=800, groups=300)
    plain = _run_losses(cfg, tmp_path / "plain", [])
    cached = _run_losses(cfg, tmp_path / "cached", ["train.chunk_size=37", "loss.tile_size=50"])
    assert len(plain) == len(cached) > 5
    np.testing.assert_allclose(cached, plain, rtol=1e-5)


@pytest.mark.parametrize("missing", [0.0, 0.97])
def test_torchrun_two_processes_match_one_process(tmp_path: Path, missing: float) -> None:
    # with 97% of text cells empty, many batch shards hold no text row at all on one process
    cfg = synthetic_config(tmp_path / "data", ["data.min_rows=2"], n=800, missing=missing)
    config_path = tmp_path / "c.yaml"
    from modalign.config import save_config

    base = [
        *_data_overrides(cfg),
        "train.epochs=2",
        "train.log_every=1",
        "model.head.dropout=0",
        "train.batch_size=128",
        "data.min_rows=2",
    ]
    save_config(load_config(None, base), config_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        _cli(["train", str(config_path), "--out", str(tmp_path / "one")]),
        check=True,
        env=env,
        capture_output=True,
    )
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--master-port=29533",
        "-m",
        "modalign",
    ]
    result = subprocess.run(
        [*torchrun, "train", str(config_path), "--out", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one = [r["train/loss"] for r in read_log(tmp_path / "one") if "train/loss" in r]
    two = [r["train/loss"] for r in read_log(tmp_path / "two") if "train/loss" in r]
    assert len(one) == len(two) > 5
    np.testing.assert_allclose(two, one, rtol=1e-4)
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2 == pytest.approx(m1, abs=0.02)


def test_accumulation_never_carries_gradients_into_the_next_epoch(tmp_path: Path) -> None:
    cfg = synthetic_config(tmp_path / "data", ["train.batch_size=60", "train.accumulate=3"], n=600)
    trainer = Trainer(cfg, tmp_path / "run")
    n_batches = len(trainer.sampler)
    assert n_batches % 3 != 0  # the last group is partial
    trainer._train_epoch()
    assert all(p.grad is None for p in trainer.model.parameters())  # stepped and zeroed
    assert trainer.state.step == -(-n_batches // 3)  # ceil: the partial group stepped too


def test_resume_with_another_config_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = synthetic_config(tmp_path / "data", ["train.epochs=1"], n=300)
    fit(cfg, tmp_path / "run")
    changed = load_config(None, [*_data_overrides(cfg), "train.epochs=2", "train.lr=0.01"])
    with caplog.at_level("WARNING"):
        Trainer(changed, tmp_path / "run", resume=True)
    assert "resuming with a changed config" in caplog.text and "train.epochs" in caplog.text


def test_a_resumed_symile_run_draws_the_negatives_it_would_have_drawn(tmp_path: Path) -> None:
    from modalign.train.checkpoint import load_checkpoint

    dims = {"image": 24, "text": 16, "audio": 12}
    cfg = synthetic_config(tmp_path / "data", n=400, dims=dims)
    base = [
        *_data_overrides(cfg),
        "loss.objective=symile",
        "model.head.dropout=0",
        "train.batch_size=64",
        "train.early_stopping.patience=100",
    ]
    cfg2 = load_config(None, [*base, "train.epochs=2", "train.warmup_steps=1"])
    fit(cfg2, tmp_path / "straight")
    cut = Trainer(cfg2, tmp_path / "cut")  # one epoch and its checkpoint, then "killed"
    cut._train_epoch()
    cut._end_epoch()
    cut.logger.close()
    cut._lock.close()
    Trainer(cfg2, tmp_path / "cut", resume=True).fit()
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert resumed["objective"] == straight["objective"] != {}
    for name, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=0, atol=1e-6, msg=name)
