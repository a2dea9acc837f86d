"""Where one cached training epoch of ``audio_conv`` goes: reading and collating frames, the
encoder's forward (blocks and pooling, the rest), backward with the loss, the optimiser.

Builds the trainer of ``bench_audio.py`` (frame cache, fast blocks, one intra-op thread, batches
read between the steps: a training run reads them in a thread beside one-thread steps), runs
one epoch to warm up, then one epoch with the trainer's parts wrapped in timers of the thread's
CPU time (``time.thread_time``: the machine's other processes change it far less than wall
time). ``backward`` is the forward-loss-backward call less the sound encoder's forward (the text
head and the loss are a few percent of it). Prints one JSON line of seconds per part, the
epoch's, the padding fraction of the computed frames and the load average.

Usage:
    python benchmarks/bench_audio_parts.py                      # 6,000 clips
    python benchmarks/bench_audio_parts.py --sampler length_buckets
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from bench_audio import make_trainer, write_clips
from modalign.train.loop import merge_chunks


def timed(acc: Counter[str], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, adding the thread CPU time of each call to ``acc[name]``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[name] += time.thread_time() - start

    return wrapper


class TimedLoader:
    """A loader whose batches' reading and collating time goes to ``acc["loader"]``."""

    def __init__(self, loader: Any, acc: Counter[str]) -> None:
        self.loader, self.acc = loader, acc

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        batches = iter(self.loader)
        while True:
            start = time.thread_time()
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.acc["loader"] += time.thread_time() - start
            sound = merge_chunks(batch).inputs.get("sound")
            if isinstance(sound, dict) and "frames" in sound:
                frames = sound.get("standardised", sound.get("logmel"))
                self.acc["valid_frames"] += int(sound["frames"].sum())
                self.acc["computed_frames"] += sound["frames"].numel() * frames.shape[-1]
            yield batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=6000)
    p.add_argument("--sampler", default="unique_groups")
    p.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "modalign-bench-audio"))
    args = p.parse_args()
    torch.set_num_threads(1)
    import modalign.encoders.audio as audio

    manifest = write_clips(Path(args.folder), args.clips)
    runs = Path(tempfile.mkdtemp(prefix="bench-audio-parts-"))
    frames = str(Path(args.folder) / "frames")  # kept between runs (keyed by file and settings)
    # batches read between the steps (no prefetching thread): every part on this thread
    trainer: Any = make_trainer(
        manifest, frames, runs / "run", 0, True, None, args.sampler, prefetch=False
    )
    trainer._train_epoch()  # warm-up
    acc: Counter[str] = Counter()
    # frames are standardised by the encoder's collate (in the loader) unless augmenting
    audio.standardise_frames_last = timed(
        acc, "forward: standardise", audio.standardise_frames_last
    )
    audio.mean_max_channels_last = timed(acc, "forward: blocks", audio.mean_max_channels_last)
    forward = audio.ConvAudioEncoder.forward
    audio.ConvAudioEncoder.forward = timed(acc, "forward: sound encoder", forward)  # type: ignore[method-assign]
    trainer._forward_backward = timed(acc, "forward, loss, backward", trainer._forward_backward)
    trainer._optimizer_step = timed(acc, "optimizer", trainer._optimizer_step)
    trainer.loader = TimedLoader(trainer.loader, acc)
    start = time.thread_time()
    trainer._train_epoch()
    epoch = time.thread_time() - start
    audio.ConvAudioEncoder.forward = forward  # type: ignore[method-assign]
    acc["backward"] = acc["forward, loss, backward"] - acc["forward: sound encoder"]
    padding = 1 - acc.pop("valid_frames") / max(acc.pop("computed_frames"), 1)
    out: dict[str, Any] = {k: round(v, 2) for k, v in acc.items()}
    out |= {"epoch": round(epoch, 2), "padding": round(padding, 3), "sampler": args.sampler}
    print(json.dumps(out | {"load_avg": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
