import json
import subprocess
import sys
from pathlib import Path

import pytest

import modalign
from modalign.cli import main
from modalign.config import save_config

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import synthetic_config


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert (
        exit_info.value.code == 0
        and capsys.readouterr().out.strip() == f"modalign {modalign.__version__}"
    )
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for option in ("--set", "--out", "--resume", "CONFIG".lower()):
        assert option in out.lower()


def test_train_then_eval_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = synthetic_config(tmp_path / "data", n=600)
    save_config(cfg, tmp_path / "c.yaml")
    assert (
        main(
            [
                "train",
                str(tmp_path / "c.yaml"),
                "--out",
                str(tmp_path / "run"),
                "--set",
                "train.epochs=2",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["run_dir"] == str(tmp_path / "run") and "test/image_to_text/recall@1" in summary
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())


def test_user_mistakes_exit_non_zero_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("train:\n  epochz: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "modalign", "train", str(tmp_path / "c.yaml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "modalign train: error: unknown key 'train.epochz'; valid keys in 'train': accumulate, batch_size, chunk_size, device, "
        "early_stopping, epochs, grad_clip, log_every, lr, min_lr_ratio, num_threads, num_workers, sampler, seed, tensorboard, warmup_steps, weight_decay"
    ]
    result = subprocess.run(
        [sys.executable, "-m", "modalign", "train", str(tmp_path / "none.yaml")],
        capture_output=True,
        text=True,
    )
    assert (
        result.returncode == 1
        and "config file not found" in result.stderr
        and "Traceback" not in result.stderr
    )


def test_eval_of_a_run_whose_features_changed_width(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    from modalign.features.store import FeatureStore, write_features

    cfg = synthetic_config(tmp_path / "data", n=300)
    save_config(cfg, tmp_path / "c.yaml")
    run = tmp_path / "run"
    assert (
        main(["train", str(tmp_path / "c.yaml"), "--out", str(run), "--set", "train.epochs=1"]) == 0
    )
    image = Path(cfg.data.features["image"])
    store = FeatureStore.open(image)
    write_features(image, store.ids, np.ones((len(store), store.dim + 3), np.float32))
    capsys.readouterr()
    assert main(["eval", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "model.safetensors: weights do not fit the model its config builds" in err[0]
    )


@pytest.mark.parametrize("config", ["synthetic.yaml", "synthetic-smoke.yaml"])
def test_shipped_configs_train_on_synth_data(
    tmp_path: Path, config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    root = Path(__file__).parents[2]
    shutil.copytree(root / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    assert main(["synth", "runs/synthetic-data", "--rows", "800"]) == 0
    overrides = ["--set", "train.epochs=1"] if config == "synthetic.yaml" else []
    assert main(["train", f"configs/{config}", "--out", "runs/x", *overrides]) == 0
    assert (
        json.loads(Path("runs/x/metrics.json").read_text())["test/image_to_text/recall@10"] > 0.05
    )
