"""Export: ONNX graphs and a sentence-transformers folder give the trained model's vectors.

A tiny real run: captions embedded by the offline all-MiniLM-L6-v2, drawn images by
EfficientNet-Lite0 (at 64 px, to stay fast), tones by log-mel statistics, and a features
modality; heads trained one epoch on those cached features. Each export is compared with
``TrainedModel.encode`` on items the export never saw.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("sentence_transformers", reason="needs the encoders extra")
pytest.importorskip("efficientnet_lite_pytorch", reason="needs the encoders extra")
sf = pytest.importorskip("soundfile")
Image = pytest.importorskip("PIL.Image")
ImageDraw = pytest.importorskip("PIL.ImageDraw")

from modalign.cli import main  # noqa: E402
from modalign.data.manifest import read_manifest  # noqa: E402
from modalign.encoders import Encoder, build_encoder  # noqa: E402
from modalign.errors import ConfigError  # noqa: E402
from modalign.features.extract import embed_manifest  # noqa: E402
from modalign.features.store import write_features  # noqa: E402
from modalign.model.heads import LinearHead  # noqa: E402
from modalign.model.load import load  # noqa: E402
from modalign.train.loop import fit  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220)}
SHAPES = ("circle", "square", "triangle", "ring")
ENCODERS = {
    "text": {"name": "sentence_transformer"},
    "image": {"name": "efficientnet_lite0", "options": {"size": 64}},
    "sound": {"name": "audio_logmel_stats", "options": {"n_mels": 16}},
}


def draw(path: Path, colour: str, shape: str, k: int) -> None:
    image = Image.new("RGBA", (48, 48), (255, 255, 255, 0))
    pen, box, rgb = ImageDraw.Draw(image), (6 + k, 6 + k, 42 - k, 42 - k), COLOURS[colour]
    if shape == "circle":
        pen.ellipse(box, fill=rgb)
    elif shape == "square":
        pen.rectangle(box, fill=rgb)
    elif shape == "ring":
        pen.ellipse(box, outline=rgb, width=5)
    else:
        pen.polygon([(24, 4 + k), (44 - k, 44 - k), (4 + k, 44 - k)], fill=rgb)
    image.save(path)


def write_items(folder: Path, copies: int = 3) -> Path:
    """Images, captions, tones and 8-d features of coloured shapes; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows, keys, vecs = ["id,text,image,sound,vec"], [], []
    for c, colour in enumerate(COLOURS):
        for s, shape in enumerate(SHAPES):
            for k in range(copies):
                stem = f"{colour}-{shape}-{k}"
                draw(folder / f"{stem}.png", colour, shape, k)
                t = np.arange(2000 + 300 * k) / 16000
                tone = np.sin(2 * np.pi * 200 * (c + 1) * (s + 1) * t).astype(np.float32)
                sf.write(folder / f"{stem}.wav", tone, 16000)
                keys.append(stem)
                vecs.append(np.eye(8)[c] + np.eye(8)[3 + s] + 0.1 * rng.normal(size=8))
                rows.append(f"{stem},A {colour} {shape} number {k}.,{stem}.png,{stem}.wav,{stem}")
    (folder / "items.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    write_features(folder / "vec.npy", keys, np.asarray(vecs, dtype=np.float32))
    return folder / "items.csv"


def train_run(data: Path, run: Path, model: dict) -> Path:
    config = {
        "data": {
            "manifest": str(data / "items.csv"),
            "features": {m: str(data / f"{m}.npy") for m in ("text", "image", "sound", "vec")},
        },
        "model": {"embed_dim": 16, "encoders": ENCODERS, **model},
        "train": {"epochs": 1, "batch_size": 16, "tensorboard": False, "warmup_steps": 1},
    }
    (run.parent / f"{run.name}.yaml").write_text(yaml.safe_dump(config))
    from modalign.config import load_config

    fit(load_config(run.parent / f"{run.name}.yaml"), run)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two trained runs over the same real features: linear heads (with a batch-standardised
    text input) and MLP heads (layer-normalised input, linear shortcut)."""
    root = tmp_path_factory.mktemp("export")
    manifest = read_manifest(write_items(root / "data"))
    encoders = {
        m: build_encoder(e["name"], m, None, dict(e.get("options", {})))
        for m, e in ENCODERS.items()
    }
    out = {m: root / "data" / f"{m}.npy" for m in encoders}
    embed_manifest(manifest, encoders, out, cache_dir=root / "cache", progress=False,
                   num_workers=0)  # fmt: skip
    linear = {"head": {"kind": "linear", "bias": True}, "heads": {"text": {"input_norm": "batch"}}}
    mlp = {"head": {"kind": "mlp", "hidden_dim": 32}}
    return {
        "linear": train_run(root / "data", root / "linear", linear),
        "mlp": train_run(root / "data", root / "mlp", mlp),
        "data": root / "data",
    }


NEW_TEXTS = ["a purple hexagon", "A red circle number 1.", "two green rings side by side, small"]


def new_items(folder: Path) -> dict[str, list[str]]:
    """Items the export never saw: other sizes and lengths than its tracing examples."""
    folder.mkdir(exist_ok=True)
    images, sounds = [], []
    for i, (colour, shape) in enumerate([("blue", "ring"), ("red", "square"), ("green", "x")]):
        draw(folder / f"n{i}.png", colour, shape, i)
        sf.write(
            folder / f"n{i}.wav",
            np.cos(np.arange(900 + 700 * i) / (3 + i)).astype(np.float32),
            16000,
        )
        images.append(str(folder / f"n{i}.png"))
        sounds.append(str(folder / f"n{i}.wav"))
    return {"text": NEW_TEXTS, "image": images, "sound": sounds}


def onnx_feed(model, modality: str, items: list[str] | np.ndarray) -> dict[str, np.ndarray]:
    """What a user feeds the graph, made with modalign's own loaders (the export's preprocessing)."""
    tower = model.tower(modality)
    raw = tower.source
    if raw is None:
        return {"features": np.asarray(items, dtype=np.float32)}
    batch = raw.collate([raw.load(x) for x in items])
    if isinstance(batch, torch.Tensor):
        return {"pixels": batch.numpy()}
    return {k: v.numpy() for k, v in batch.items() if isinstance(v, torch.Tensor)}


def test_onnx_graphs_match_torch_for_text_image_audio_and_features(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime", reason="needs the export extra")
    pytest.importorskip("onnx", reason="needs the export extra")
    out = tmp_path / "onnx"
    assert main(["export", str(runs["mlp"]), "--format", "onnx", "--out", str(out)]) == 0
    described = json.loads((out / "export.json").read_text())
    assert set(described["graphs"]) == {"text", "image", "sound", "vec"}
    assert (out / described["graphs"]["text"]["preprocessing"]["tokenizer"]).is_dir()
    assert described["graphs"]["image"]["preprocessing"]["size"] == 64
    model = load(runs["mlp"], device="cpu")
    items: dict[str, list[str] | np.ndarray] = {**new_items(tmp_path / "new")}
    items["vec"] = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    diffs = {}
    for m, graph in described["graphs"].items():
        session = ort.InferenceSession(str(out / graph["file"]), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [i["name"] for i in graph["inputs"]]
        got = session.run(["embedding"], onnx_feed(model, m, items[m]))[0]
        want = model.encode(m, items[m])
        assert got.shape == want.shape == (len(items[m]), 16)
        diffs[m] = float(np.abs(got - want).max())
    print("onnx max abs diff", diffs)
    assert max(diffs.values()) < 1e-4, diffs


@pytest.mark.parametrize(("run", "custom"), [("linear", False), ("mlp", True)])
def test_sentence_transformers_folder_encodes_like_the_model(
    runs: dict[str, Path], tmp_path: Path, run: str, custom: bool
) -> None:
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "st"
    assert (
        main(["export", str(runs[run]), "--format", "sentence-transformers", "--out", str(out)])
        == 0
    )
    described = json.loads((out / "export.json").read_text())
    assert described["trust_remote_code"] is custom
    modules = json.loads((out / "modules.json").read_text())
    assert all(m["type"].startswith("sentence_transformers.") for m in modules) is not custom
    st = SentenceTransformer(str(out), device="cpu", trust_remote_code=custom)
    got = st.encode(NEW_TEXTS, convert_to_numpy=True)
    want = load(runs[run], device="cpu").encode("text", NEW_TEXTS)
    diff = float(np.abs(got - want).max())
    print(f"sentence-transformers ({run} head) max abs diff", diff)
    assert got.shape == want.shape and diff < 1e-5


@pytest.mark.parametrize("norm", ["none", "layer", "batch"])
def test_linear_head_becomes_standard_st_modules(norm: str) -> None:
    from modalign.model.export import head_modules

    torch.manual_seed(0)
    head = LinearHead(6, 4, input_norm=norm, bias=True)  # type: ignore[arg-type]
    head.train()
    for _ in range(3):  # move the running statistics off their start
        head(torch.randn(32, 6) * 3 + 1)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p))
    head.eval()
    x = torch.randn(5, 6) * 2
    features = {"sentence_embedding": x.clone()}
    for module in head_modules(None, "text", None, head):  # type: ignore[arg-type]
        assert type(module).__module__.startswith("sentence_transformers.")
        features = module(features)
    with torch.no_grad():
        torch.testing.assert_close(features["sentence_embedding"], head(x), atol=1e-5, rtol=1e-5)


def test_unknown_format_and_unexportable_modality_fail_in_one_line(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["export", str(runs["linear"]), "--format", "tflite", "--out", str(tmp_path / "a")])
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert "'tflite' is unknown; known: onnx, sentence-transformers" in err and "\n" not in err
    args = [
        "export",
        str(runs["linear"]),
        "--format",
        "sentence-transformers",
        "--modality",
        "image",
    ]
    assert main([*args, "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip()
    assert "one text modality" in err and "\n" not in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mine.txt").write_text("keep me")
    assert main(["export", str(runs["linear"]), "--format", "onnx", "--modality", "vec",
                 "--out", str(tmp_path / "c")]) == 1  # fmt: skip
    assert "is not an earlier export" in capsys.readouterr().err
    assert (tmp_path / "c" / "mine.txt").read_text() == "keep me"
    for _ in range(2):  # an earlier export is replaced
        args = ["export", str(runs["linear"]), "--format", "onnx", "--modality", "vec"]
        assert main([*args, "--out", str(tmp_path / "d")]) == 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["export.json", "vec.onnx"]
    assert main([*args[:-1], "nope", "--out", str(tmp_path / "e")]) == 1
    assert "no modality 'nope'" in capsys.readouterr().err


class UserAudioEncoder(Encoder):
    """A user's raw encoder that modalign knows no ONNX inputs for."""

    input_kind = "raw"
    reads_files = True

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch


