"""Pretrain a codebook model on paired temporal features, and load a trained run folder.

A run folder holds everything needed to use the model again, with no pickle:

* ``config.yaml``: the resolved config (``codebook`` section set);
* ``codebook.json``: the method, the modalities and their (T, F) shapes;
* ``model.safetensors``: the state dict (weights, the codebook and its EMA statistics);
* ``metrics.jsonl``: one line per epoch (mean loss terms, perplexity, active codes, overlaps);
  ``metrics.json``: the last epoch's numbers;
* ``toc.json`` once ``modalign codebook toc`` has run.

This module runs its own small loop (Adam for the model, a second Adam for the CLUB
estimators' inner steps) and does not depend on :mod:`modalign.train`.

Example:
    >>> import tempfile, pathlib
    >>> from modalign.quantize.data import write_sequences
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> rng = np.random.default_rng(0)
    >>> write_sequences(d / "a.npz", [f"a{i}" for i in range(16)], rng.normal(size=(16, 4, 3)))
    >>> write_sequences(d / "b.npz", [f"b{i}" for i in range(16)], rng.normal(size=(16, 4, 2)))
    >>> _ = (d / "m.csv").write_text("id,a,b\\n" + "".join(f"{i},a{i},b{i}\\n" for i in range(16)))
    >>> cfg = load_config(None, [f"data.manifest={d / 'm.csv'}", f"data.features.a={d / 'a.npz'}",
    ...     f"data.features.b={d / 'b.npz'}", "codebook.method=dcid", "codebook.quantizer.codes=8",
    ...     "codebook.quantizer.dim=4", "codebook.disentangle.hidden_dim=8", "train.epochs=1",
    ...     "train.batch_size=8"])
    >>> _ = fit_codebook(cfg, d / "run", progress=False)
    >>> load_run(d / "run").model.dims
    {'a': (4, 3), 'b': (4, 2)}
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from modalign.config import Config, load_config, save_config
from modalign.errors import ConfigError, DataError
from modalign.io import atomic_path, write_json_atomic
from modalign.quantize.data import open_stores, read_paired
from modalign.quantize.model import UnifiedModel, build_model

META_FILE, WEIGHTS_FILE, CONFIG_FILE = "codebook.json", "model.safetensors", "config.yaml"


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """``auto``: the first GPU when there is one, else the CPU; otherwise the named device.

    Example:
        >>> pick_device("cpu")
        device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_training_features(cfg: Config) -> dict[str, torch.Tensor]:
    """Paired (N, T, F) features of every modality: manifest rows in the train split (or with no
    split) that have all modalities."""
    modalities = list(cfg.data.modalities or cfg.data.features)
    missing = [m for m in modalities if m not in cfg.data.features]
    if not cfg.data.manifest or missing or len(modalities) < 2:
        raise ConfigError(
            "a codebook run needs data.manifest and data.features for at least two modalities"
            + (f" (no data.features.{missing[0]})" if missing else "")
        )
    rows = read_paired(cfg.data.manifest, modalities, label_column=None)
    stores = open_stores({m: cfg.data.features[m] for m in modalities})
    keep = [
        i
        for i in range(len(rows.ids))
        if all(rows.cells[m][i] is not None for m in modalities)
        and (rows.splits is None or rows.splits[i] in (None, "train"))
    ]
    if len(keep) < 2:
        raise DataError(
            f"{cfg.data.manifest}: fewer than 2 train rows with every modality ({', '.join(modalities)})"
        )
    index = np.array(keep, dtype=np.int64)
    return {m: torch.from_numpy(rows.features(m, stores[m], index)) for m in modalities}


def train_club(
    model: UnifiedModel,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    steps: int,
) -> float:
    """A few maximum-likelihood steps of the CLUB estimators on detached pairs; mean loglik."""
    pairs = model.club_pairs(batch)
    if not pairs or steps == 0:
        return 0.0
    value = 0.0
    for _ in range(steps):
        loglik = sum(est.loglik(x, y) for est, x, y in pairs)
        optimizer.zero_grad(set_to_none=True)
        (-torch.as_tensor(loglik)).backward()
        optimizer.step()
        value = float(torch.as_tensor(loglik).detach())
    return value


