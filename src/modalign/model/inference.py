"""Embedding splits with a trained model, and re-opening a finished run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modalign.config import Config, load_config
from modalign.data.paired import PairedData, iterate_rows
from modalign.errors import DataError
from modalign.model.aligner import Aligner
from modalign.train.checkpoint import load_checkpoint
from modalign.types import EmbeddingSet


def to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors (also inside dicts, lists and tuples) to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device) for v in obj)
    if hasattr(obj, "to"):  # e.g. a tokenizer's BatchEncoding
        return obj.to(device)
    return obj


@torch.no_grad()
def embed_rows(
    model: Aligner, data: PairedData, rows: np.ndarray, batch_size: int = 512
) -> EmbeddingSet:
    """Embed manifest ``rows`` in every modality; missing modalities become NaN rows."""
    model.eval()
    device = next(model.parameters()).device
    out = {
        m: np.full((len(rows), model.embed_dim), np.nan, dtype=np.float32) for m in model.modalities
    }
    for start, batch in zip(
        range(0, len(rows), batch_size), iterate_rows(data, rows, batch_size), strict=True
    ):
        emb = model(to_device(batch.inputs, device))
        for m, e in emb.items():
            positions = start + np.flatnonzero(batch.present[m].numpy())
            out[m][positions] = e.float().cpu().numpy()
    manifest = data.manifest
    groups = manifest.groups[rows] if manifest.groups is not None else None
    labels = data.labels[rows] if data.labels is not None else None
    return EmbeddingSet(out, ids=[manifest.ids[r] for r in rows], groups=groups, labels=labels)


def embed_split(
    model: Aligner, data: PairedData, split: str, batch_size: int = 512
) -> EmbeddingSet:
    """Embed every row of ``split``; a ``DataError`` if the split is empty."""
    rows = data.rows(split)
    if len(rows) == 0:
        raise DataError(f"{data.manifest.path}: the {split} split is empty")
    return embed_rows(model, data, rows, batch_size)


def load_run(run_dir: Path, which: str = "best") -> tuple[Config, Aligner, PairedData]:
    """Rebuild a finished run's model (``best`` or ``last`` weights) and data from its folder."""
    from modalign.pipeline import build_parts

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise DataError(f"{run_dir}: not a run folder (no config.yaml)")
    cfg = load_config(config_path)
    parts = build_parts(cfg)
    path, weights = _run_weights(run_dir, which)
    weights = with_shared_names(weights, parts.model)
    _check_shapes(weights, parts.model.state_dict(), path)
    parts.model.load_state_dict(weights)
    return cfg, parts.model, parts.data


def _run_weights(run_dir: Path, which: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """The ``best`` weights of a finished run from ``model.safetensors`` (tensors only), else
    from the ``best.pt``/``last.pt`` checkpoint."""
    from modalign.model.load import WEIGHTS_FILE

    if which == "best" and (run_dir / WEIGHTS_FILE).is_file():
        from safetensors.torch import load_file

        try:
            return run_dir / WEIGHTS_FILE, load_file(str(run_dir / WEIGHTS_FILE))
        except Exception as err:  # safetensors raises its own error type for damaged files
            raise DataError(f"{run_dir / WEIGHTS_FILE}: unreadable weights ({err})") from None
    ckpt_path = run_dir / f"{which}.pt"
    if not ckpt_path.exists():
        ckpt_path = run_dir / "last.pt"
    return ckpt_path, dict(load_checkpoint(ckpt_path)["model"])


def with_shared_names(saved: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``saved`` with each shared tensor under all its names in ``model``.

    A shared head's weights have two names in a state dict; safetensors stores them once.

    Example:
        >>> head = nn.Linear(2, 2)
        >>> model = nn.ModuleDict({"a": head, "b": head})
        >>> sorted(with_shared_names({"a.weight": head.weight, "a.bias": head.bias}, model))
        ['a.bias', 'a.weight', 'b.bias', 'b.weight']
    """
    names: dict[tuple[int, torch.Size], list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.numel():
            names.setdefault((tensor.data_ptr(), tensor.shape), []).append(name)
    out = dict(saved)
    for group in names.values():
        present = [n for n in group if n in saved]
        for name in group:
            if present and name not in out:
                out[name] = saved[present[0]]
    return out


def _check_shapes(
    saved: dict[str, torch.Tensor], built: dict[str, torch.Tensor], path: Path
) -> None:
    """A one-line error naming the first parameter whose shape differs (features changed width?)."""
    for name in sorted(saved.keys() | built.keys()):
        if name not in saved or name not in built:
            where = "checkpoint" if name in saved else "model"
            raise DataError(
                f"{path}: parameter {name!r} exists only in the {where}; the config builds another model"
            )
        if saved[name].shape != built[name].shape:
            raise DataError(
                f"{path}: weights do not fit the model its config builds: {name!r} has shape "
                f"{tuple(saved[name].shape)} in the checkpoint but {tuple(built[name].shape)} now "
                "(did a feature file change width?)"
            )


def embed_run(run_dir: Path, splits: Sequence[str] | None = None) -> dict[str, EmbeddingSet]:
    """Embed the given splits (default: the config's ``eval.splits``) of a finished run."""
    cfg, model, data = load_run(run_dir)
    return {
        split: embed_split(model, data, split, cfg.eval.chunk_size)
        for split in (splits or cfg.eval.splits)
    }
