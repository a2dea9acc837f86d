"""``modalign eval --embeddings`` and ``modalign compare``: outputs, keys, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modalign.cli import main


def _write_npz(path: Path, noise: float, seed: int = 0, **extra: np.ndarray) -> None:
    rng = np.random.default_rng(seed)
    n_img, c, d = 40, 4, 16
    label = rng.integers(0, c, n_img)
    protos = rng.standard_normal((c, d))
    img = protos[label] + 0.7 * rng.standard_normal((n_img, d))
    own = np.repeat(np.arange(n_img), 2)  # two captions per image, image repeated per row
    txt = img[own] + noise * np.random.default_rng(1).standard_normal((len(own), d))
    audio = txt + 0.5 * rng.standard_normal(txt.shape)
    audio[::3] = np.nan  # missing modality
    arrays = dict(image=img[own], text=txt, audio=audio, group=own, label=label[own])
    arrays["classes"] = np.stack([protos, protos + 0.1])  # (T, C, D) templates
    arrays.update(extra)
    np.savez(
        path, **{k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in arrays.items()}
    )


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    d = tmp_path_factory.mktemp("ev")
    _write_npz(d / "a.npz", noise=1.0)
    _write_npz(d / "b.npz", noise=0.2)
    (d / "names.txt").write_text("cat\ndog\ncar\ntree\n")
    for name in ("a", "b"):
        args = ["eval", "--embeddings", str(d / f"{name}.npz"), "--out", str(d / name)]
        assert main([*args, "--class-names", str(d / "names.txt"), "--bootstrap", "100"]) == 0
    return d


def test_eval_writes_all_outputs_with_flat_keys(evaluated):
    out = evaluated / "a"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["all/image_to_text/n_queries"] == 40  # repeated image rows count once
    assert metrics["all/text_to_image/n_queries"] == 80
    assert 0 <= metrics["all/audio_to_image/recall@1"] <= 1
    assert not any(k.startswith("all_centered") for k in metrics)  # not a fake split any more
    centred = metrics["all/image_to_text/recall@1~centered"]
    assert 0 <= centred <= 1
    for key in (
        "all/image_vs_text/modality_gap",
        "all/image/effective_rank",
        "all/audio/zero_shot_top1",
        "all/text/linear_probe_accuracy",
        "all/image_to_text/hubness_skew@10",
    ):
        assert key in metrics, key
    intervals = json.loads((out / "intervals.json").read_text())
    lo, hi = intervals["all/image_to_text/recall@1"]
    assert lo <= metrics["all/image_to_text/recall@1"] <= hi
    html = (out / "report.html").read_text()
    assert (
        "data:image/png;base64" in html
        and "Summary" in html
        and "http" not in html.split("<body>")[1]
    )
    assert "cat" in html  # class names reach the confusion matrix
    assert f"<td>image → text</td><td>{metrics['all/image_to_text/recall@1']:.3f}</td>" in html
    assert f"<td>{centred:.3f}</td>" in html.split("recall@1 centred")[1]


def test_compare_finds_the_better_run(evaluated, capsys):
    capsys.readouterr()
    out_json = evaluated / "cmp.json"
    assert (
        main(
            [
                "compare",
                str(evaluated / "a"),
                str(evaluated / "b"),
                "--out",
                str(out_json),
                "--bootstrap",
                "300",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    res = json.loads(out_json.read_text())
    r = res["all/text_to_image/recall@1"]
    assert r["diff"] > 0 and r["significant"] == 1.0 and r["n_queries"] == 80
    assert "significant" in printed


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"group": np.arange(3)}, "'group' must be an integer (80,)"),
        ({"bad": np.zeros((5, 16), np.float32)}, "'bad' has 5 rows"),
        ({"text": np.zeros((80, 16), np.float32)}, "'text' row 0 is all zeros"),
        ({"audio": np.ones((80, 7), np.float32)}, "must share a width"),
        (
            {"speech_to_text": np.ones((80, 16), np.float32)},
            "array 'speech_to_text' cannot name a modality: it contains '_to_'",
        ),
    ],
)
def test_bad_npz_names_the_array(tmp_path, capsys, extra, message):
    _write_npz(tmp_path / "x.npz", 1.0, **extra)
    assert (
        main(["eval", "--embeddings", str(tmp_path / "x.npz"), "--out", str(tmp_path / "o")]) == 1
    )
    assert message in capsys.readouterr().err


def test_usage_errors(tmp_path, capsys):
    assert main(["eval"]) == 1
    assert "either a run folder or --embeddings" in capsys.readouterr().err
    _write_npz(tmp_path / "x.npz", 1.0)
    (tmp_path / "n.txt").write_text("a\nb\n")
    args = [
        "eval",
        "--embeddings",
        str(tmp_path / "x.npz"),
        "--out",
        str(tmp_path / "o"),
        "--class-names",
        str(tmp_path / "n.txt"),
    ]
    assert main(args) == 1
    assert "2 class names" in capsys.readouterr().err
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 1
    assert "has no finished evaluation" in capsys.readouterr().err


def test_eval_a_trained_run_folder(tmp_path, capsys):
    import sys

    from modalign.config import save_config

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from conftest import synthetic_config

    cfg = synthetic_config(tmp_path / "data", n=300)
    save_config(cfg, tmp_path / "c.yaml")
    run = tmp_path / "run"
    assert (
        main(["train", str(tmp_path / "c.yaml"), "--out", str(run), "--set", "train.epochs=1"]) == 0
    )
    before = json.loads((run / "metrics.json").read_text())
    assert main(["eval", str(run), "--bootstrap", "50"]) == 0
    after = json.loads((run / "metrics.json").read_text())
    assert before.keys() <= after.keys()  # merged, not replaced
    assert any(k.startswith("test/") and k.endswith("/recall@1") for k in after)
    assert any(k.endswith("/modality_gap") for k in after)
    assert (run / "per_query.npz").is_file()
    assert "Training" in (run / "report.html").read_text()


def test_one_modality_without_labels_is_refused(tmp_path, capsys):
    np.savez(tmp_path / "one.npz", image=np.ones((4, 3), np.float32))
    assert (
        main(["eval", "--embeddings", str(tmp_path / "one.npz"), "--out", str(tmp_path / "o")]) == 1
    )
    assert "nothing to measure" in capsys.readouterr().err
