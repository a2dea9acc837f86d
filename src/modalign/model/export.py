"""Export a trained run's towers for use without modalign: ONNX graphs or a sentence-transformers folder.

A *tower* is one modality's whole path (``TrainedModel.tower``): the raw encoder (the frozen
source encoder that made the training features, or an encoder trained inside the model), the
model's encoder and head, then L2 normalisation. Two formats (``EXPORT_FORMATS``):

* ``onnx``: ``DIR/<modality>.onnx`` per tower, with a dynamic batch axis (and sequence axis for
  text), named inputs and one output ``embedding`` (B, D), plus ``DIR/export.json`` describing
  each graph's inputs and the preprocessing that happens outside it: the tokenizer (saved beside
  as ``DIR/<modality>_tokenizer/``) for text; size, mean and std for images; sample rate for
  audio (the graph takes zero-padded waveforms and their lengths; the log-mel front end is inside
  it, its STFT written as a DFT matrix product, which ONNX runtimes run everywhere); the feature
  width for modalities trained on your own features. Each graph is checked under onnxruntime
  against torch on the export's example inputs; the largest difference is recorded.
* ``sentence-transformers``: the text tower as a folder that ``SentenceTransformer(DIR)`` loads:
  the source model's own modules, then standard ``LayerNorm``/``Dense``/``Normalize`` modules
  for a linear head (a ``batch`` input norm is folded into the Dense layer). Other heads (MLP
  with shortcut) and trainable feature encoders are one ``modalign.model.st_module.TowerHead``
  module: loading then needs modalign installed and ``trust_remote_code=True``.

The TorchScript-based ONNX exporter (``dynamo=False``) is used: it needs only ``onnx``, traces
the transformers text models here, and has no ``onnxscript`` dependency.

References:
    ONNX operator sets (onnx.ai); Reimers & Gurevych, 2019, "Sentence-BERT" (module layout).
"""

from __future__ import annotations

import importlib
import json
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modalign.encoders import ENCODERS, Encoder
from modalign.encoders.audio import AudioFileEncoder
from modalign.encoders.features import PrecomputedEncoder
from modalign.encoders.image import ImageFileEncoder
from modalign.encoders.spectrogram import SpectrogramCNNEncoder
from modalign.encoders.speech import SpeechTextEncoder
from modalign.encoders.text import SentenceTransformerEncoder
from modalign.errors import ConfigError
from modalign.io import write_json_atomic
from modalign.model.heads import LinearHead, Standardize
from modalign.model.load import Tower, TrainedModel
from modalign.registry import Registry

EXPORT_FILE = "export.json"
OPSET = 17
PARITY_TOL = 1e-4  # largest |onnxruntime - torch| accepted on the export's own examples


@dataclass
class GraphInputs:
    """What one tower's graph takes: input names, example tensors (for tracing), dynamic axes,
    and the preprocessing a user does before calling it (written to ``export.json``)."""

    names: list[str]
    examples: list[torch.Tensor]
    axes: dict[str, dict[int, str]]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    as_dict: bool = True  # the tower takes {name: tensor} (else the single tensor itself)


def raw_encoder_of(tower: Tower) -> Encoder | None:
    """The encoder that reads raw items in ``tower`` (its source, or a raw model encoder).

    Example:
        >>> from modalign.encoders.features import PrecomputedEncoder
        >>> tower = Tower(None, PrecomputedEncoder("vec", input_dim=4), nn.Linear(4, 3))
        >>> raw_encoder_of(tower) is None
        True
        >>> PositionalTower(tower, ["features"], as_dict=False)(torch.ones(2, 4)).shape
        torch.Size([2, 3])
    """
    if isinstance(tower.source, Encoder):
        return tower.source
    if isinstance(tower.encoder, Encoder) and tower.encoder.input_kind == "raw":
        return tower.encoder
    return None


