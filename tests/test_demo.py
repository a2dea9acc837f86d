"""The demo end to end with a tiny setting, on a stamps tree the test draws itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sentence_transformers", reason="the demo needs the encoders extra")
pytest.importorskip(
    "pocketsphinx", reason="the demo transcribes spoken descriptions (extra speech)"
)
sf = pytest.importorskip("soundfile")
Image = pytest.importorskip("PIL.Image")
ImageDraw = pytest.importorskip("PIL.ImageDraw")

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (40, 60, 220),
    "yellow": (240, 220, 20),
}
SHAPES = ("circle", "square", "triangle")


def draw_stamps(root: Path, copies: int = 5) -> Path:
    """Coloured shapes with captions ("A red circle."); a tone whose pitch follows the colour."""
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for shape in SHAPES:
            for k in range(copies):
                folder = root / shape
                folder.mkdir(parents=True, exist_ok=True)
                stem = folder / f"{name}-{shape}-{k}"
                image = Image.new("RGBA", (64, 64), (255, 255, 255, 0))
                pen = ImageDraw.Draw(image)
                box = (8 + k, 8 + k, 56 - k, 56 - k)
                if shape == "circle":
                    pen.ellipse(box, fill=rgb)
                elif shape == "square":
                    pen.rectangle(box, fill=rgb)
                else:
                    pen.polygon([(32, 6 + k), (58 - k, 58 - k), (6 + k, 58 - k)], fill=rgb)
                image.save(stem.with_suffix(".png"))
                stem.with_suffix(".txt").write_text(
                    f"A {name} {shape} number {k}.\n", encoding="utf-8"
                )
                t = np.arange(8000) / 16000
                if k % 2 == 0:
                    sf.write(
                        stem.with_suffix(".ogg"),
                        np.sin(2 * np.pi * 220 * (c + 1) * t).astype(np.float32),
                        16000,
                    )
                if k < 3:  # a spoken description: here a tone whose pitch follows the shape
                    sf.write(
                        folder / f"{stem.name}_desc.ogg",
                        np.sin(2 * np.pi * 300 * (SHAPES.index(shape) + 1) * t).astype(np.float32),
                        16000,
                    )
    return root


def test_demo_smoke_run_writes_metrics_baselines_and_report(tmp_path: Path) -> None:
    from modalign.demo import run_demo

    root = draw_stamps(tmp_path / "stamps")
    result = run_demo(tmp_path / "out", root=root, cache=tmp_path / "cache", smoke=True)
    run = tmp_path / "out" / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    baselines = json.loads((run / "baselines.json").read_text())
    assert metrics == pytest.approx(result.metrics)
    assert {
        "test/image_to_caption/recall@1",
        "test/caption_to_image/recall@1",
        "test/sound_to_caption/recall@1",
        "test/description_to_image/recall@1",
    } <= metrics.keys()
    assert set(baselines) == {"random", "procrustes", "cca"}
    for scores in baselines.values():
        assert "test/image_to_caption/recall@1" in scores and set(scores) <= set(metrics)
    html = (run / "report.html").read_text()
    for part in (
        "Training",
        "Trained model vs baselines",
        "Example retrievals",
        "data:image/png;base64",
    ):
        assert part in html, part
    trained = metrics["test/image_to_caption/recall@1"]  # in its row of the baseline table
    assert f"<tr><td>image_to_caption</td><td>{trained:.3f}</td>" in html
    assert json.loads((run / "timings.json").read_text()).keys() >= {
        "embed",
        "train",
        "report",
        "total",
    }

    from modalign.index.store import Index

    index = Index.load(tmp_path / "out" / "index")  # every stamp's items, for `modalign serve`
    assert index.modalities == ["caption", "description", "image", "sound"]
    assert index.model_id == json.loads((run / "model.json").read_text())["model_id"]
    first = next(i for i in index.items if i.endswith(":caption"))
    hits = index.search(index.vector(first)[None], 3, modality="image")[0]
    assert len(hits) == 3 and hits[0].score >= hits[-1].score

    cached = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    run_demo(
        tmp_path / "out", root=root, cache=tmp_path / "cache", smoke=True
    )  # warm: nothing re-embedded
    assert {
        p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()
    } == cached


def test_demo_run_loads_and_embeds_raw_items_after_its_data_is_gone(tmp_path: Path) -> None:
    import shutil

    from modalign.demo import run_demo
    from modalign.model.inference import embed_run, load_run
    from modalign.model.load import load

    root = draw_stamps(tmp_path / "stamps", copies=3)
    result = run_demo(tmp_path / "out", root=root, cache=tmp_path / "cache", smoke=True)
    _, _, data = load_run(result.run_dir)
    ref = embed_run(result.run_dir, ["test"])["test"]
    row = {key: i for i, key in enumerate(data.manifest.ids)}
    items = [(i, row[item]) for i, item in enumerate(ref.ids)][:4]
    captions = [data.manifest.cells["caption"][r] or "" for _, r in items]
    images = [str(data.manifest.resolve(data.manifest.cells["image"][r] or "")) for _, r in items]
    moved = shutil.copytree(result.run_dir, tmp_path / "moved")
    for gone in (tmp_path / "out", tmp_path / "cache"):
        shutil.rmtree(gone)
    model = load(moved)
    assert model.input_kind("caption") == "text" and model.input_kind("image") == "file"
    picked = [i for i, _ in items]
    np.testing.assert_allclose(
        model.encode("caption", captions), ref.embeddings["caption"][picked], atol=1e-4
    )
    np.testing.assert_allclose(
        model.encode("image", images), ref.embeddings["image"][picked], atol=1e-4
    )