def test_encoder_without_an_export_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    from modalign.model.export import export_run

    model = load(runs["linear"], device="cpu")
    model._sources["sound"] = UserAudioEncoder("sound", 32)  # as if the run had used it
    with pytest.raises(ConfigError, match=r"'sound': its encoder UserAudioEncoder has no ONNX"):
        export_run(model, "onnx", tmp_path / "x", ["sound"])
    assert not (tmp_path / "x").exists()


def test_trainable_audio_tower_exports_with_any_clip_lengths(tmp_path: Path) -> None:
    """audio_conv (masked pooling over padded clips) traced once, run on other lengths."""
    ort = pytest.importorskip("onnxruntime", reason="needs the export extra")
    pytest.importorskip("onnx", reason="needs the export extra")
    from modalign.encoders.audio import ConvAudioEncoder
    from modalign.model.export import _audio_inputs, export_tower
    from modalign.model.load import Tower

    torch.manual_seed(0)
    encoder = ConvAudioEncoder("sound", n_mels=16, channels=(8, 8), output_dim=12).eval()
    tower = Tower(None, encoder, LinearHead(12, 6, input_norm="layer")).eval()
    spec = _audio_inputs(encoder, tmp_path, "sound")
    assert export_tower(tower, spec, tmp_path / "sound.onnx") < 1e-4
    session = ort.InferenceSession(str(tmp_path / "sound.onnx"), providers=["CPUExecutionProvider"])
    batch = encoder.collate([torch.randn(n) * 0.3 for n in (700, 5000, 2345)])
    got = session.run(["embedding"], {k: v.numpy() for k, v in batch.items()})[0]
    with torch.no_grad():
        want = tower(batch).numpy()
    assert float(np.abs(got - want).max()) < 1e-4


