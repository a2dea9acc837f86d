"""A trained run folder as a model: saved self-contained, loaded anywhere, encoding new items.

At the end of training the run folder gets two files beside ``config.yaml``:

* ``model.safetensors``: the best weights (heads, temperature, and any encoder trained or run
  inside the model); safetensors holds tensors only, so loading a run from someone else cannot
  run code;
* ``model.json``: for each modality, the encoder the heads read (``precomputed`` with its input
  width, or a raw encoder) and, when they read cached features, the *source* encoder that made
  those features (registry name, options, and its cache key, which names its weights); the shared
  space's width; and ``model_id``, a hash of the weights.

:func:`load` rebuilds the model from these files alone: the training manifest and feature files
may be gone. A new raw item (an image or audio path, a text) goes source encoder, then head;
a modality that trained on features a user supplied accepts an (N, D) array of such features.

Example:
    >>> import tempfile
    >>> from modalign.config import load_config
    >>> from modalign.data.synthetic import write_synthetic_dataset
    >>> from modalign.train.loop import fit
    >>> d = Path(tempfile.mkdtemp())
    >>> manifest = write_synthetic_dataset(d, n=200, dims={"a": 12, "b": 8})
    >>> cfg = load_config(None, [f"data.manifest={manifest}", f"data.features.a={d / 'a.npy'}",
    ...     f"data.features.b={d / 'b.npy'}", "train.epochs=1", "train.tensorboard=false",
    ...     "model.embed_dim=16"])
    >>> _ = fit(cfg, d / "run")
    >>> model = load(d / "run")
    >>> model.modalities, model.input_kind("a")
    (['a', 'b'], 'array')
    >>> emb = model.encode("a", np.random.default_rng(0).normal(size=(3, 12)).astype(np.float32))
    >>> emb.shape, bool(np.allclose(np.linalg.norm(emb, axis=1), 1.0))
    ((3, 16), True)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from modalign.config import Config, load_config
from modalign.data.manifest import Manifest
from modalign.encoders import ENCODERS, Encoder, build_encoder
from modalign.errors import DataError
from modalign.features.store import FeatureStore
from modalign.io import atomic_path, write_json_atomic
from modalign.model.aligner import Aligner, build_model
from modalign.types import EmbeddingSet

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
FORMAT = 1

InputKind = Literal["text", "file", "array"]


def file_digest(path: Path) -> str:
    """blake2b (16 bytes, hex) of a file's content: the id of a saved model."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def modality_card(
    cfg: Config, modality: str, spec: tuple[str, dict[str, Any]], input_dim: int | None,
    source_key: str | None,
) -> dict[str, Any]:  # fmt: skip
    """What ``model.json`` records of one modality (see the module docstring)."""
    card: dict[str, Any] = {"encoder": spec[0], "options": spec[1], "input_dim": input_dim}
    named = cfg.model.encoders.get(modality)
    if spec[0] == "precomputed" and named is not None and named.name != "precomputed":
        card["source"] = {"encoder": named.name, "options": dict(named.options), "key": source_key}
    return card


def save_model(run_dir: Path, model: Aligner, modalities: dict[str, dict[str, Any]]) -> str:
    """Write ``model.safetensors`` then ``model.json`` (each atomically); returns the model id."""
    from safetensors.torch import save_model as save_weights

    run_dir = Path(run_dir)
    with atomic_path(run_dir / WEIGHTS_FILE) as tmp:
        save_weights(model, str(tmp))  # handles tied weights of encoders run inside the model
    model_id = file_digest(run_dir / WEIGHTS_FILE)
    card = {
        "format": FORMAT,
        "model_id": model_id,
        "embed_dim": model.embed_dim,
        "modalities": modalities,
    }
    write_json_atomic(run_dir / CARD_FILE, card)
    return model_id