def _text_inputs(encoder: Encoder, out: Path, modality: str) -> GraphInputs:
    assert isinstance(encoder, SentenceTransformerEncoder)
    batch = encoder.collate(["a short text", "a somewhat longer text to pad the other one"])
    names = [k for k, v in batch.items() if isinstance(v, torch.Tensor)]
    folder = f"{modality}_tokenizer"
    encoder.model.tokenizer.save_pretrained(str(out / folder))
    prep = {
        "kind": "text",
        "tokenizer": folder,
        "max_length": encoder.model.max_seq_length,
        "how": "tokenizer(texts, padding=True, truncation=True, max_length=max_length, "
        "return_tensors='np'); feed the inputs named here (int64)",
    }
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    return GraphInputs(names, [batch[n].long() for n in names], axes, prep)


def _image_inputs(encoder: Encoder, out: Path, modality: str) -> GraphInputs:
    assert isinstance(encoder, ImageFileEncoder)
    s = encoder.size
    prep = {
        "kind": "image",
        "size": s,
        "mean": list(encoder.mean),
        "std": list(encoder.std),
        "how": "RGB (transparency composited onto white); fit inside a size x size square, "
        "aspect kept, bicubic, centred on white; pixels / 255, then (x - mean) / std per "
        "channel; float32 (B, 3, size, size)",
    }
    example = torch.rand(2, 3, s, s) * 2 - 1
    return GraphInputs(["pixels"], [example], {"pixels": {0: "batch"}}, prep, as_dict=False)


