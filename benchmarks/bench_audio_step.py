"""CPU time of one ``audio_conv`` training step (forward + backward, 128 clips), and where it goes.

Measures per-thread CPU time (``time.thread_time``), which a shared machine's other processes
inflate far less than wall time, with one intra-op thread. Prints JSON lines:

* ``{"step": NAME, "cpu_ms", "wall_ms", "frames"}`` for the reference blocks and the fast
  (frames-last) blocks over a padded batch of 1-3 s clips (101-301 frames, as
  ``bench_audio.py`` generates), over a length-bucketed batch (every clip about the median
  length: what a sampler that batches clips of similar length would give), and for narrower
  networks (``--channels``); steps run alternated, median of ``--repeats``;
* ``{"part": NAME, "cpu_ms"}``: each block's operations timed alone over the whole padded batch
  (the fast blocks split it into groups of similar lengths: the step rows show what that saves) and
  summed over the four blocks (convolution in both layouts, batch norm over (B, C, T), over
  (B * T, C) rows with torch's kernel and with ``batch_norm_rows``, GELU, pooling with its
  masks in both forms).

* ``{"accuracy": "reference" or "fast", "out_err", "grad_rel_err"}``: one float32 step of
  each against the reference in float64;
* with ``--thread-counts 1 2``, ``{"step", "threads", "wall_ms"}``: the fast step's wall time
  with each intra-op thread count, alternated.

Usage:
    python benchmarks/bench_audio_step.py
    python benchmarks/bench_audio_step.py --thread-counts 1 2 --channels   # threads, idle machine
    python benchmarks/bench_audio_step.py --repeats 12 --channels 32,64,64,128 64,128,256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from modalign.encoders.audio import AudioFileEncoder, ConvAudioEncoder, _PairMax, batch_norm_rows

BATCH, N_MELS = 128, 64


def clip_batches(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """A padded batch of 1-3 s clips and a bucketed one (each clip about the median length)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = sorted(int(n) for n in torch.randint(101, 302, (BATCH,), generator=gen))
    middle = lengths[BATCH // 2 - 4 : BATCH // 2 + 4] * (BATCH // 8)  # 8 lengths near the median
    enc = ConvAudioEncoder("sound", n_mels=N_MELS, channels=(4,), output_dim=2)
    return {  # log-mels as the forward standardises them (``collate`` would standardise them)
        name: AudioFileEncoder.collate(enc, [torch.randn(N_MELS, n, generator=gen) for n in ns])
        for name, ns in (("padded", lengths), ("bucketed", middle))
    }


def cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median thread CPU time of ``fn`` in ms (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    return 1000 * statistics.median(times)


def time_steps(args: argparse.Namespace) -> None:
    """Whole training steps of each configuration, alternated."""
    batches = clip_batches()
    configs: dict[str, tuple[ConvAudioEncoder, dict[str, torch.Tensor]]] = {}
    for widths in [None, *args.channels]:
        channels = tuple(int(c) for c in widths.split(",")) if widths else (64, 128, 128, 256)
        for fast in (False, True) if widths is None else (True,):
            for kind in ("padded", "bucketed"):
                torch.manual_seed(0)
                enc = ConvAudioEncoder("sound", n_mels=N_MELS, channels=channels, fast=fast)
                name = f"{'fast' if fast else 'reference'} {widths or 'default'} {kind}"
                configs[name] = (enc, batches[kind])
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    wall: dict[str, list[float]] = {name: [] for name in configs}
    for repeat in range(args.repeats + 1):
        for name, (enc, batch) in configs.items():
            start, start_wall = time.thread_time(), time.perf_counter()
            enc(batch).square().sum().backward()
            enc.zero_grad()
            if repeat:  # the first round warms up
                cpu[name].append(time.thread_time() - start)
                wall[name].append(time.perf_counter() - start_wall)
    for name, (_, batch) in configs.items():
        row = {"step": name, "cpu_ms": round(1000 * statistics.median(cpu[name]), 1)}
        row |= {"wall_ms": round(1000 * statistics.median(wall[name]), 1)}
        print(json.dumps(row | {"frames": int(batch["logmel"].shape[-1])}), flush=True)


def time_parts(repeats: int) -> None:
    """Each operation of the four default blocks alone, forward + backward, summed over blocks."""
    batch = clip_batches()["padded"]
    torch.manual_seed(0)
    enc = ConvAudioEncoder("sound", n_mels=N_MELS)
    valid, x = batch["frames"].clone(), batch["logmel"]
    parts: dict[str, float] = {}
    for i, (conv, norm, act) in enumerate(enc.blocks):
        for name, ms in block_parts(conv, norm, act, x, valid, i > 0, repeats).items():
            parts[name] = parts.get(name, 0.0) + ms
        with torch.no_grad():
            x = F.max_pool1d(act(norm(conv(x))), 2, ceil_mode=True)
        valid = (valid + 1) // 2
    for name, ms in parts.items():
        print(json.dumps({"part": name, "cpu_ms": round(ms, 1)}), flush=True)


def block_parts(
    conv: torch.nn.Conv1d,
    norm: torch.nn.Module,
    act: torch.nn.Module,
    x: torch.Tensor,
    valid: torch.Tensor,
    input_grad: bool,
    repeats: int,
) -> dict[str, float]:
    """CPU ms of each operation of one block, forward + backward with a random gradient."""
    xr = x.detach().requires_grad_(input_grad)  # (B, C, T)
    y = conv(xr).detach()
    grad = torch.randn_like(y)
    xl = xr.detach().transpose(1, 2).contiguous().transpose(1, 2).unsqueeze(2)  # frames last
    xl.requires_grad_(input_grad)
    grad_l = grad.transpose(1, 2).contiguous().transpose(1, 2).unsqueeze(2)
    weight = conv.weight.unsqueeze(2)
    rows = y.transpose(1, 2).reshape(-1, y.shape[1]).requires_grad_()  # (B * T, C)
    grad_rows = grad.transpose(1, 2).reshape(-1, y.shape[1])
    yd = y.requires_grad_()
    z = act(norm(y)).detach().requires_grad_()
    mask = (torch.arange(y.shape[-1])[None] < valid[:, None]).float()[:, None]  # (B, 1, T)
    grad_p = torch.randn(y.shape[0], y.shape[1], (y.shape[-1] + 1) // 2)
    zl = z.detach().transpose(1, 2).contiguous().requires_grad_()  # (B, T, C)
    grad_pl = grad_p.transpose(1, 2).contiguous()

    def pool_reference() -> None:
        p = F.max_pool1d(z.masked_fill(mask == 0, float("-inf")), 2, ceil_mode=True)
        p.masked_fill(F.max_pool1d(mask, 2, ceil_mode=True) == 0, 0.0).backward(grad_p)

    def pool_fast() -> None:  # as conv_blocks_channels_last, after GELU (masks included)
        _PairMax.apply(zl, valid).backward(grad_pl)

    return {
        "conv1d (B,C,T) [reference]": cpu_ms(lambda: conv(xr).backward(grad), repeats),
        "conv2d frames-last [fast]": cpu_ms(
            lambda: F.conv2d(xl, weight, conv.bias, padding=(0, 1)).backward(grad_l), repeats
        ),
        "batch norm (B,C,T) [reference]": cpu_ms(lambda: norm(yd).backward(grad), repeats),
        "batch norm rows, torch kernel [not used]": cpu_ms(
            lambda: norm(rows).backward(grad_rows), repeats
        ),
        "batch norm rows [fast]": cpu_ms(
            lambda: batch_norm_rows(norm, rows).backward(grad_rows), repeats
        ),
        "GELU [both]": cpu_ms(lambda: act(z).backward(grad), repeats),
        "pool + masks [reference]": cpu_ms(pool_reference, repeats),
        "pair max with its masks [fast]": cpu_ms(pool_fast, repeats),
    }


def time_threads(counts: list[int], repeats: int) -> None:
    """Wall time of the fast step over the padded batch with each intra-op thread count, alternated."""
    batch = clip_batches()["padded"]
    torch.manual_seed(0)
    enc = ConvAudioEncoder("sound", n_mels=N_MELS)
    wall: dict[int, list[float]] = {n: [] for n in counts}
    for repeat in range(repeats + 1):
        for n in counts:
            torch.set_num_threads(n)
            start = time.perf_counter()
            enc(batch).square().sum().backward()
            enc.zero_grad()
            if repeat:  # the first round warms up
                wall[n].append(time.perf_counter() - start)
    for n, values in wall.items():
        row = {"step": "fast default padded", "threads": n}
        print(json.dumps(row | {"wall_ms": round(1000 * statistics.median(values), 1)}))
    torch.set_num_threads(1)


def accuracy() -> None:
    """Outputs and parameter gradients of a float32 step, reference and fast blocks, against
    the reference blocks in float64 (largest absolute output error, largest relative gradient
    error over the parameters, the conv biases before batch norm left out: their gradient is 0
    up to rounding)."""
    batch = clip_batches()["padded"]
    torch.manual_seed(0)
    exact = ConvAudioEncoder("sound", n_mels=N_MELS, dropout=0.0, fast=False).double()
    wide = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    expected = exact(wide)
    expected.square().sum().backward()
    for fast in (False, True):
        enc = ConvAudioEncoder("sound", n_mels=N_MELS, dropout=0.0, fast=fast)
        enc.load_state_dict(exact.state_dict())
        out = enc(batch)
        out.square().sum().backward()
        errors = [
            float((p.grad.double() - q.grad).abs().max() / q.grad.abs().max())
            for (name, p), q in zip(enc.named_parameters(), exact.parameters(), strict=True)
            if p.grad is not None and q.grad is not None and not name.endswith(".0.bias")
        ]
        row = {"accuracy": "fast" if fast else "reference", "vs": "reference in float64"}
        row |= {"out_err": float((out.detach().double() - expected).abs().max())}
        print(json.dumps(row | {"grad_rel_err": max(errors)}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--channels", nargs="*", default=["32,64,64,128"], help="narrower networks")
    p.add_argument(
        "--thread-counts",
        type=int,
        nargs="*",
        default=[],
        help="also time the fast step's wall time with these intra-op thread counts, alternated "
        "(e.g. 1 2: on an idle machine; a busy core stalls every multi-threaded operation)",
    )
    args = p.parse_args()
    if args.thread_counts:
        time_threads(args.thread_counts, args.repeats)
    torch.set_num_threads(1)
    accuracy()
    time_steps(args)
    time_parts(args.repeats)
    print(json.dumps({"threads": 1, "load_avg": [round(v, 2) for v in os.getloadavg()]}))


if __name__ == "__main__":
    main()