class TrainedModel:
    """A trained run: encode new items of any modality into the shared space.

    Use :func:`load` to make one. ``encode`` returns float32 (N, D) unit rows.
    """

    def __init__(
        self, run_dir: Path, cfg: Config, aligner: Aligner, card: dict[str, Any], model_id: str
    ) -> None:
        self.run_dir, self.cfg, self.aligner = run_dir, cfg, aligner
        self.card, self.model_id = card, model_id
        self.device = next(aligner.parameters()).device
        self._sources: dict[str, Encoder] = {}

    @property
    def modalities(self) -> list[str]:
        return list(self.card["modalities"])

    @property
    def embed_dim(self) -> int:
        return int(self.card["embed_dim"])

    def input_kind(self, modality: str) -> InputKind:
        """``text`` (strings), ``file`` (paths) or ``array`` (features only) for ``modality``."""
        encoder = self._raw_encoder(modality)
        if encoder is None:
            return "array"
        return "file" if encoder.reads_files else "text"

    def encode(
        self,
        modality: str,
        items: Sequence[str] | np.ndarray | torch.Tensor,
        batch_size: int = 64,
        progress: bool | None = None,
    ) -> np.ndarray:
        """Embed ``items`` of ``modality``: texts, file paths, or an (N, F) feature array.

        Args:
            modality: one of :attr:`modalities`. items: see :meth:`input_kind`; an array is
                taken as the features the heads (or the source encoder's output) expect.
            batch_size: items per forward pass. progress: a tqdm bar (None: when > 4 batches).

        Returns:
            float32 (N, D) L2-normalised rows.
        """
        self._check_modality(modality)
        if isinstance(items, np.ndarray | torch.Tensor):
            return self._encode_features(modality, torch.as_tensor(np.asarray(items)), batch_size)
        items = list(items)
        encoder = self._raw_encoder(modality)
        if encoder is None:
            raise DataError(
                f"modality {modality!r} trained on features you supplied: pass an (N, "
                f"{self.card['modalities'][modality]['input_dim']}) array, not texts or paths"
            )
        out = np.empty((len(items), self.embed_dim), dtype=np.float32)
        show = len(items) > 4 * batch_size if progress is None else progress
        starts = range(0, len(items), batch_size)
        for start in tqdm(starts, desc=f"encode {modality}", disable=not show, leave=False):
            batch = items[start : start + batch_size]
            out[start : start + len(batch)] = self._encode_raw(modality, encoder, batch)
        return out

    @torch.no_grad()
    def _encode_raw(self, modality: str, encoder: Encoder, items: Sequence[str]) -> np.ndarray:
        from modalign.encoders.common import ItemSkipped
        from modalign.model.inference import to_device

        loaded = []
        for item in items:
            try:
                loaded.append(encoder.load(str(item)))
            except ItemSkipped as skip:
                raise DataError(f"{modality} item {str(item)!r}: {skip}") from None
        inputs = to_device(encoder.collate(loaded), self.device)
        if modality in self._sources:  # source encoder -> features -> head
            return self._encode_features(modality, encoder(inputs).float(), len(items))
        self.aligner.eval()
        return self.aligner.encode(modality, inputs).float().cpu().numpy()

    @torch.no_grad()
    def _encode_features(self, modality: str, x: torch.Tensor, batch_size: int) -> np.ndarray:
        want = self.card["modalities"][modality]["input_dim"]
        if x.ndim != 2 or (want is not None and x.shape[1] != want):
            raise DataError(
                f"modality {modality!r} takes (N, {want}) features, got shape {tuple(x.shape)}"
            )
        if not torch.isfinite(x).all():
            raise DataError(f"modality {modality!r}: features contain NaN or inf")
        self.aligner.eval()
        parts = [
            self.aligner.encode(modality, x[i : i + batch_size].float().to(self.device))
            for i in range(0, len(x), max(1, batch_size))
        ]
        out = torch.cat(parts) if parts else x.new_zeros(0, self.embed_dim)
        return out.float().cpu().numpy()

    def text_modality(self) -> str:
        """The one modality that reads texts (zero-shot class prompts go through it)."""
        texts = [m for m in self.modalities if self.input_kind(m) == "text"]
        if len(texts) != 1:
            raise DataError(
                f"{self.run_dir}: {len(texts)} modalities read texts ({', '.join(texts) or 'none'}); "
                "name the one for class prompts"
            )
        return texts[0]

    def class_prototypes(
        self,
        classes: Sequence[str],
        templates: Sequence[str] = ("{}",),
        modality: str | None = None,
    ) -> np.ndarray:
        """(T, C, D) embeddings of every class name written into every template (``{}`` marks
        where the name goes), through the text modality: CLIP's zero-shot prototypes, ensembled
        by ``modalign.eval.zeroshot``."""
        for t in templates:
            if t.count("{}") != 1:
                raise DataError(
                    f"template {t!r} must contain {{}} exactly once (where the class name goes)"
                )
        modality = modality or self.text_modality()
        prompts = [t.format(c) for t in templates for c in classes]
        flat = self.encode(modality, prompts)  # (T * C, D)
        return flat.reshape(len(templates), len(classes), -1)

    def tower(self, modality: str) -> Tower:
        """The whole path of ``modality`` as one module: raw encoder (when there is one), then
        the model's encoder and head, then L2 normalisation. Its input is what the raw encoder's
        ``collate`` returns (or (B, F) features for a modality without one)."""
        self._raw_encoder(modality)  # builds the source encoder of its features, if any
        return Tower(
            self._sources.get(modality),
            self.aligner.encoders[modality],
            self.aligner.heads[modality],
        )

    def _raw_encoder(self, modality: str) -> Encoder | None:
        """The encoder that reads raw items of ``modality``: the model's own, or the source
        encoder of its features (built once, checked against the recorded weights)."""
        self._check_modality(modality)
        own = self.aligner.encoders[modality]
        if isinstance(own, Encoder) and own.input_kind == "raw":
            return own
        if modality not in self._sources:
            source = self.card["modalities"][modality].get("source")
            if source is None:
                return None
            self._sources[modality] = _build_source(modality, source, self.device)
        return self._sources[modality]

    def _check_modality(self, modality: str) -> None:
        if modality not in self.card["modalities"]:
            raise DataError(
                f"{self.run_dir}: no modality {modality!r} (modalities: {', '.join(self.modalities)})"
            )


