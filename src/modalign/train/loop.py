"""The training loop: epochs of contrastive steps, validation, early stopping, checkpoints.

A run folder holds ``config.yaml`` (fully resolved), ``metrics.jsonl`` (one record per logged
step and per epoch), ``tensorboard/``, ``last.pt`` (everything needed to resume exactly),
``best.pt`` (weights of the best validation epoch) and, at the end, ``metrics.json``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from modalign import distributed
from modalign.config import Config, save_config
from modalign.data.paired import Batch, BatchDataset, EpochBatches, merge_chunks
from modalign.errors import ConfigError
from modalign.io import write_json_atomic
from modalign.losses.engine import pair_loss
from modalign.losses.tiled import DEFAULT_TILE
from modalign.model.aligner import Aligner
from modalign.model.inference import embed_split, to_device
from modalign.model.init import init_heads_cca
from modalign.pipeline import RunParts, build_parts
from modalign.threads import auto_threads, step_threads
from modalign.train.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from modalign.train.gradcache import gradcache_step
from modalign.train.metrics_log import MetricsLogger
from modalign.train.optim import AdamW

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What changes during training, beyond the weights and optimiser."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    best: float | None = None
    bad_epochs: int = 0


def active_pairs(
    batch: Batch, pairs: list[tuple[str, str]], device: torch.device | None = None
) -> list[tuple[str, str]]:
    """Pairs with at least two rows holding both modalities in the (global) batch.

    One row has no negatives. Under data parallelism the counts are summed over processes first,
    so every process keeps the same pairs (the collectives inside the loss stay matched) and the
    choice equals that of one process holding the whole batch.
    """
    both = [int((batch.present[a] & batch.present[b]).sum()) for a, b in pairs]
    counts = torch.tensor(both, device=device)  # on the GPU under NCCL
    if distributed.is_distributed():
        torch.distributed.all_reduce(counts)
    return [pair for pair, n in zip(pairs, counts.tolist(), strict=True) if n >= 2]


def pair_losses(
    emb: dict[str, Tensor],
    batch: Batch,
    pairs: list[tuple[str, str]],
    loss_name: str,
    model: Aligner,
    tile_size: int | None = None,
) -> dict[str, Tensor]:
    """The loss of each modality pair over the batch's rows that have both modalities.

    ``emb[m]`` holds only the rows where ``m`` is present, in row order; losses run through the
    engine (``modalign.losses.engine.pair_loss``): tiled kernels, gathered over processes.
    """
    scale, bias = model.scale(), model.bias
    out = {}
    for a, b in pairs:
        both = batch.present[a] & batch.present[b]  # (B,)
        ea, eb = _embedded(emb, a, model), _embedded(emb, b, model)
        groups = None if batch.groups is None else batch.groups[both].to(ea.device)
        if len(ea) == len(eb) == len(both):  # every row has both: no gathers (nor their backward)
            x, y = ea, eb
        else:  # position of row r among m's present rows = (#present rows before r)
            idx_a = (torch.cumsum(batch.present[a].long(), 0) - 1)[both].to(ea.device)
            idx_b = (torch.cumsum(batch.present[b].long(), 0) - 1)[both].to(eb.device)
            x, y = ea[idx_a], eb[idx_b]  # (n, D) each
        out[f"{a}_{b}"] = pair_loss(loss_name, x, y, scale, bias, groups, groups, tile_size)
    return out


def _embedded(emb: dict[str, Tensor], modality: str, model: Aligner) -> Tensor:
    """``emb[modality]``, or (0, D) when this process's share of the batch has none of it (the
    engine still takes part in the other processes' gathers)."""
    if modality in emb:
        return emb[modality]
    return model.log_scale.new_zeros(0, model.embed_dim)


def _warn_if_config_changed(cfg: Config, saved: Path) -> None:
    """Resuming with other settings is allowed, but the schedule and data order may jump: say so."""
    if not saved.exists():
        return
    import yaml

    from modalign.config import to_dict

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    before, now = flat(yaml.safe_load(saved.read_text()) or {}), flat(to_dict(cfg))
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if changed:
        log.warning(
            "resuming with a changed config (%s): the run will not match an uninterrupted one",
            ", ".join(changed),
        )


def make_optimizer(model: Aligner, cfg: Config) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms, the temperature and the logit bias (ndim < 2)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # the fused kernel is several times faster than the per-tensor loop, on CPUs too
    return AdamW(groups, lr=cfg.train.lr, fused=True)


