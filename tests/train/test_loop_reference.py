"""The Trainer's weights after N steps equal a hand-written PyTorch loop's, bit for bit.

Whatever the Trainer adds around the steps (validation, logging, checkpoints, progress bars,
listing parameters once) must not change what the steps compute. The reference loop builds the
same model from the same seed, then draws the same batches through a ``DataLoader`` iterator
behind a ``tqdm.auto`` bar, as the Trainer does, and takes the plain steps. (Each DataLoader
iterator draws one number from the global generator, which the dropout masks after it depend
on: one per epoch. Given the loader itself, ``tqdm.auto``'s bar would make a second iterator up
front that it never uses.)
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tqdm.auto import tqdm

from modalign.config import Config
from modalign.data.paired import EpochBatches
from modalign.losses.engine import pair_loss
from modalign.model.init import HEAD_INITS
from modalign.pipeline import build_parts
from modalign.threads import step_threads
from modalign.train.checkpoint import seed_everything
from modalign.train.loop import Trainer

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import synthetic_config


class _Rows(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, feats: dict[str, torch.Tensor]) -> None:
        self.feats = feats

    def __len__(self) -> int:
        return len(next(iter(self.feats.values())))

    def __getitem__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(rows)
        return {m: f[idx] for m, f in self.feats.items()}


def reference_weights(cfg: Config) -> dict[str, torch.Tensor]:
    """Weights after ``cfg.train.epochs`` epochs of a plain loop (AdamW, warm-up + cosine, clip)."""
    tc = cfg.train
    seed_everything(tc.seed)
    parts = build_parts(cfg)
    model = parts.model
    init = HEAD_INITS.get(cfg.model.head.init)
    if init.fit is not None:
        init.fit(model, parts.data, ("image", "text"), cfg.model.head)
    feats = {m: torch.from_numpy(np.load(p)) for m, p in cfg.data.features.items()}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": tc.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=tc.lr, fused=True)
    batches = EpochBatches(parts.data.rows("train"), tc.batch_size, tc.seed)
    total = len(batches) * tc.epochs

    def lr_factor(s: int) -> float:
        if s < tc.warmup_steps:
            return (s + 1) / tc.warmup_steps
        t = min(1.0, (s - tc.warmup_steps) / max(1, total - tc.warmup_steps))
        return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    loader = torch.utils.data.DataLoader(_Rows(feats), sampler=batches, batch_size=None)
    for epoch in range(tc.epochs):
        model.train()
        batches.set_epoch(epoch)
        for x in tqdm(iter(loader), disable=True):
            emb = model(x)
            pair_loss("infonce", emb["image"], emb["text"], model.scale()).backward()
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip or math.inf)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            model.clamp_scale()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _LastEpochWeights(Trainer):
    """Keeps the weights at the end of the last epoch (``fit`` then loads the best ones)."""

    def _end_epoch(self) -> None:
        super()._end_epoch()
        self.final = {k: v.detach().clone() for k, v in self.model.state_dict().items()}


@pytest.mark.parametrize("init", ["random", "auto"])
def test_trainer_weights_equal_a_plain_loop_bit_for_bit(tmp_path: Path, init: str) -> None:
    cfg = synthetic_config(
        tmp_path / "data",
        [
            f"model.head.init={init}",
            "model.head.dropout=0.2",  # the masks come from the global generator: order matters
            "train.epochs=2",
            "train.batch_size=64",
            "train.grad_clip=0.5",
            "train.log_every=3",
            "train.early_stopping.patience=100",
            "train.num_threads=1",  # reductions sum in another order with other thread counts
        ],
        n=700,
    )
    trainer = _LastEpochWeights(cfg, tmp_path / "run")
    trainer.fit()
    assert trainer.state.step == 2 * (len(trainer.parts.data.rows("train")) // 64)
    with step_threads(1):
        expected = reference_weights(cfg)
    assert trainer.final.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(trainer.final[name], value), name
