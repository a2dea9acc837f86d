"""Zero-shot from the command line through a run whose text modality reads raw texts, checked
against a numpy reference of nearest-prototype classification; labels reach `eval RUN` too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modalign.cli import main
from modalign.config import load_config
from modalign.data.manifest import read_manifest
from modalign.encoders import build_encoder
from modalign.features.extract import embed_manifest
from modalign.features.store import write_features
from modalign.model.load import load
from modalign.train.loop import fit

pytest.importorskip("sentence_transformers", reason="needs the encoders extra")

ANIMALS = ("cat", "dog", "bird")


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run aligning captions (frozen all-MiniLM-L6-v2 features) with a 'signal' feature
    modality that is a noisy view of the animal; returns (run, folder)."""
    d = tmp_path_factory.mktemp("zs")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 24)).astype(np.float32)
    rows, feats = ["id,caption,signal,label,split"], []
    for i in range(90):
        a = i % 3
        split = "train" if i < 60 else ("val" if i < 75 else "test")
        rows.append(f"r{i},a {ANIMALS[a]} number {i},s{i},{ANIMALS[a]},{split}")
        feats.append(centres[a] + 0.3 * rng.normal(size=24).astype(np.float32))
    (d / "m.csv").write_text("\n".join(rows) + "\n")
    write_features(d / "signal.npy", [f"s{i}" for i in range(90)], np.stack(feats))
    text = build_encoder("sentence_transformer", "caption", None, {})
    manifest = read_manifest(d / "m.csv", ["caption", "signal"])
    embed_manifest(manifest, {"caption": text}, {"caption": d / "caption.npy"}, progress=False)
    cfg = load_config(None, [
        f"data.manifest={d / 'm.csv'}", f"data.features.caption={d / 'caption.npy'}",
        f"data.features.signal={d / 'signal.npy'}", "model.encoders.caption.name=sentence_transformer",
        "data.modalities=[caption, signal]", "model.embed_dim=16", "model.head.kind=linear",
        "train.epochs=8", "train.batch_size=30", "train.lr=0.01", "train.warmup_steps=1",
        "train.tensorboard=false", "data.min_rows=4",
    ])  # fmt: skip
    fit(cfg, d / "run")
    return d / "run", d


def test_zeroshot_matches_a_numpy_reference(
    text_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, d = text_run
    templates = ["a {}", "a photo of a {}"]
    argv = ["zeroshot", str(run), "--manifest", str(d / "m.csv"), "--modality", "signal",
            "--classes", ",".join(ANIMALS), "--out", str(tmp_path / "zs")]  # fmt: skip
    argv += [f"--template={t}" for t in templates]
    argv += [f"--features=signal={d / 'signal.npy'}"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    model = load(run)
    x = model.encode("signal", np.load(d / "signal.npy"))
    protos = np.stack([model.encode("caption", [t.format(c) for c in ANIMALS]) for t in templates])
    protos = protos / np.linalg.norm(protos, axis=-1, keepdims=True)
    mean = protos.mean(0)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    predicted = (x @ mean.T).argmax(1)
    truth = np.arange(90) % 3
    metrics = json.loads((tmp_path / "zs" / "metrics.json").read_text())
    assert metrics["all/signal/zero_shot_top1"] == pytest.approx((predicted == truth).mean())
    assert printed["all/signal/zero_shot_top1"] == pytest.approx(
        (predicted == truth).mean(), abs=1e-4
    )
    per_class = [(predicted[truth == c] == c).mean() for c in range(3)]
    assert metrics["all/signal/zero_shot_balanced_accuracy"] == pytest.approx(np.mean(per_class))
    assert (tmp_path / "zs" / "report.html").is_file()


def test_zeroshot_refuses_unknown_labels_and_bad_templates(
    text_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, d = text_run
    base = ["zeroshot", str(run), "--manifest", str(d / "m.csv"), "--modality", "signal",
            "--out", str(tmp_path / "zs"), f"--features=signal={d / 'signal.npy'}"]  # fmt: skip
    assert main([*base, "--classes", "cat,dog"]) == 1
    assert "row 3, field 'label': label 'bird' is not one of the classes" in capsys.readouterr().err
    assert main([*base, "--classes", "cat,dog,bird", "--template", "no slot"]) == 1
    assert "must contain {} exactly once" in capsys.readouterr().err


def test_eval_run_uses_the_label_column_and_fits_baselines(
    text_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, d = text_run
    (tmp_path / "names.txt").write_text("dog\ncat\nbird\n")
    argv = ["eval", str(run), "--out", str(tmp_path / "ev"), "--splits", "test",
            "--class-names", str(tmp_path / "names.txt"), "--template", "a {}", "--baselines",
            "--bootstrap", "0"]  # fmt: skip
    (tmp_path / "ev").mkdir()
    assert main(argv) == 0
    capsys.readouterr()
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    model = load(run)
    rows = list(range(75, 90))  # the test split
    x = model.encode("signal", np.load(d / "signal.npy")[rows])
    protos = model.encode("caption", ["a dog", "a cat", "a bird"])
    truth = np.array([("dog", "cat", "bird").index(ANIMALS[i % 3]) for i in rows])
    expected = ((x @ protos.T).argmax(1) == truth).mean()
    assert metrics["test/signal/zero_shot_top1"] == pytest.approx(expected)
    assert {"test/signal/linear_probe_accuracy", "test/caption/knn_accuracy"} <= metrics.keys()
    baselines = json.loads((tmp_path / "ev" / "baselines.json").read_text())
    assert set(baselines) == {"random", "procrustes", "cca"}
    assert "test/signal_to_caption/recall@1" in baselines["cca"]
    assert "Trained model vs baselines" in (tmp_path / "ev" / "report.html").read_text()
