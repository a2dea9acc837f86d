"""Contrastive loss forward + backward: modalign's tiled kernels against open_clip's losses.

Each configuration runs once in a fresh process and prints one JSON line::

    {"impl", "loss", "batch", "dim", "seconds", "peak_rss_mib", "extra_peak_mib",
     "gflops_per_s", "matmul_gflops_per_s", "bound_ratio"[, "max_rel_err"]}

* ``seconds``: one forward + backward of the loss on ready (B, D) inputs (fp32).
* ``extra_peak_mib``: peak resident memory during that call minus the resident memory just
  before it (the peak is reset with ``/proc/self/clear_refs``, so building the inputs does not
  count, nor does a warm-up call on 64 rows, made for both implementations, that pages in code).
* ``gflops_per_s``: ``6 B^2 D`` (the least work a symmetric contrastive loss needs forward and
  backward: one logits matmul, two gradient matmuls) divided by ``seconds``.
* ``matmul_gflops_per_s``: this process's fp32 matmul rate, measured right after the loss on
  (2048, D) x (D, 2048); ``bound_ratio = seconds / (6 B^2 D / matmul rate)``.
* ``--check`` then runs open_clip's loss on the same inputs (after all figures above are taken)
  and reports ``max_rel_err``: the largest of ``max|a - b| / max|b|`` over the loss and the
  gradients of both embeddings, the scale and (SigLIP) the bias.

open_clip is loaded from its ``open_clip/loss.py`` file alone: ``import open_clip`` imports
torchvision, which has no build for this torch, and the loss module needs only torch. Install it
with ``pip install --no-deps open_clip_torch`` (the ``bench`` extra). Its losses take
``logit_scale`` already exponentiated (the model calls ``logit_scale.exp()`` first), like
modalign's ``scale``, and SigLipLoss normalises by the batch size, as modalign does.

Usage:
    python benchmarks/bench_loss.py --impl modalign --loss infonce --batch 16384 --dim 512 --check
    python benchmarks/bench_loss.py --sweep            # B in 4096, 16384, 32768, both impls
    python benchmarks/bench_loss.py --sweep --batches 4096 16384 --losses siglip
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

SCALE = {"infonce": 1 / 0.07, "siglip": 10.0}  # CLIP's and SigLIP's initial values
BIAS = -10.0


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))  # type: ignore[union-attr]


def reset_peak() -> int:
    """Reset VmHWM to the current resident set; returns that resident set in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def load_open_clip_loss() -> ModuleType:
    """``open_clip/loss.py`` as a module, without ``open_clip/__init__`` (which needs torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise SystemExit("open_clip is missing: pip install --no-deps open_clip_torch")
    path = Path(spec.origin).parent / "loss.py"
    loss_spec = importlib.util.spec_from_file_location("open_clip_loss", path)
    assert loss_spec is not None and loss_spec.loader is not None
    module = importlib.util.module_from_spec(loss_spec)
    loss_spec.loader.exec_module(module)
    return module


def make_inputs(loss: str, batch: int, dim: int) -> list[Tensor]:
    """Leaf tensors: x, y (normalised, paired rows correlated), scale, bias."""
    g = torch.Generator().manual_seed(0)
    y = F.normalize(torch.randn(batch, dim, generator=g), dim=1)
    x = F.normalize(y + 0.8 * torch.randn(batch, dim, generator=g), dim=1)
    return [
        x.requires_grad_(),
        y.requires_grad_(),
        torch.tensor(SCALE[loss], requires_grad=True),
        torch.tensor(BIAS, requires_grad=True),
    ]


def loss_fn(impl: str, loss: str, tile: int | None) -> Any:
    if impl == "modalign":
        from modalign.losses.tiled import tiled_info_nce_loss, tiled_siglip_loss

        fn = tiled_info_nce_loss if loss == "infonce" else tiled_siglip_loss
        return lambda x, y, s, b: fn(x, y, s, b, tile_size=tile)
    oc = load_open_clip_loss()
    if loss == "infonce":
        clip = oc.ClipLoss()
        return lambda x, y, s, b: clip(x, y, s)
    sig = oc.SigLipLoss()
    return lambda x, y, s, b: sig(x, y, s, b)


def forward_backward(fn: Any, inputs: list[Tensor]) -> list[Tensor]:
    """Loss and gradients of all inputs (None gradients, e.g. ClipLoss's bias, become zeros)."""
    for t in inputs:
        t.grad = None
    loss = fn(*inputs)
    loss.backward()
    grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in inputs]
    return [loss.detach(), *grads]