def run_epoch(
    model: UnifiedModel,
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer | None],
    data: dict[str, torch.Tensor],
    cfg: Config,
) -> dict[str, float]:
    """One pass over shuffled batches; returns the mean of every loss term and statistic."""
    opt, club_opt = optimizers
    n = len(next(iter(data.values())))
    order = torch.randperm(n).to(next(iter(data.values())).device)
    sums: dict[str, float] = {}
    batches = 0
    for start in range(0, n - 1, cfg.train.batch_size):
        idx = order[start : start + cfg.train.batch_size]
        if len(idx) < 2:  # contrastive terms need at least one negative
            continue
        batch = {m: x[idx] for m, x in data.items()}
        logged: dict[str, float] = {}
        if club_opt is not None:
            logged["club_loglik"] = train_club(
                model, club_opt, batch, cfg.codebook.disentangle.club_steps
            )
        terms, stats = model.losses(batch)
        loss = torch.stack(list(terms.values())).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.main_parameters(), cfg.train.grad_clip)
        opt.step()
        logged |= {
            "loss": float(loss.detach()),
            **{f"loss/{k}": float(v.detach()) for k, v in terms.items()},
            **stats,
        }
        for k, v in logged.items():
            sums[k] = sums.get(k, 0.0) + v
        batches += 1
    return {k: v / max(batches, 1) for k, v in sums.items()}


def fit_codebook(cfg: Config, out: str | Path, progress: bool = True) -> dict[str, float]:
    """Pretrain ``cfg.codebook.method`` on the paired data of ``cfg``; write the run to ``out``.

    Returns:
        The last epoch's mean loss terms and codebook statistics.
    """
    out = Path(out)
    seed_all(cfg.train.seed)
    device = pick_device(cfg.train.device)
    data = {m: x.to(device) for m, x in load_training_features(cfg).items()}
    dims = {m: (int(x.shape[1]), int(x.shape[2])) for m, x in data.items()}
    model = build_model(cfg.codebook, dims).to(device)
    model.fit_normalisation(data)
    model.train()
    opt = torch.optim.Adam(model.main_parameters(), lr=cfg.train.lr)
    clubs = [p for est in model.club_estimators() for p in est.parameters()]
    club_opt = torch.optim.Adam(clubs, lr=cfg.codebook.disentangle.club_lr) if clubs else None
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / CONFIG_FILE)
    (out / "metrics.jsonl").write_text("")
    metrics: dict[str, float] = {}
    for epoch in tqdm(
        range(cfg.train.epochs), desc=f"codebook {cfg.codebook.method}", disable=not progress
    ):
        metrics = {"epoch": float(epoch + 1), **run_epoch(model, (opt, club_opt), data, cfg)}
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
    save_run(model, out)
    write_json_atomic(out / "metrics.json", metrics)
    return metrics


def save_run(model: UnifiedModel, out: Path) -> None:
    """Write the model's weights (safetensors) and its shapes (JSON), atomically."""
    meta = {
        "method": model.cfg.method,
        "modalities": model.modalities,
        "dims": {m: list(d) for m, d in model.dims.items()},
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    write_json_atomic(out / META_FILE, meta)


@dataclass(frozen=True)
class CodebookRun:
    """A trained codebook run loaded from its folder."""

    path: Path
    cfg: Config
    model: UnifiedModel

    def toc_dimensions(self) -> np.ndarray | None:
        """The dimensions ``modalign codebook toc`` kept, or None if it has not run."""
        path = self.path / "toc.json"
        if not path.exists():
            return None
        try:
            return np.asarray(json.loads(path.read_text())["dimensions"], dtype=np.int64)
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path}: unreadable TOC selection ({err})") from None


def load_run(path: str | Path) -> CodebookRun:
    """Rebuild a trained model from ``config.yaml``, ``codebook.json`` and ``model.safetensors``."""
    path = Path(path)
    for name in (CONFIG_FILE, META_FILE, WEIGHTS_FILE):
        if not (path / name).exists():
            raise DataError(f"{path / name}: not found (is {path} a codebook run folder?)")
    cfg = load_config(path / CONFIG_FILE)
    try:
        meta = json.loads((path / META_FILE).read_text())
        dims = {m: (int(t), int(f)) for m, (t, f) in meta["dims"].items()}
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path / META_FILE}: unreadable ({err})") from None
    if cfg.codebook.method is None:
        raise DataError(f"{path / CONFIG_FILE}: codebook.method is not set")
    model = build_model(cfg.codebook, dims)
    try:
        model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    except (RuntimeError, OSError) as err:
        raise DataError(f"{path / WEIGHTS_FILE}: does not fit the run's model ({err})") from None
    return CodebookRun(path, cfg, model.eval())
