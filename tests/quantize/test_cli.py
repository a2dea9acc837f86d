"""``modalign train`` (codebook section), ``codebook toc``, ``codes`` and ``transfer`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from modalign.cli import main
from modalign.quantize.data import read_sequences, write_sequences


def tiny_dataset(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Two modalities whose class (0/1) sets the mean: a (T=4, F=3) and b (T=4, F=5).

    Returns the config file (pretraining on class-level pairs) and a labelled downstream
    manifest (rows with only a or only b, split by row)."""
    rng = np.random.default_rng(seed)
    n = 40
    labels = np.arange(n) % 2
    a = rng.normal(size=(n, 4, 3)) + 2.0 * labels[:, None, None]
    b = rng.normal(size=(n, 4, 5)) - 2.0 * labels[:, None, None]
    write_sequences(folder / "a.npz", [f"a{i}" for i in range(n)], a)
    write_sequences(folder / "b.npz", [f"b{i}" for i in range(n)], b)
    pre = ["id,a,b"] + [f"p{i},a{i},b{(i + 2 * k) % n}" for i in range(20) for k in (1, 3)]
    (folder / "pretrain.csv").write_text("\n".join(pre) + "\n")
    down = ["id,a,b,label,split"]
    for i in range(20, n):
        split = "train" if i < 30 else "test"
        down += [f"da{i},a{i},,{labels[i]},{split}", f"db{i},,b{i},{labels[i]},{split}"]
    (folder / "down.csv").write_text("\n".join(down) + "\n")
    config = {
        "name": "tiny",
        "data": {"manifest": "pretrain.csv", "features": {"a": "a.npz", "b": "b.npz"}},
        "codebook": {
            "method": "dcid",
            "quantizer": {"codes": 8, "dim": 4},
            "disentangle": {"hidden_dim": 16, "specific_dim": 2, "club_steps": 1},
        },
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.003},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "config.yaml", folder / "down.csv"


@pytest.mark.parametrize("method", ["cmg", "dcid", "fcid"])
def test_train_toc_codes_transfer(
    tmp_path: Path, method: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config, down = tiny_dataset(tmp_path)
    run = tmp_path / "run"
    assert (
        main(["train", str(config), "--out", str(run), "--set", f"codebook.method={method}"]) == 0
    )
    for name in ("config.yaml", "codebook.json", "model.safetensors", "metrics.json"):
        assert (run / name).exists()
    assert main(["codebook", "toc", str(run), "--keep", "2"]) == 0
    assert len(json.loads((run / "toc.json").read_text())["dimensions"]) == 2

    out = tmp_path / "codes.npz"
    assert main(["codes", str(run), "--manifest", str(down), "--out", str(out)]) == 0
    steps = 1 if method == "fcid" else 4  # FCID quantises one coarse step per item
    with np.load(out) as codes:
        assert codes["a/codes"].shape == (20, steps) and codes["b/quantized"].shape == (
            20,
            steps,
            4,
        )
        assert codes["a/ids"][0] == "da20" and codes["toc_dimensions"].shape == (2,)
        assert codes["a/codes"].max() < 8

    capsys.readouterr()
    argv = [
        "transfer",
        str(run),
        "--manifest",
        str(down),
        "--train-modality",
        "a",
        "--test-modality",
        "b",
    ]
    assert main([*argv, "--toc"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(r["direction"], r["kind"]) for r in lines} == {
        (d, k) for d in ("a_to_b", "b_to_a") for k in ("cross_modal", "upper_bound", "chance")
    }
    assert all(r["toc"] and r["method"] == method and 0 <= r["accuracy"] <= 1 for r in lines)
    chance = [r["accuracy"] for r in lines if r["kind"] == "chance"]
    assert chance == [0.5, 0.5]  # 5 of each class among the 10 test rows
    assert "<table" in (run / "transfer" / "report.html").read_text()
    saved = json.loads((run / "transfer" / "transfer.json").read_text())
    assert saved["toc"] is True and len(saved["results"]) == 6


def test_codes_are_the_same_after_reloading(tmp_path: Path) -> None:
    """The run folder alone (config + safetensors) reproduces the codes: two calls agree."""
    config, down = tiny_dataset(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "--set", "train.epochs=1"]) == 0
    for name in ("c1.npz", "c2.npz"):
        assert (
            main(["codes", str(run), "--manifest", str(down), "--out", str(tmp_path / name)]) == 0
        )
    with np.load(tmp_path / "c1.npz") as c1, np.load(tmp_path / "c2.npz") as c2:
        np.testing.assert_array_equal(c1["b/codes"], c2["b/codes"])


def test_bad_inputs_give_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, down = tiny_dataset(tmp_path)
    np.savez(tmp_path / "bad.npz", feats=np.zeros((2, 3, 4)))
    with pytest.raises(Exception, match="field 'features' missing"):
        read_sequences(tmp_path / "bad.npz")
    (tmp_path / "pretrain.csv").write_text("id,a,b\np0,a0,nope\np1,a1,b1\n")
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pretrain.csv, row 1 (id 'p0'): field 'b' = 'nope'" in err
    assert (
        main(
            [
                "transfer",
                str(tmp_path / "missing"),
                "--manifest",
                str(down),
                "--train-modality",
                "a",
                "--test-modality",
                "b",
            ]
        )
        == 1
    )
    assert "a codebook run folder" in capsys.readouterr().err
