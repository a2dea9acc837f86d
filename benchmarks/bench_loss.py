"""Contrastive loss forward + backward: modalign's tiled kernels against open_clip's losses.

Each configuration runs in a fresh process and prints one JSON line::

    {"impl", "loss", "batch", "dim", "seconds", "peak_rss_mib", "extra_peak_mib",
     "gflops_per_s", "matmul_gflops_per_s", "bound_ratio"[, "max_rel_err"]}

* ``seconds``: one forward + backward of the loss on ready (B, D) inputs (fp32).
* ``extra_peak_mib``: peak resident memory during that call minus the resident memory just
  before it (the peak is reset with ``/proc/self/clear_refs``, so building the inputs does not
  count, nor does a warm-up call on 64 rows, made for both implementations, that pages in code).
* ``gflops_per_s``: ``6 B^2 D`` (the least work a symmetric contrastive loss needs forward and
  backward: one logits matmul, two gradient matmuls) divided by ``seconds``.
* ``matmul_gflops_per_s``: the machine's fp32 matmul rate, a 4096^2 GEMM in this process right
  after the loss (smaller products read 20-40% low and would flatter the bound);
  ``bound_ratio = seconds / (6 B^2 D / matmul rate)``.
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
                                                       # alternated, 3 repeats, medians + ratios
    python benchmarks/bench_loss.py --sweep --batches 4096 16384 --losses siglip
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import re
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).parent))
from _common import alternate, gemm_gflops, load, paired_ratio, rounded, run_json, summary

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
    flops = 6 * args.batch**2 * args.dim
    out: dict[str, Any] = {
        "impl": args.impl, "loss": args.loss, "batch": args.batch, "dim": args.dim,
        "seconds": round(seconds, 3), "peak_rss_mib": round(peak / 1024, 1),
        "extra_peak_mib": round((peak - before) / 1024, 1),
        "gflops_per_s": round(flops / seconds / 1e9, 2),
    }  # fmt: skip
    if not args.no_gemm:  # the sweep measures it once per configuration instead
        rate = gemm_gflops(repeats=1)
        out["matmul_gflops_per_s"] = round(rate, 2)
        out["bound_ratio"] = round(seconds / (flops / rate / 1e9), 3)
    if args.check:
        ref = forward_backward(loss_fn("open_clip", args.loss, None), inputs)
        if args.loss == "infonce":
            got, ref = got[:4], ref[:4]  # no bias in InfoNCE
        out["max_rel_err"] = float(f"{max_rel_err(got, ref):.3g}")
    return out


def run_fresh(impl: str, loss: str, batch: int, dim: int, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--impl", impl, "--loss", loss]
    cmd += ["--batch", str(batch), "--dim", str(dim), "--no-gemm", *extra]
    return run_json(cmd)


def sweep(args: argparse.Namespace) -> None:
    """Per configuration: both implementations alternated over ``--repeats`` fresh processes, the
    4096^2 GEMM rate before and after, then one line per implementation (median and spread) and
    one with the ratios (open_clip / modalign; memory is the peak above the resident set before
    the call)."""
    extra = ["--tile", str(args.tile)] if args.tile else []
    impls = ("modalign", "open_clip")
    for loss in args.losses:
        for batch in args.batches:
            gemm = [gemm_gflops()]
            runs = alternate(
                {i: functools.partial(run_fresh, i, loss, batch, args.dim, extra) for i in impls},
                args.repeats,
            )
            gemm.append(gemm_gflops())
            flops = 6 * batch**2 * args.dim
            for impl, rs in runs.items():
                secs = summary([r["seconds"] for r in rs])
                print(json.dumps(rounded({
                    "impl": impl, "loss": loss, "batch": batch, "dim": args.dim,
                    "seconds_median": secs["median"], "seconds_spread": secs["spread"],
                    "extra_peak_mib": statistics.median(r["extra_peak_mib"] for r in rs),
                    "bound_ratio": secs["median"] / (flops / statistics.mean(gemm) / 1e9),
                    "repeats": args.repeats,
                })), flush=True)  # fmt: skip
            m, o = runs["modalign"], runs["open_clip"]
            time_ratio = paired_ratio([r["seconds"] for r in o], [r["seconds"] for r in m])
            mem = [statistics.median(r["extra_peak_mib"] for r in rs) for rs in (m, o)]
            print(json.dumps(rounded({
                "ratio": loss, "batch": batch,
                "time_open_clip_over_modalign": time_ratio["median"],
                "time_ratio_spread": time_ratio["spread"],
                "extra_mem_modalign_over_open_clip": mem[0] / max(mem[1], 1e-9),
                "gemm_gflops": gemm, "load": load(),
            })), flush=True)  # fmt: skip


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
    p.add_argument("--repeats", type=int, default=3, help="alternated repeats per --sweep config")
    p.add_argument("--no-gemm", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.sweep:
        sweep(args)
    else:
        print(json.dumps(child(args)), flush=True)


if __name__ == "__main__":
    main()
