"""One training epoch of ``audio_conv``: decoding every clip (frame cache off) against the frame cache.

Generates ``--clips`` noisy tones of 1-3 s as 44.1 kHz OGG Vorbis files (once, into
``--folder``), pairs each with a 32-d text feature row, and builds ``Trainer`` objects that
differ only in ``data.frame_cache`` (null: decode and resample every file every epoch; a folder:
read cached log-mel frames) and in the encoder's ``fast`` option (False: the plain reference
blocks). Three methods run alternated (A, B, C, A, B, C, ...):

* ``decode_ref``: decoding, reference blocks, batches read between steps: the code before the
  frame cache, the fast blocks and the prefetching thread;
* ``decode``: decoding, fast blocks (the same network as ``cached``), the current loop;
* ``cached``: frame cache, fast blocks, the current loop (the default now).

Each method runs in its own process (spawned once, then asked for one epoch at a time), since
the current encoder tunes glibc's malloc for its whole process (``modalign.memory``) and the code
before did not: ``decode_ref`` runs with ``MODALIGN_MALLOC_TUNING=0`` and
``Trainer(prefetch=False)``. The current loop reads the next batches in a thread beside
one-thread steps (``modalign.data.prefetch``); with two threads on two cores it does not.

``ratio`` is decode_ref / cached (the speed-up over the code before both), ``ratio_same_net``
decode / cached (what the frame cache alone gives for the current network), each the median of
per-repeat ratios. The one-off fill of the frame cache is timed separately. ``--channels``
changes the network's widths (all methods) to see what a cheaper network would reach.

Prints JSON lines: one per epoch (wall and process CPU seconds), then a summary with
``decode_ref_s``, ``decode_s``, ``cached_s``, the ratios, their spread, ``fill_s`` and
``load_avg``; with ``--threads 1`` also the same figures in CPU time (``cpu_...``), which the
load of a shared machine changes far less than wall time (with two threads, a busy core stalls
every operation's barrier and an epoch's wall time can triple).

Usage:
    python benchmarks/bench_audio.py                      # 6,000 clips, 2 epochs each
    python benchmarks/bench_audio.py --clips 300 --repeats 1   # a quick look
    python benchmarks/bench_audio.py --clips 1500 --channels 32,64,64,128
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np


def write_clips(folder: Path, n: int, seed: int = 0) -> Path:
    """n OGG clips (1-3 s, 44.1 kHz) and a manifest with a text feature file; reused when present."""
    import soundfile as sf

    from modalign.features.store import write_features

    manifest = folder / f"audio-{n}.csv"
    if manifest.exists():
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        sr = 44100
        t = np.arange(int(sr * rng.uniform(1.0, 3.0))) / sr
        wave = np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.3 * rng.standard_normal(len(t))
        if not (folder / f"clip{i:05d}.ogg").exists():  # a smaller run reuses a larger one's clips
            sf.write(folder / f"clip{i:05d}.ogg", (0.3 * wave).astype(np.float32), sr)
        rows.append(f"r{i},clip{i:05d}.ogg,t{i}")
    text = rng.standard_normal((n, 32)).astype(np.float32)
    write_features(folder / f"text-{n}.npy", [f"t{i}" for i in range(n)], text)
    manifest.write_text("id,sound,text\n" + "\n".join(rows) + "\n")
    return manifest


def make_trainer(
    manifest: Path,
    frame_cache: str,
    run_dir: Path,
    workers: int,
    fast: bool,
    channels: str | None,
    sampler: str = "unique_groups",
    prefetch: bool | None = None,
) -> object:
    from modalign.config import load_config
    from modalign.train.loop import Trainer

    n = manifest.stem.split("-")[1]
    cfg = load_config(
        None,
        [
            f"data.manifest={manifest}",
            f"data.features.text={manifest.parent / f'text-{n}.npy'}",
            "data.split_fractions={train: 1.0}",
            f"data.frame_cache={frame_cache}",
            "model.encoders.sound.name=audio_conv",
            f"model.encoders.sound.options.fast={str(fast).lower()}",
            *([f"model.encoders.sound.options.channels=[{channels}]"] if channels else []),
            "model.embed_dim=64",
            "train.batch_size=128",
            f"train.num_workers={workers}",
            "train.tensorboard=false",
            f"train.sampler={sampler}",
        ],
    )
    return Trainer(cfg, run_dir, prefetch=prefetch)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def epoch_worker(conn: Connection, spec: dict[str, Any]) -> None:
    """One method in its own process: build its trainer, then run an epoch per request.

    Its own process, because ``modalign.memory.reuse_freed_memory`` (which the current encoder
    calls) changes glibc's malloc for the whole process: ``decode_ref`` runs without it
    (``MODALIGN_MALLOC_TUNING=0``) and reads its batches between steps (``prefetch=False``), as
    the code before did. Sends ``build_s`` once (for ``cached``: filling the frame cache), then
    ``(wall_s, cpu_s)`` per epoch.
    """
    if not spec["current"]:
        os.environ["MODALIGN_MALLOC_TUNING"] = "0"
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    start = time.perf_counter()
    trainer = make_trainer(*spec["args"], prefetch=None if spec["current"] else False)
    conn.send(time.perf_counter() - start)
    while conn.recv():
        start, start_cpu = time.perf_counter(), time.process_time()
        trainer._train_epoch()  # type: ignore[attr-defined]
        conn.send((time.perf_counter() - start, time.process_time() - start_cpu))
    conn.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=6000)
    p.add_argument("--repeats", type=int, default=2, help="epochs per method, alternated")
    p.add_argument(
        "--workers", type=int, default=0, help="train.num_workers (default 0, as in a config)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    p.add_argument("--channels", default=None, help="conv widths, e.g. 32,64,64,128")
    p.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "modalign-bench-audio"))
    p.add_argument(
        "--sampler",
        default="unique_groups",
        help="train.sampler of the cached run only (length_buckets: batches of similar lengths; "
        "other batches, so other results); the decoding runs keep unique_groups",
    )
    args = p.parse_args()
    folder = Path(args.folder)
    manifest = write_clips(folder, args.clips)
    runs = Path(tempfile.mkdtemp(prefix="bench-audio-runs-"))
    frames = runs / "frames"  # a fresh cache: its fill is timed, not assumed
    common = (args.workers,)
    specs = {  # name -> (make_trainer arguments, the current code: malloc tuning, prefetching)
        "decode_ref": (
            (manifest, "null", runs / "decode_ref", *common, False, args.channels),
            False,
        ),
        "decode": ((manifest, "null", runs / "decode", *common, True, args.channels), True),
        "cached": (
            (manifest, str(frames), runs / "cached", *common, True, args.channels, args.sampler),
            True,
        ),
    }
    ctx = mp.get_context("spawn")
    conns, procs = {}, []
    for name, (make_args, current) in specs.items():
        ours, theirs = ctx.Pipe()
        spec = {"args": make_args, "current": current, "threads": args.threads}
        procs.append(ctx.Process(target=epoch_worker, args=(theirs, spec)))
        procs[-1].start()
        conns[name] = ours
        build_s = ours.recv()  # one at a time: the cache is filled alone
        if name == "cached":
            fill_s = build_s
    times: dict[str, list[float]] = {name: [] for name in specs}
    cpu: dict[str, list[float]] = {name: [] for name in specs}
    for repeat in range(args.repeats):
        for name, conn in conns.items():
            conn.send(True)
            wall_s, cpu_s = conn.recv()
            times[name].append(wall_s)
            cpu[name].append(cpu_s)
            row = {"method": name, "repeat": repeat, "epoch_s": round(wall_s, 2)}
            print(json.dumps(row | {"cpu_s": round(cpu_s, 2)}), flush=True)
    for conn in conns.values():
        conn.send(False)
    for proc in procs:
        proc.join()
    out = summary(times, args, fill_s)
    if args.threads == 1:  # one thread: the process's CPU time is the work, whatever the load
        cpu_out = summary(cpu, args, fill_s)
        kept = [f"{name}_s" for name in cpu] + ["ratio", "ratio_same_net"]
        out |= {f"cpu_{k}": v for k, v in cpu_out.items() if k.startswith(tuple(kept))}
    print(json.dumps(out))


def summary(times: dict[str, list[float]], args: argparse.Namespace, fill_s: float) -> dict:
    """Median seconds per method, median per-repeat ratios against ``cached`` and their spread."""
    out: dict[str, object] = {"clips": args.clips}
    for name, values in times.items():
        out[f"{name}_s"] = round(statistics.median(values), 2)
    for key, name in (("ratio", "decode_ref"), ("ratio_same_net", "decode")):
        ratios = [d / c for d, c in zip(times[name], times["cached"], strict=True)]
        out[key] = round(statistics.median(ratios), 2)
        out[f"{key}_spread"] = [round(min(ratios), 2), round(max(ratios), 2)]
    out.update(
        fill_s=round(fill_s, 1),
        workers=args.workers,
        threads=args.threads or _threads(),
        channels=args.channels or "default",
        sampler=args.sampler,
        load_avg=[round(x, 2) for x in os.getloadavg()],
    )
    return out


if __name__ == "__main__":
    main()