def _audio_inputs(encoder: Encoder, out: Path, modality: str) -> GraphInputs:
    assert isinstance(encoder, AudioFileEncoder)
    batch = encoder.collate([torch.randn(encoder.sample_rate // 2), torch.randn(1234)])
    prep = {
        "kind": "audio",
        "sample_rate": encoder.sample_rate,
        "max_seconds": encoder.max_seconds,
        "how": "decode, mix to mono, resample to sample_rate, crop to max_seconds; zero-pad the "
        "batch to its longest clip: wave float32 (B, T), lengths int64 (B,) in samples",
    }
    axes = {"wave": {0: "batch", 1: "samples"}, "lengths": {0: "batch"}}
    return GraphInputs(["wave", "lengths"], [batch["wave"], batch["lengths"]], axes, prep)


def _speech_inputs(encoder: Encoder, out: Path, modality: str) -> GraphInputs:
    raise ConfigError(
        f"modality {modality!r}: speech_text runs a speech recogniser, which cannot be an ONNX "
        "graph; export the other modalities (--modality), or transcribe the audio yourself and "
        "embed the transcripts"
    )


def _per_clip_inputs(encoder: Encoder, out: Path, modality: str) -> GraphInputs:
    raise ConfigError(
        f"modality {modality!r}: audio_efficientnet runs each clip through its CNN on its own (a "
        "loop over clip lengths, which a traced graph would fix to the example's); export the "
        "other modalities (--modality), or embed new sounds with modalign encode"
    )


# Graph inputs by the class of the raw encoder (checked in order; subclasses match their base).
GRAPH_INPUTS: list[tuple[type[Encoder], Callable[[Encoder, Path, str], GraphInputs]]] = [
    (SentenceTransformerEncoder, _text_inputs),
    (ImageFileEncoder, _image_inputs),
    (SpectrogramCNNEncoder, _per_clip_inputs),
    (AudioFileEncoder, _audio_inputs),
    (SpeechTextEncoder, _speech_inputs),
]


def graph_inputs(model: TrainedModel, modality: str, out: Path) -> GraphInputs:
    """The inputs of ``modality``'s graph; a ``ConfigError`` for an encoder without an export."""
    raw = raw_encoder_of(model.tower(modality))
    if raw is None:
        dim = int(model.card["modalities"][modality]["input_dim"])
        prep = {"kind": "features", "dim": dim, "how": "float32 (B, dim) features, as in training"}
        feats = torch.randn(2, dim)
        return GraphInputs(["features"], [feats], {"features": {0: "batch"}}, prep, as_dict=False)
    for cls, make in GRAPH_INPUTS:
        if isinstance(raw, cls):
            return make(raw, out, modality)
    raise ConfigError(
        f"modality {modality!r}: its encoder {type(raw).__name__} has no ONNX export "
        f"(exportable: {', '.join(c.__name__ for c, _ in GRAPH_INPUTS)} and feature inputs)"
    )


class PositionalTower(nn.Module):
    """A tower called with positional tensors (what ONNX export traces) instead of a dict."""

    def __init__(self, tower: Tower, names: Sequence[str], as_dict: bool) -> None:
        super().__init__()
        self.tower, self.names, self.as_dict = tower, list(names), as_dict

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:  # -> (B, D)
        return self.tower(dict(zip(self.names, inputs, strict=True)) if self.as_dict else inputs[0])


EXPORT_FORMATS: Registry[Callable[[TrainedModel, Path, Sequence[str]], dict[str, Any]]] = Registry(
    "export format"
)
"""Export functions by ``--format``: ``(model, folder, modalities) -> export.json content``."""


@EXPORT_FORMATS.register("onnx")
def export_onnx(model: TrainedModel, out: Path, modalities: Sequence[str]) -> dict[str, Any]:
    """Write ``<modality>.onnx`` for each of ``modalities`` into ``out``; returns the description.

    Args:
        model: a loaded run (on the CPU). out: an existing, empty folder.
        modalities: the towers to export.

    Returns:
        ``{"format": "onnx", "opset", "model_id", "embed_dim", "graphs": {modality: {...}}}``;
        each graph entry has ``file``, ``inputs`` (name, dtype, shape), ``output`` and
        ``preprocessing``, and ``max_abs_diff`` (onnxruntime vs torch on the examples).
    """
    _require_export("onnx")
    specs = {m: graph_inputs(model, m, out) for m in modalities}  # refuse before any tracing
    graphs = {}
    for m, spec in specs.items():
        diff = export_tower(model.tower(m), spec, out / f"{m}.onnx")
        graphs[m] = {
            "file": f"{m}.onnx",
            "inputs": [
                _describe(n, x, spec.axes[n])
                for n, x in zip(spec.names, spec.examples, strict=True)
            ],
            "output": {
                "name": "embedding",
                "dtype": "float32",
                "shape": ["batch", model.embed_dim],
            },
            "preprocessing": spec.preprocessing,
            "max_abs_diff": diff,
        }
    return {"format": "onnx", "opset": OPSET, "graphs": graphs}


def export_tower(tower: Tower, spec: GraphInputs, path: Path) -> float:
    """Trace ``tower`` on ``spec``'s examples into the ONNX file ``path``; returns the largest
    |onnxruntime - torch| on those examples (see :func:`check_onnx`)."""
    wrapped = PositionalTower(tower, spec.names, spec.as_dict).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            torch.onnx.export(
                wrapped,
                tuple(spec.examples),
                str(path),
                input_names=spec.names,
                output_names=["embedding"],
                dynamic_axes={**spec.axes, "embedding": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        except Exception as err:  # the tracer raises many kinds; the user needs one line
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise ConfigError(
                f"{path.stem}: this tower does not trace to ONNX ({type(err).__name__}: {first})"
            ) from None
    try:
        return check_onnx(path, wrapped, spec)
    except Exception as err:  # a graph onnxruntime cannot run, or runs wrongly: no file left
        path.unlink(missing_ok=True)
        if isinstance(err, ConfigError):
            raise
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ConfigError(
            f"{path.stem}: onnxruntime cannot run the traced graph ({type(err).__name__}: {first})"
        ) from None


def _require_export(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"ONNX export needs the Python package {module!r}: pip install 'modalign[export]'"
        ) from None


def _describe(name: str, x: torch.Tensor, axes: dict[int, str]) -> dict[str, Any]:
    shape = [axes.get(i, int(n)) for i, n in enumerate(x.shape)]
    return {"name": name, "dtype": str(x.dtype).removeprefix("torch."), "shape": shape}


def check_onnx(path: Path, wrapped: nn.Module, spec: GraphInputs) -> float:
    """Largest |onnxruntime - torch| on the example inputs; a ``ConfigError`` above 1e-4."""
    ort = _require_export("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = wrapped(*spec.examples).float().cpu().numpy()  # (B, D)
    feed = {n: x.cpu().numpy() for n, x in zip(spec.names, spec.examples, strict=True)}
    got = session.run(["embedding"], feed)[0]
    diff = float(np.abs(got - want).max())
    if not diff <= PARITY_TOL:
        raise ConfigError(f"{path}: onnxruntime differs from torch by {diff:.2e} (> {PARITY_TOL})")
    return diff


@EXPORT_FORMATS.register("sentence-transformers")
def export_sentence_transformers(
    model: TrainedModel, out: Path, modalities: Sequence[str]
) -> dict[str, Any]:
    """Write the one text tower in ``modalities`` as a sentence-transformers folder ``out``.

    Returns:
        ``{"format": "sentence-transformers", "modality", "modules": [...],
        "trust_remote_code": bool}`` (True when a modalign module is part of the folder).
    """
    texts = [
        m
        for m in modalities
        if isinstance(raw_encoder_of(model.tower(m)), SentenceTransformerEncoder)
    ]
    if len(texts) != 1 or len(modalities) != 1:
        found = ", ".join(texts) or "none"
        raise ConfigError(
            "--format sentence-transformers exports one text modality read by a "
            f"sentence-transformers model (give --modality; text modalities here: {found})"
        )
    from sentence_transformers import SentenceTransformer

    tower = model.tower(texts[0])
    raw = raw_encoder_of(tower)
    assert isinstance(raw, SentenceTransformerEncoder)
    modules = list(raw.model)
    if raw.normalize and type(modules[-1]).__name__ != "Normalize":
        modules.append(_st_normalize())
    middle = None if tower.source is None else tower.encoder  # the model's encoder on features
    modules += [*head_modules(model, texts[0], middle, tower.head), _st_normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    custom = any(type(m).__module__.startswith("modalign.") for m in modules)
    names = [f"{type(m).__module__}.{type(m).__name__}" for m in modules]
    return {"format": "sentence-transformers", "modality": texts[0], "modules": names,
            "trust_remote_code": custom}  # fmt: skip


def st_classes() -> dict[str, type]:
    """sentence-transformers' ``Dense``, ``LayerNorm`` and ``Normalize`` (moved in version 6)."""
    try:
        modules = importlib.import_module("sentence_transformers.sentence_transformer.modules")
    except ImportError:  # sentence-transformers < 6
        modules = importlib.import_module("sentence_transformers.models")
    return {n: getattr(modules, n) for n in ("Dense", "LayerNorm", "Normalize")}


def _st_normalize() -> nn.Module:
    return st_classes()["Normalize"]()


def head_modules(
    model: TrainedModel, modality: str, middle: nn.Module | None, head: nn.Module
) -> list[nn.Module]:
    """sentence-transformers modules computing ``head(middle(x))`` on the sentence embedding.

    A linear head after the identity encoder becomes ``[LayerNorm,] Dense`` (a ``batch`` input
    norm folds into the Dense: ``W (x - mu) / s + b = (W / s) x + (b - W mu / s)``); anything
    else becomes one modalign ``TowerHead`` module.
    """
    st = st_classes()
    if (middle is None or isinstance(middle, PrecomputedEncoder)) and isinstance(head, LinearHead):
        weight = head.proj.weight.detach().double()  # (D, F)
        bias = torch.zeros(weight.shape[0], dtype=torch.float64)
        if head.proj.bias is not None:
            bias = head.proj.bias.detach().double()
        prefix: list[nn.Module] = []
        if isinstance(head.norm, Standardize):
            stats = head.norm.running_mean, head.norm.running_var
            assert stats[0] is not None and stats[1] is not None  # track_running_stats is on
            mean, scale = stats[0].double(), (stats[1].double() + head.norm.eps).rsqrt()  # (F,)
            bias, weight = bias - weight @ (mean * scale), weight * scale[None, :]
        elif isinstance(head.norm, nn.LayerNorm):
            norm = st["LayerNorm"](weight.shape[1])
            norm.norm.load_state_dict(head.norm.state_dict())
            norm.norm.eps = head.norm.eps
            prefix.append(norm)
        dense = st["Dense"](
            weight.shape[1], weight.shape[0], bias=True, activation_function=nn.Identity()
        )
        dense.linear.weight.data.copy_(weight.float())
        dense.linear.bias.data.copy_(bias.float())
        return [*prefix, dense]
    from modalign.model.st_module import TowerHead

    return [TowerHead.from_parts(model, modality, middle, head)]


def export_run(
    model: TrainedModel, fmt: str, out: str | Path, modalities: Sequence[str] | None = None
) -> dict[str, Any]:
    """Export ``model`` in format ``fmt`` (a key of ``EXPORT_FORMATS``) into the folder ``out``.

    The folder is written beside ``out`` and renamed into place; an existing ``out`` is replaced
    only when it holds an earlier export (an ``export.json``) or nothing.

    Args:
        model: from ``modalign.model.load.load``. fmt: ``onnx`` or ``sentence-transformers``.
        out: the folder to write. modalities: towers to export (default: all for ONNX, the
            text modality for sentence-transformers).

    Returns:
        The content of ``out/export.json``.

    Example:
        >>> from modalign.model.load import load
        >>> model = load("runs/x", device="cpu")  # doctest: +SKIP
        >>> export_run(model, "onnx", "runs/x-onnx")["graphs"]["text"]["inputs"]  # doctest: +SKIP
        [{'name': 'input_ids', 'dtype': 'int64', 'shape': ['batch', 'sequence']}, ...]
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(
            f"--format {fmt!r} is unknown; known: {', '.join(EXPORT_FORMATS.names())}"
        )
    if model.device.type != "cpu":  # onnxruntime checks on the CPU; GPU kernels differ more
        raise ConfigError("export a model loaded on the CPU: load(run, device='cpu')")
    chosen = list(modalities or default_modalities(model, fmt))
    unknown = [m for m in chosen if m not in model.modalities]
    if unknown:
        raise ConfigError(f"no modality {unknown[0]!r} (modalities: {', '.join(model.modalities)})")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / EXPORT_FILE).is_file():
        raise ConfigError(f"{out}: exists and is not an earlier export; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        description = EXPORT_FORMATS.get(fmt)(model, tmp, chosen)
        description.update(model_id=model.model_id, embed_dim=model.embed_dim,
                           run=str(model.run_dir))  # fmt: skip
        write_json_atomic(tmp / EXPORT_FILE, description)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return description


def default_modalities(model: TrainedModel, fmt: str) -> list[str]:
    """Every modality for ONNX; for sentence-transformers those whose recorded encoder (or
    source encoder) is a sentence-transformers model (read from the card: nothing is built)."""
    if fmt != "sentence-transformers":
        return model.modalities
    texts = []
    for m, card in model.card["modalities"].items():
        name = (card.get("source") or card)["encoder"]
        cls = ENCODERS.get(name) if name in ENCODERS else None
        if cls is not None and issubclass(cls, SentenceTransformerEncoder):
            texts.append(m)
    return texts or model.modalities


def export_json(folder: str | Path) -> dict[str, Any]:
    """Read ``export.json`` of an export folder."""
    data: dict[str, Any] = json.loads((Path(folder) / EXPORT_FILE).read_text(encoding="utf-8"))
    return data