class Tower(torch.nn.Module):
    """source encoder (optional) -> encoder -> head -> unit rows: one modality's full path."""

    def __init__(
        self, source: torch.nn.Module | None, encoder: torch.nn.Module, head: torch.nn.Module
    ) -> None:
        super().__init__()
        self.source, self.encoder, self.head = source, encoder, head

    def forward(self, inputs: Any) -> torch.Tensor:  # -> (B, D)
        features = self.source(inputs) if self.source is not None else inputs
        return torch.nn.functional.normalize(self.head(self.encoder(features)), dim=-1)


def _build_source(modality: str, source: dict[str, Any], device: torch.device) -> Encoder:
    """Build the recorded source encoder; refuse one whose weights differ from training's."""
    if source["encoder"] not in ENCODERS:
        raise DataError(
            f"modality {modality!r} needs encoder {source['encoder']!r}, which is not registered "
            "here (is its extra installed?)"
        )
    encoder = build_encoder(source["encoder"], modality, None, dict(source["options"]))
    if source.get("key") and encoder.cache_key() != source["key"]:
        raise DataError(
            f"modality {modality!r}: the {source['encoder']} encoder here ({encoder.cache_key()}) "
            f"is not the one whose features the model trained on ({source['key']})"
        )
    return encoder.to(device).eval()


def load(run_dir: str | Path, device: str | torch.device | None = None) -> TrainedModel:
    """Load a trained run folder as a model (needs only its config, ``model.json`` and
    ``model.safetensors``).

    Args:
        run_dir: the run folder. device: where to run (default: the GPU when there is one).

    Returns:
        A :class:`TrainedModel`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model as load_weights

    run_dir = Path(run_dir)
    card_path, weights = run_dir / CARD_FILE, run_dir / WEIGHTS_FILE
    if not card_path.is_file() or not weights.is_file():
        raise DataError(
            f"{run_dir}: not a trained model folder (no {CARD_FILE} and {WEIGHTS_FILE}; "
            "runs write them when training ends)"
        )
    card = _read_card(card_path)
    cfg = load_config(run_dir / "config.yaml")
    specs = {m: (c["encoder"], dict(c["options"])) for m, c in card["modalities"].items()}
    dims = {m: c["input_dim"] for m, c in card["modalities"].items()}
    aligner = build_model(cfg, dims, specs)
    try:
        missing, unexpected = load_weights(aligner, str(weights), strict=False)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise DataError(f"{weights}: unreadable or not this model's weights ({err})") from None
    if missing or unexpected:
        raise DataError(
            f"{weights}: weights do not fit the model its config builds "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return TrainedModel(run_dir, cfg, aligner.to(target).eval(), card, file_digest(weights))


def _read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable model card ({err})") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT or "modalities" not in card:
        raise DataError(f"{path}: not a modalign model card of format {FORMAT}")
    return card


def encode_manifest(
    model: TrainedModel,
    manifest: Manifest,
    features: Mapping[str, FeatureStore] | None = None,
    batch_size: int = 64,
) -> EmbeddingSet:
    """Embed every row of ``manifest`` in every modality it shares with the model.

    File cells are resolved against the manifest's folder; a modality that takes features reads
    its cells as ids in ``features[modality]``. Each distinct cell is embedded once.

    Returns:
        An ``EmbeddingSet`` (NaN rows where a cell is empty), with the manifest's ids and groups;
        labels are class indices (``Manifest.label_indices``).
    """
    features = dict(features or {})
    out: dict[str, np.ndarray] = {}
    for m in [m for m in manifest.modalities if m in model.modalities]:
        rows = [i for i, c in enumerate(manifest.cells[m]) if c is not None]
        cells = list(dict.fromkeys(manifest.cells[m][i] or "" for i in rows))
        if model.input_kind(m) == "array":
            if m not in features:
                raise DataError(f"modality {m!r} takes features: give its feature file")
            vectors = model.encode(m, features[m].rows(cells), batch_size)
        elif model.input_kind(m) == "file":
            vectors = model.encode(m, [str(manifest.resolve(c)) for c in cells], batch_size)
        else:
            vectors = model.encode(m, cells, batch_size)
        position = {c: j for j, c in enumerate(cells)}
        arr = np.full((len(manifest), model.embed_dim), np.nan, dtype=np.float32)
        arr[rows] = vectors[[position[manifest.cells[m][i] or ""] for i in rows]]
        out[m] = arr
    if not out:
        raise DataError(
            f"{manifest.path}: no column names a modality of the model ({', '.join(model.modalities)})"
        )
    return EmbeddingSet(out, list(manifest.ids), manifest.groups, manifest.label_indices()[1])