def make_schedule(
    optimizer: torch.optim.Optimizer, cfg: Config, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio``."""
    warmup, floor = cfg.train.warmup_steps, cfg.train.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU when CUDA is present, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def monitored_value(metrics: dict[str, float], name: str) -> float:
    """A full metric key, or the mean of a bare metric name over every val direction."""
    if "/" in name:
        if name not in metrics:
            raise ConfigError(
                f"train.early_stopping.metric {name!r} is not computed; available: {', '.join(sorted(metrics))}"
            )
        return metrics[name]
    values = [v for k, v in metrics.items() if k.startswith("val/") and k.endswith(f"/{name}")]
    if not values:
        raise ConfigError(f"train.early_stopping.metric {name!r} is not computed on the val split")
    return float(np.mean(values))


class Trainer:
    """Runs one training job into a run folder. ``Trainer(cfg, run_dir).fit()``."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        distributed.init_from_env()
        self.main = distributed.rank() == 0  # only the first process writes files
        seed_everything(cfg.train.seed)
        self.parts: RunParts = build_parts(cfg)
        self.device = pick_device(cfg.train.device, distributed.local_rank())
        self.model = self.parts.model.to(self.device)
        if cfg.model.head.init == "cca" and not resume:
            h = cfg.model.head
            init_heads_cca(
                self.model, self.parts.data, self.parts.pairs, h.init_pca_dim, h.init_reg
            )
        train_rows = self.parts.data.rows("train")
        world = distributed.world_size()
        if cfg.train.batch_size % world:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} must be divisible by the {world} processes"
            )
        self.sampler = EpochBatches(
            train_rows,
            cfg.train.batch_size,
            cfg.train.seed,
            rank=distributed.rank(),
            world_size=world,
        )
        self.loader = torch.utils.data.DataLoader(
            BatchDataset(self.parts.data, cfg.train.chunk_size),
            sampler=self.sampler,
            batch_size=None,
            num_workers=cfg.train.num_workers,
            persistent_workers=cfg.train.num_workers > 0,
        )
        steps_per_epoch = max(1, len(self.sampler) // cfg.train.accumulate)
        self.optimizer = make_optimizer(self.model, cfg)
        self.schedule = make_schedule(self.optimizer, cfg, steps_per_epoch * cfg.train.epochs)
        self.state = TrainState()
        self._prepare_folder(resume)
        self.logger = MetricsLogger(
            self.run_dir, cfg.train.tensorboard and self.main, enabled=self.main
        )
        if resume and self.main:
            self.logger.truncate_after(self.state.step)

    def _prepare_folder(self, resume: bool) -> None:
        last = self.run_dir / "last.pt"
        if resume:
            if not last.exists():
                raise ConfigError(f"{self.run_dir}: nothing to resume (no last.pt)")
            self._restore(load_checkpoint(last))
            _warn_if_config_changed(self.cfg, self.run_dir / "config.yaml")
        elif last.exists():
            raise ConfigError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        if not self.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml")
        if self.parts.data.skipped.reasons:
            write_json_atomic(self.run_dir / "skipped_rows.json", self.parts.data.skipped.reasons)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        self.state = TrainState(**ckpt["state"])
        set_rng_state(ckpt["rng"])

    def _checkpoint(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "state": vars(self.state).copy(),
            "rng": rng_state(),
        }

    def fit(self) -> dict[str, float]:
        """Train to the end (or early stop), then evaluate ``eval.splits``; returns metrics.json."""
        cfg = self.cfg
        if cfg.model.head.init != "random" and self.state.step == 0:
            self._score_initial()
        while (
            self.state.epoch < cfg.train.epochs
            and self.state.bad_epochs < cfg.train.early_stopping.patience
        ):
            with step_threads(self._step_threads()):
                self._train_epoch()
                self._end_epoch()
        self.logger.close()
        with step_threads(self._step_threads()):
            return self.evaluate()

    def _step_threads(self) -> int | None:
        """Intra-op threads for an epoch: ``train.num_threads``, else chosen from the step's work
        and the machine's load now (``modalign.threads``); None (unchanged) on a GPU."""
        cfg = self.cfg.train
        if cfg.num_threads is not None or self.device.type != "cpu":
            return cfg.num_threads
        rows = cfg.batch_size // distributed.world_size()
        tile = self.cfg.loss.tile_size or DEFAULT_TILE
        return auto_threads(
            self.model, min(rows, cfg.chunk_size or rows), self.model.embed_dim, tile
        )

    def _score_initial(self) -> None:
        """Score fitted initial heads on val as epoch 0: training must beat them to replace them."""
        val = self._validate()
        if val is None:
            return
        self.state.best = monitored_value(val, self.cfg.train.early_stopping.metric)
        self._save("best.pt", {"model": self.model.state_dict(), "epoch": 0})
        self.logger.log(0, {"epoch": 0, **val})

    def _validate(self) -> dict[str, float] | None:
        """Retrieval metrics of the current weights on the val split (None without one)."""
        if not len(self.parts.data.rows("val")):
            return None
        from modalign.eval.retrieval import evaluate_retrieval

        cfg = self.cfg
        emb = embed_split(self.model, self.parts.data, "val", cfg.eval.chunk_size)
        return evaluate_retrieval(emb, "val", cfg.eval.ks, cfg.eval.chunk_size)

    def _save(self, name: str, state: dict[str, Any]) -> None:
        """Write a checkpoint from the first process only; the others wait until it is on disk."""
        if self.main:
            save_checkpoint(self.run_dir / name, state)
        if distributed.is_distributed():
            torch.distributed.barrier()

    def _train_epoch(self) -> None:
        cfg, model = self.cfg, self.model
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.sampler.set_epoch(self.state.epoch)
        bar = tqdm(
            self.loader,
            desc=f"epoch {self.state.epoch + 1}/{cfg.train.epochs}",
            leave=False,
            dynamic_ncols=True,
            disable=None,
        )
        for i, chunks in enumerate(bar):
            batch = merge_chunks(chunks)
            pairs = active_pairs(batch, self.parts.pairs, self.device)
            if not pairs:
                continue
            losses = self._forward_backward(chunks, batch, pairs)
            loss = distributed.all_reduce_mean(torch.stack(list(losses.values())).mean())
            if (i + 1) % cfg.train.accumulate and i + 1 < len(self.sampler):
                continue  # accumulate; the last batches of an epoch step even if fewer
            grad_norm = self._optimizer_step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if self.state.step % cfg.train.log_every == 0:
                self._log_step(loss, losses, grad_norm)

    def _forward_backward(
        self, chunks: list[Batch], batch: Batch, pairs: list[tuple[str, str]]
    ) -> dict[str, Tensor]:
        """Losses of one batch, gradients accumulated; gradient-cached when it came in chunks."""
        cfg, model = self.cfg, self.model
        scale = 1.0 / cfg.train.accumulate
        if cfg.train.chunk_size is None:
            emb = model(to_device(batch.inputs, self.device))
            losses = pair_losses(emb, batch, pairs, cfg.loss.name, model, cfg.loss.tile_size)
            (torch.stack(list(losses.values())).mean() * scale).backward()
            return {k: v.detach() for k, v in losses.items()}
        out: dict[str, Tensor] = {}

        def loss_fn(emb: dict[str, Tensor]) -> Tensor:
            losses = pair_losses(emb, batch, pairs, cfg.loss.name, model, cfg.loss.tile_size)
            out.update({k: v.detach() for k, v in losses.items()})
            return torch.stack(list(losses.values())).mean() * scale

        gradcache_step(lambda c: model(to_device(c.inputs, self.device)), chunks, loss_fn)
        return out

    def _log_step(self, loss: Tensor, losses: dict[str, Tensor], grad_norm: float) -> None:
        model = self.model
        record: dict[str, float] = {
            "epoch": self.state.epoch,
            "train/loss": loss.item(),
            "train/grad_norm": grad_norm,
            "train/temperature": 1.0 / model.scale().item(),
            "lr": float(self.schedule.get_last_lr()[0]),
        }
        record.update({f"train/loss_{k}": v.item() for k, v in losses.items()})
        if model.bias is not None:
            record["train/bias"] = model.bias.item()
        self.logger.log(self.state.step, record)

    def _optimizer_step(self) -> float:
        distributed.average_gradients([p for p in self.model.parameters() if p.requires_grad])
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.cfg.train.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        self.model.clamp_scale()
        self.state.step += 1
        return float(norm)

    def _end_epoch(self) -> None:
        cfg, state = self.cfg, self.state
        state.epoch += 1
        record: dict[str, float] = {"epoch": state.epoch}
        val = self._validate()
        better = True  # no validation split: the latest weights are the best we know
        if val is not None:
            record.update(val)
            value = monitored_value(val, cfg.train.early_stopping.metric)
            better = state.best is None or (
                value > state.best if cfg.train.early_stopping.mode == "max" else value < state.best
            )
            state.best, state.bad_epochs = (
                (value, 0) if better else (state.best, state.bad_epochs + 1)
            )
            log.info(
                "epoch %d: val %s = %.4f%s",
                state.epoch,
                cfg.train.early_stopping.metric,
                value,
                " (best)" if better else "",
            )
        if better:
            self._save("best.pt", {"model": self.model.state_dict(), "epoch": state.epoch})
        self.logger.log(state.step, record)
        self._save("last.pt", self._checkpoint())

    def evaluate(self) -> dict[str, float]:
        """Score the best weights on ``eval.splits``; writes and returns ``metrics.json``."""
        from modalign.eval.retrieval import evaluate_retrieval

        best = self.run_dir / "best.pt"
        if not self.main:
            return {}
        if best.exists():  # with train.epochs=0 the untrained weights are scored
            self.model.load_state_dict(load_checkpoint(best)["model"])
        metrics: dict[str, float] = {}
        for split in self.cfg.eval.splits:
            if len(self.parts.data.rows(split)):
                emb = embed_split(self.model, self.parts.data, split, self.cfg.eval.chunk_size)
                metrics.update(
                    evaluate_retrieval(emb, split, self.cfg.eval.ks, self.cfg.eval.chunk_size)
                )
            else:
                log.warning("split %r is empty: not evaluated", split)
        write_json_atomic(self.run_dir / "metrics.json", metrics)
        return metrics


def fit(cfg: Config, run_dir: Path, resume: bool = False) -> dict[str, float]:
    """Train a run described by ``cfg`` into ``run_dir``; returns the final metrics."""
    try:
        return Trainer(cfg, run_dir, resume).fit()
    finally:
        distributed.shutdown()