def matmul_rate(dim: int, reps: int = 5) -> float:
    """Median fp32 matmul GFLOP/s on (2048, dim) x (dim, 2048)."""
    a, b, out = torch.randn(2048, dim), torch.randn(2048, dim), torch.empty(2048, 2048)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b.T, out=out)
        times.append(time.perf_counter() - t)
    return 2 * 2048 * 2048 * dim / statistics.median(times) / 1e9


def max_rel_err(got: list[Tensor], ref: list[Tensor]) -> float:
    errs = [
        ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()
        for a, b in zip(got, ref, strict=True)
    ]
    return max(errs)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration, measured in this (fresh) process."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    inputs = make_inputs(args.loss, args.batch, args.dim)
    fn = loss_fn(args.impl, args.loss, args.tile)
    if args.loss == "infonce" and args.impl == "open_clip":
        inputs[3].requires_grad_(False)  # ClipLoss takes no bias; modalign ignores it
    # Warm up on a tiny batch so that loading code pages and thread pools is not counted.
    forward_backward(fn, make_inputs(args.loss, 64, args.dim))
    before = reset_peak()
    start = time.perf_counter()
    got = forward_backward(fn, inputs)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    rate = matmul_rate(args.dim)
    flops = 6 * args.batch**2 * args.dim
    out: dict[str, Any] = {
        "impl": args.impl, "loss": args.loss, "batch": args.batch, "dim": args.dim,
        "seconds": round(seconds, 3), "peak_rss_mib": round(peak / 1024, 1),
        "extra_peak_mib": round((peak - before) / 1024, 1),
        "gflops_per_s": round(flops / seconds / 1e9, 2),
        "matmul_gflops_per_s": round(rate, 2),
        "bound_ratio": round(seconds / (flops / rate / 1e9), 3),
    }  # fmt: skip
    if args.check:
        ref = forward_backward(loss_fn("open_clip", args.loss, None), inputs)
        if args.loss == "infonce":
            got, ref = got[:4], ref[:4]  # no bias in InfoNCE
        out["max_rel_err"] = float(f"{max_rel_err(got, ref):.3g}")
    return out


def run_fresh(impl: str, loss: str, batch: int, dim: int, extra: list[str]) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--impl",
        impl,
        "--loss",
        loss,
        "--batch",
        str(batch),
        "--dim",
        str(dim),
        *extra,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    line = done.stdout.strip().splitlines()[-1]
    print(line, flush=True)
    return dict(json.loads(line))


def sweep(args: argparse.Namespace) -> None:
    """Both implementations alternately per batch size, then the ratios (open_clip / modalign)."""
    extra = ["--tile", str(args.tile)] if args.tile else []
    for loss in args.losses:
        for batch in args.batches:
            runs = {
                impl: run_fresh(impl, loss, batch, args.dim, extra)
                for impl in ("modalign", "open_clip")
            }
            m, o = runs["modalign"], runs["open_clip"]
            ratio = {
                "ratio": loss, "batch": batch,
                "time_open_clip_over_modalign": round(o["seconds"] / m["seconds"], 2),
                "extra_mem_modalign_over_open_clip": round(m["extra_peak_mib"] / max(o["extra_peak_mib"], 1e-9), 4),
            }  # fmt: skip
            print(json.dumps(ratio), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", choices=("modalign", "open_clip"), default="modalign")
    p.add_argument("--loss", choices=("infonce", "siglip"), default="infonce")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--tile", type=int, default=None, help="modalign tile side (default: library's)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--check", action="store_true", help="also compare with open_clip (max_rel_err)")
    p.add_argument("--sweep", action="store_true", help="both impls over --batches, with ratios")
    p.add_argument("--batches", type=int, nargs="+", default=[4096, 16384, 32768])
    p.add_argument("--losses", nargs="+", default=["infonce", "siglip"])
    args = p.parse_args(argv)
    if args.sweep:
        sweep(args)
    else:
        print(json.dumps(child(args)), flush=True)


if __name__ == "__main__":
    main()
