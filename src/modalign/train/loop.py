"""The training loop: epochs of contrastive steps, validation, early stopping, checkpoints.

A run folder holds ``config.yaml`` (fully resolved), ``metrics.jsonl`` (one record per logged
step and per epoch), ``tensorboard/``, ``last.pt`` (everything needed to resume exactly),
``best.pt`` (weights of the best validation epoch) and, at the end, ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import math
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from modalign import distributed
from modalign.config import Config, TrainConfig, save_config
from modalign.data.paired import Batch, BatchDataset, EpochBatches, PairedData, merge_chunks
from modalign.data.prefetch import Prefetch
from modalign.data.samplers import build_sampler
from modalign.errors import ConfigError, DataError
from modalign.io import hold_folder, write_json_atomic
from modalign.losses.tiled import DEFAULT_TILE
from modalign.model.aligner import Aligner
from modalign.model.inference import embed_split, to_device
from modalign.model.init import HEAD_INITS
from modalign.model.load import save_model
from modalign.pipeline import RunParts, build_parts
from modalign.threads import (
    auto_threads,
    choose_threads,
    mean_matmul_flops,
    runnable_others,
    step_threads,
    threads_for_flops,
    usable_cores,
)
from modalign.train.checkpoint import (
    check_model_state,
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


@dataclass
class _Pending:
    """An ended epoch validated in a background thread while the next one trains.

    Attributes:
        ckpt: what its ``last.pt`` holds (copies; its ``state`` lacks the validation's verdict).
        record: its log record, already in the logger's buffer; the metrics join it when known.
        result: the validation metrics of its weights (a copy of the model).
    """

    ckpt: dict[str, Any]
    record: dict[str, float]
    result: Future[dict[str, float] | None]


def _copied(obj: Any) -> Any:
    """A copy of nested dicts, lists and tuples, their tensors and arrays cloned, other leaves
    (numbers, strings) shared. ``copy.deepcopy`` copied the optimiser's and RNG's small tensors
    at about 0.75 ms each: 40 ms an epoch.

    Example:
        >>> state = {"t": torch.zeros(2), "n": [1, (2.0, "x")]}
        >>> c = _copied(state); _ = state["t"].add_(1)
        >>> c["t"].tolist(), c["n"] == state["n"]
        ([0.0, 0.0], True)
    """
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, dict):  # a state dict's OrderedDict keeps its type and _metadata
        out = type(obj)((k, _copied(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = copy.deepcopy(obj._metadata)  # type: ignore[attr-defined]
        return out
    if isinstance(obj, list | tuple):
        return type(obj)(_copied(v) for v in obj)
    return copy.copy(obj)


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Leave the objects alive now out of the garbage collector's full passes for the block.

    A full pass walks every tracked object: after importing torch and reading a manifest, some
    200,000 of them, 70-80 ms on one core, and training, validating and checkpointing triggered
    about one per few epochs (3% of a 4-epoch run of the synthetic config). ``gc.freeze``
    moves them to a permanent generation (newer objects are collected as usual) and
    ``gc.unfreeze`` puts them back after; a caller's own freeze is left alone.

    Example:
        >>> with _frozen_heap():
        ...     gc.get_freeze_count() > 0
        True
        >>> gc.get_freeze_count()
        0
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


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

    try:
        before, now = flat(yaml.safe_load(saved.read_text()) or {}), flat(to_dict(cfg))
    except (yaml.YAMLError, OSError, ValueError, AttributeError):
        log.warning("%s: unreadable; cannot tell whether the config changed", saved)
        return
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if changed:
        log.warning(
            "resuming with a changed config (%s): the run will not match an uninterrupted one",
            ", ".join(changed),
        )


def make_loader(
    data: PairedData, cfg: TrainConfig
) -> tuple[EpochBatches, torch.utils.data.DataLoader[list[Batch]]]:
    """This process's share of every epoch's batches (a sampler), and the loader over them."""
    world = distributed.world_size()
    if cfg.batch_size % world:
        raise ConfigError(
            f"train.batch_size={cfg.batch_size} must be divisible by the {world} processes"
        )
    sampler = build_sampler(data, cfg, distributed.rank(), world)
    loader = torch.utils.data.DataLoader(
        BatchDataset(data, cfg.chunk_size),
        sampler=sampler,
        batch_size=None,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
    )
    return sampler, loader


def make_optimizer(model: Aligner, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms, the temperature and the logit bias (ndim < 2)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # the fused kernel is several times faster than the per-tensor loop, on CPUs too
    return AdamW(groups, lr=cfg.lr, fused=True)


def make_schedule(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio``."""
    warmup, floor = cfg.warmup_steps, cfg.min_lr_ratio

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
    from modalign.types import MetricKey, headline_keys

    if MetricKey.try_parse(name) is not None:
        if name not in metrics:
            raise ConfigError(
                f"train.early_stopping.metric {name!r} is not computed; available: {', '.join(sorted(metrics))}"
            )
        return metrics[name]
    values = [metrics[k] for k in headline_keys(metrics, split="val", metric=name)]
    if not values:
        raise ConfigError(f"train.early_stopping.metric {name!r} is not computed on the val split")
    return float(np.mean(values))


class Trainer:
    """Runs one training job into a run folder. ``Trainer(cfg, run_dir).fit()``.

    ``overlap``: validate each epoch in a background thread while the next one trains (see
    :meth:`_overlaps`); ``prefetch``: read the next batches in a background thread (see
    :meth:`_prefetches`). None decides from the machine, True/False force it (results are the
    same either way).
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        resume: bool = False,
        overlap: bool | None = None,
        prefetch: bool | None = None,
    ) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.overlap, self.prefetch = overlap, prefetch
        self._pending: _Pending | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._writes: list[Future[None]] = []  # checkpoints being written in the background
        self._fitting = False  # work goes to the background thread only inside fit()
        self._shown = -math.inf  # when the progress bar's loss was last updated
        distributed.init_from_env()
        self.main = distributed.rank() == 0  # only the first process writes files
        seed_everything(cfg.train.seed)
        self.parts: RunParts = build_parts(cfg)
        self.device = pick_device(cfg.train.device, distributed.local_rank())
        self.model = self.parts.model.to(self.device)
        self.objective = self.parts.objective
        self.head_init = HEAD_INITS.get(cfg.model.head.init)
        if self.head_init.fit is not None and not (resume and (self.run_dir / "last.pt").exists()):
            anchor = self.objective.anchor_pair()
            self.head_init.fit(self.model, self.parts.data, anchor, cfg.model.head)
        self.sampler, self.loader = make_loader(self.parts.data, cfg.train)
        # what every step clips and averages, listed once (two walks over the modules per step
        # showed up in profiles of small batches)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        steps_per_epoch = max(1, len(self.sampler) // cfg.train.accumulate)
        self.optimizer = make_optimizer(self.model, cfg.train)
        self.schedule = make_schedule(self.optimizer, cfg.train, steps_per_epoch * cfg.train.epochs)
        self.state = TrainState()
        # one writer per run folder: held from before the folder is checked until fit() ends
        self._lock = contextlib.ExitStack()
        if self.main:
            self._lock.enter_context(hold_folder(self.run_dir, "train"))
        try:
            self._prepare_folder(resume)
        except BaseException:
            self._lock.close()
            raise
        self.logger = MetricsLogger(
            self.run_dir, cfg.train.tensorboard and self.main, enabled=self.main
        )
        if self.main:  # a fresh start (or restart) drops records of a run killed before last.pt
            self.logger.truncate_after(self.state.step if self.resumed else -1)

    def _prepare_folder(self, resume: bool) -> None:
        last = self.run_dir / "last.pt"
        self.resumed = resume and last.exists()
        if resume and not last.exists() and (self.run_dir / "config.yaml").exists():
            log.warning(
                "%s: the run stopped before its first checkpoint; starting it again from the beginning",
                self.run_dir,
            )
        elif resume:
            if not last.exists():
                raise ConfigError(f"{self.run_dir}: nothing to resume (no last.pt)")
            self._restore(load_checkpoint(last), last)
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

    def _restore(self, ckpt: dict[str, Any], path: Path) -> None:
        check_model_state(ckpt["model"], self.model.state_dict(), path)
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.schedule.load_state_dict(ckpt["schedule"])
            self.objective.load_state_dict(ckpt.get("objective", {}))
            self.state = TrainState(**ckpt["state"])
            set_rng_state(ckpt["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise DataError(
                f"{path}: cannot resume from this checkpoint ({str(err).splitlines()[0][:200]})"
            ) from None

    def _checkpoint(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "objective": self.objective.state_dict(),
            "state": vars(self.state).copy(),
            "rng": rng_state(),
        }

    def fit(self) -> dict[str, float]:
        """Train to the end (or early stop), then evaluate ``eval.splits``; returns metrics.json."""
        threads = torch.get_num_threads()
        # the run folder stays locked until its metrics.json is written
        with self._lock, _frozen_heap():
            try:
                return self._fit()
            finally:  # records buffered before an error reach the log too
                self._stop_background()
                self.logger.close()
                # the background threads run one intra-op thread each, and torch takes a
                # thread's setting as the default of threads started after it: the caller's again
                torch.set_num_threads(threads)

    def _fit(self) -> dict[str, float]:
        cfg = self.cfg
        if self.head_init.fit is not None and self.state.step == 0:
            self._score_initial()
        patience = cfg.train.early_stopping.patience
        self._fitting = True
        while self.state.epoch < cfg.train.epochs and self.state.bad_epochs < patience:
            with step_threads(self._step_threads()):
                self._train_epoch()
            if self.state.bad_epochs >= patience:
                break  # the epoch before, validated during this one, ended the run: it was undone
            self._end_epoch()  # validation picks its own threads: its products are larger
        self._fitting = False
        self._wait_writes()  # best.pt is read next
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

    def _validate(
        self, model: Aligner | None = None, threads: int | None = None
    ) -> dict[str, float] | None:
        """Retrieval metrics of ``model`` (the trained one) on the val split (None without one),
        with ``threads`` intra-op threads (None: ``train.num_threads``, else chosen here)."""
        if not len(self.parts.data.rows("val")):
            return None
        from modalign.eval.retrieval import evaluate_retrieval

        cfg, model = self.cfg, model or self.model
        n, chunk = len(self.parts.data.rows("val")), cfg.eval.chunk_size
        score_block = 2.0 * min(n, chunk) * n * model.embed_dim  # flops of one score block
        threads = threads or cfg.train.num_threads
        if threads is None and self.device.type == "cpu":
            threads = threads_for_flops(score_block)
        with step_threads(threads):
            emb = embed_split(model, self.parts.data, "val", chunk)
            return evaluate_retrieval(emb, "val", cfg.eval.ks, chunk)

    def _overlaps(self) -> bool:
        """Whether the epoch just ended is validated in a background thread while the next one
        trains (inside ``fit``, another epoch to come, a val split): by default where that
        costs the steps nothing, i.e. one CPU process whose steps run one thread whatever the
        load, a core free beside it, and every input read from a feature store."""
        if not self._fitting or self.state.epoch >= self.cfg.train.epochs:
            return False
        if distributed.is_distributed() or not len(self.parts.data.rows("val")):
            return False
        if self.overlap is not None:
            return self.overlap
        cfg, data = self.cfg.train, self.parts.data
        if self.device.type != "cpu" or data.reads_raw:
            return False
        rows = min(cfg.batch_size, cfg.chunk_size or cfg.batch_size)
        flops = mean_matmul_flops(
            self.model, rows, self.model.embed_dim, self.cfg.loss.tile_size or DEFAULT_TILE
        )
        one = (
            cfg.num_threads or choose_threads(flops, torch.get_num_threads(), usable_cores(), 0)
        ) == 1
        return one and usable_cores() - runnable_others() >= 2

    def _snapshot(self) -> tuple[Aligner, dict[str, Any]]:
        """A copy of the model, and of everything ``last.pt`` holds now (its weights the copy's)."""
        model = copy.deepcopy(self.model)
        ckpt = self._checkpoint()
        return model, {
            k: model.state_dict() if k == "model" else _copied(v) for k, v in ckpt.items()
        }

    def _validate_beside(self, model: Aligner) -> dict[str, float] | None:
        """:meth:`_validate` in the background thread, on one core (the steps hold the other)."""
        torch.set_num_threads(1)  # OpenMP's count is per thread: this thread's own
        return self._validate(model, threads=1)

    def _resolve(self) -> None:
        """Close the epoch validated in the background (waiting for it). When its verdict ends
        the run, the epoch trained since is undone: weights, optimiser, schedule, objective,
        RNG and state return to that epoch's end, its records are dropped (so the run equals
        one that validated in turn)."""
        assert self._pending is not None
        pending, self._pending = self._pending, None
        val = pending.result.result()
        self.logger.held = False
        better = self._judge(val, int(pending.record["epoch"]))
        stop = self.state.bad_epochs >= self.cfg.train.early_stopping.patience
        if stop:
            self.logger.discard_after(pending.ckpt["state"]["step"])
        pending.ckpt["state"].update(best=self.state.best, bad_epochs=self.state.bad_epochs)
        if stop:  # before the background thread writes it: load_state_dict may change the dict
            self._restore(pending.ckpt, self.run_dir / "last.pt")  # (LambdaLR pops a key)
        self._close_epoch(pending.record, val, better, pending.ckpt)

    def _stop_background(self) -> None:
        """Wait for a background validation (an error ended the run) and still checkpoint its
        epoch, as a run that validated in turn had done (best effort: the first error wins)."""
        self._fitting = False  # (what is written now, is written in this thread)
        if self._pending is not None:
            if self._pending.result.exception() is None:  # waits
                with contextlib.suppress(Exception):
                    self._resolve()
            self._pending, self.logger.held = None, False
        for write in self._writes:
            write.exception()  # waits; the error that ended the run is the one to report
        self._writes = []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

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
        # one iterator, made here: it draws its seed from the global generator at this point of
        # the run whatever reads it (tqdm.auto would iterate an iterable twice, drawing twice)
        batches = iter(self.loader)
        prefetch = (  # the next batches read on the free core
            Prefetch(batches, setup=lambda: torch.set_num_threads(1))
            if self._prefetches()
            else None
        )
        bar = tqdm(
            prefetch or batches,
            desc=f"epoch {self.state.epoch + 1}/{cfg.train.epochs}",
            total=len(self.loader),
            leave=False,
            dynamic_ncols=True,
            disable=None,
        )
        with bar, prefetch or contextlib.nullcontext():
            for i, chunks in enumerate(bar):
                if self._pending is not None and self._pending.result.done():
                    self._resolve()  # the epoch before is validated: close it
                    if self.state.bad_epochs >= cfg.train.early_stopping.patience:
                        return  # ... it ended the run, and this epoch was undone
                batch = merge_chunks(chunks)
                plan = self.objective.plan(batch.present, self.device)
                if not plan:
                    continue
                losses = self._forward_backward(chunks, batch, plan)
                if (i + 1) % cfg.train.accumulate and i + 1 < len(self.sampler):
                    continue  # accumulate; the last batches of an epoch step even if fewer
                self._report(bar, losses, self._optimizer_step())
        if self._pending is not None:
            self._resolve()  # wait for the validation of the epoch before

    def _prefetches(self) -> bool:
        """Whether this epoch's batches are read in a background thread (:mod:`modalign.data.prefetch`).
        By default where the loader reads in this process (``train.num_workers: 0``), some input
        is read raw (features from a store are a cheap gather: a thread would cost more than it
        saves), and the steps leave a core to it (``torch.get_num_threads()``, set for the
        epoch, is below this process's share of the cores, all of them split between the
        machine's ``torchrun`` processes; a GPU step holds one core). Other processes' load is
        not counted: the reading is work the epoch does anyway, and beside one-thread steps it
        stalls no barrier."""
        if self.prefetch is not None:
            return self.prefetch
        if self.cfg.train.num_workers or not self.parts.data.reads_raw:
            return False
        step = torch.get_num_threads() if self.device.type == "cpu" else 1
        return usable_cores() // distributed.local_world_size() > step

    def _report(self, bar: Any, losses: dict[str, Tensor], grad_norm: float) -> None:
        """The step's mean loss to the progress bar (at most as often as the bar redraws) and,
        every ``train.log_every`` steps, to the log; on several processes every process joins
        the mean at every step (their bars need not agree)."""
        logged = self.state.step % self.cfg.train.log_every == 0
        now = time.monotonic()
        shown = not bar.disable and now - self._shown >= bar.mininterval
        if logged or shown or distributed.is_distributed():
            loss = distributed.all_reduce_mean(torch.stack(list(losses.values())).mean())
            if shown:  # drawn with the bar's next update, not redrawn now
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
                self._shown = now
            if logged:
                self._log_step(loss, losses, grad_norm)

    def _forward_backward(self, chunks: list[Batch], batch: Batch, plan: Any) -> dict[str, Tensor]:
        """Losses of one batch, gradients accumulated; gradient-cached when it came in chunks."""
        cfg, model = self.cfg, self.model
        out: dict[str, Tensor] = {}

        def loss_fn(emb: dict[str, Tensor]) -> Tensor:
            terms = self.objective.terms(
                emb, batch.present, batch.groups, plan, model.scale(), model.bias
            )
            out.update({k: v.detach() for k, v in terms.items()})
            total = self.objective.total(terms)
            # x * 1.0 == x: without accumulation, one autograd node less per step, same numbers
            return total if cfg.train.accumulate == 1 else total * (1.0 / cfg.train.accumulate)

        def embed(b: Batch) -> dict[str, Tensor]:
            return model(to_device(b.inputs, self.device))

        if cfg.train.chunk_size is None:
            loss_fn(embed(batch)).backward()
        else:
            gradcache_step(embed, chunks, loss_fn)
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
        distributed.average_gradients(self.trainable)
        clip = self.cfg.train.grad_clip
        # parameters without a gradient (a modality absent from the batch) are skipped inside
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, clip if clip else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        self.model.clamp_scale()
        self.state.step += 1
        return float(norm)

    def _end_epoch(self) -> None:
        """Validate the epoch just trained, then judge, log and checkpoint it; in the background
        while the next epoch trains where :meth:`_overlaps` says so (closed by :meth:`_resolve`)."""
        self.state.epoch += 1
        record: dict[str, float] = {"epoch": self.state.epoch}
        if not self._overlaps():
            val = self._validate()
            self._close_epoch(record, val, self._judge(val, self.state.epoch), None)
            return
        model, ckpt = self._snapshot()
        self.logger.held = True  # its record is written once it holds its metrics: held
        self.logger.log(self.state.step, record)  # before logging it, which may flush
        future = self._background().submit(self._validate_beside, model)
        self._pending = _Pending(ckpt, record, future)

    def _judge(self, val: dict[str, float] | None, epoch: int) -> bool:
        """Early stopping's verdict on an epoch's validation (updates ``best``/``bad_epochs``):
        whether its weights are the best so far (without a val split, the latest always are)."""
        cfg, state = self.cfg.train.early_stopping, self.state
        if val is None:
            return True
        value = monitored_value(val, cfg.metric)
        better = state.best is None or (
            value > state.best if cfg.mode == "max" else value < state.best
        )
        state.best, state.bad_epochs = (value, 0) if better else (state.best, state.bad_epochs + 1)
        log.info("epoch %d: val %s = %.4f%s", epoch, cfg.metric, value, " (best)" if better else "")
        return better

    def _close_epoch(
        self,
        record: dict[str, float],
        val: dict[str, float] | None,
        better: bool,
        ckpt: dict[str, Any] | None,
    ) -> None:
        """Write a judged epoch: ``best.pt`` if it is the best, its record, ``last.pt``.

        ``ckpt``: the epoch's snapshot when it was validated in the background (its record is
        logged already); its files are then written by the background thread too, beside the
        steps (one thread, a core free), the next write and the end of ``fit`` waiting for them.
        None: the live state, still that epoch's end, written now. Not in the background then:
        beside steps on every core, a writer thread stalls them at each barrier, and at the
        next epoch's start it counts as load, so the steps would get one thread (the large
        config of ``bench_train.py`` ran at half speed).
        """
        self._wait_writes()  # the files of the epoch before are on disk (or raise their error)
        beside = ckpt is not None and self._fitting and not distributed.is_distributed()
        record.update(val or {})
        if ckpt is None:
            self.logger.log(self.state.step, record)
            ckpt = self._checkpoint()
        save = self._save_beside if beside else self._save
        if better:
            save("best.pt", {"model": ckpt["model"], "epoch": int(record["epoch"])})
        self.logger.flush()  # the log holds every record up to last.pt's step
        save("last.pt", ckpt)

    def _background(self) -> ThreadPoolExecutor:
        """The one background thread: validations and checkpoint writes, in order."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="modalign-background")
        return self._pool

    def _save_beside(self, name: str, state: dict[str, Any]) -> None:
        """:meth:`_save` in the background thread, after its work queued before (``state``
        must not change meanwhile); :meth:`_wait_writes` waits for it."""
        self._writes.append(self._background().submit(self._save, name, state))

    def _wait_writes(self) -> None:
        """Wait for the checkpoints written in the background; raise the first error."""
        writes, self._writes = self._writes, []
        for write in writes:
            write.result()

    def evaluate(self) -> dict[str, float]:
        """Score the best weights on ``eval.splits``; writes and returns ``metrics.json``."""
        from modalign.eval.retrieval import evaluate_retrieval

        best = self.run_dir / "best.pt"
        if not self.main:
            return {}
        if best.exists():  # with train.epochs=0 the untrained weights are scored
            self.model.load_state_dict(load_checkpoint(best)["model"])
        save_model(self.run_dir, self.model, self.parts.model_cards(self.cfg))
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
