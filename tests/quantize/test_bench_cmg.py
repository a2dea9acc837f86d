"""The CMG benchmark's data plumbing, without speech synthesisers (benchmarks/bench_cmg.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from modalign.quantize.data import SequenceFile

_PATH = Path(__file__).parents[2] / "benchmarks" / "bench_cmg.py"
_spec = importlib.util.spec_from_file_location("bench_cmg", _PATH)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def fake_data() -> dict[str, SequenceFile]:
    audio = [f"voice{v}|{d}" for v in range(20) for d in range(10)]
    visual = [f"w{w}|{i}|{i % 10}" for w in range(13) for i in range(w * 30, w * 30 + 30)]
    text = [f"t{k}|{d}" for d in range(10) for k in range(3)]
    return {
        m: SequenceFile(Path(f"{m}.npz"), ids, np.zeros((len(ids), 8, 2), np.float32))
        for m, ids in (("audio", audio), ("visual", visual), ("text", text))
    }


def test_speakers_and_writers_never_cross_from_pretraining_to_downstream(tmp_path: Path) -> None:
    pre, down = bench.write_manifests(fake_data(), seed=3, folder=tmp_path)
    p, d = pd.read_csv(pre, dtype=str), pd.read_csv(down, dtype=str, keep_default_na=False)
    for m in ("audio", "visual"):
        owners_pre = {bench.owner_label(k)[0] for k in p[m]}
        cells = [k for k in d[m] if k]
        owners_down = {bench.owner_label(k)[0] for k in cells}
        assert owners_pre and owners_down and not owners_pre & owners_down
        # downstream train and test owners are disjoint as well (the labelled upper bound)
        split = {bench.owner_label(k)[0]: s for k, s in zip(d[m], d["split"], strict=True) if k}
        assert {"train", "test"} == set(split.values())
        assert all(
            split[bench.owner_label(k)[0]] == s for k, s in zip(d[m], d["split"], strict=True) if k
        )
    for _, row in p.iterrows():  # class-level pairs: every modality shows the same digit
        assert len({bench.owner_label(row[m])[1] for m in ("audio", "visual", "text")}) == 1
    for _, row in d.iterrows():
        key = row["audio"] or row["visual"]
        assert bench.owner_label(key)[1] == int(row["label"])


def test_split_owners_shares() -> None:
    keys = [f"o{i}|0" for i in range(10)]
    roles = bench.split_owners(keys, np.random.default_rng(0), (0.6, 0.2))
    assert sorted(roles.values()).count("pretrain") == 6
    assert list(roles.values()).count("down_train") == 2


def test_visual_frames_draw_rows_progressively() -> None:
    image = np.arange(64.0).reshape(1, 8, 8) % 17
    frames = bench.visual_sequences(image).reshape(1, 8, 8, 8)
    assert np.allclose(frames[0, 7], image[0] / 16)
    assert np.allclose(frames[0, 2, :3], image[0, :3] / 16) and not frames[0, 2, 3:].any()


def test_audio_sequence_of_a_tone_has_the_benchmark_shape() -> None:
    t = np.arange(8000) / 16000
    wave = np.concatenate([np.zeros(4000), np.sin(2 * np.pi * 440 * t), np.zeros(4000)])
    seq = bench.audio_sequence(wave.astype(np.float32))
    assert seq.shape == (8, 40) and np.isfinite(seq).all()


def test_paired_differences_hand_table() -> None:
    rows = [
        {
            "method": m,
            "toc": toc,
            "direction": "a_to_b",
            "kind": "cross_modal",
            "seed": s,
            "accuracy": acc,
        }
        for m, toc, s, acc in [
            ("dcid", False, 0, 0.5),
            ("dcid", False, 1, 0.6),
            ("dcid", True, 0, 0.6),
            ("dcid", True, 1, 0.6),
            ("fcid", False, 0, 0.9),
            ("fcid", False, 1, 0.8),
        ]
    ]
    got = {r["difference"]: (r["mean"], r["std"]) for r in bench.paired_differences(rows)}
    assert got["dcid+toc - dcid"] == (0.05, round(float(np.std([0.1, 0.0], ddof=1)), 4))
    assert got["fcid - dcid"] == (0.3, 0.1414)