def test_tower_head_module_saves_and_loads_an_mlp_encoder_and_head(tmp_path: Path) -> None:
    from modalign.model.st_module import TowerHead

    torch.manual_seed(0)
    head = {"kind": "mlp", "hidden_dim": 16, "input_norm": "layer"}
    module = TowerHead("mlp", {"hidden_dim": 8, "output_dim": 6}, 5, head, 4).eval()
    module.save(str(tmp_path))
    again = TowerHead.load(str(tmp_path))
    x = torch.randn(3, 5)
    with torch.no_grad():
        want = module.proj(module.features(x))
        got = again({"sentence_embedding": x})["sentence_embedding"]
    torch.testing.assert_close(got, want)
    assert json.loads((tmp_path / "config.json").read_text())["encoder"] == "mlp"


class SpectrumHead(torch.nn.Module):
    """A head with an FFT inside: complex tensors, which the ONNX exporter cannot trace."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(x).abs()


def test_a_tower_that_does_not_trace_fails_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="needs the export extra")
    from modalign.encoders.features import PrecomputedEncoder
    from modalign.model.export import GraphInputs, export_tower
    from modalign.model.load import Tower

    tower = Tower(None, PrecomputedEncoder("vec", input_dim=8), SpectrumHead())
    spec = GraphInputs(["features"], [torch.randn(2, 8)], {"features": {0: "batch"}}, as_dict=False)
    with pytest.raises(ConfigError, match=r"^vec: this tower does not trace to ONNX \(") as err:
        export_tower(tower, spec, tmp_path / "vec.onnx")
    assert "\n" not in str(err.value)


def test_a_spectrogram_cnn_tower_is_refused_in_one_line(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    from modalign.encoders.spectrogram import SpectrogramCNNEncoder
    from modalign.model.export import export_run

    model = load(runs["linear"], device="cpu")
    model._sources["sound"] = SpectrogramCNNEncoder("sound", n_mels=32)  # as if the run had used it
    with pytest.raises(ConfigError, match=r"'sound': audio_efficientnet runs each clip"):
        export_run(model, "onnx", tmp_path / "x", ["sound"])
    assert not (tmp_path / "x").exists()


class NoisyHead(torch.nn.Module):
    """Traces, but draws noise: onnxruntime's draws differ from torch's, so the check fails."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


def test_a_graph_that_runs_wrong_leaves_no_file(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="needs the export extra")
    from modalign.encoders.features import PrecomputedEncoder
    from modalign.model.export import GraphInputs, export_tower
    from modalign.model.load import Tower

    tower = Tower(None, PrecomputedEncoder("vec", input_dim=4), NoisyHead())
    spec = GraphInputs(["features"], [torch.randn(2, 4)], {"features": {0: "batch"}}, as_dict=False)
    with pytest.raises(ConfigError, match="onnxruntime differs from torch"):
        export_tower(tower, spec, tmp_path / "vec.onnx")
    assert not (tmp_path / "vec.onnx").exists()
