"""How well ``speech_text`` hears and embeds speech: word accuracy and spoken-to-written retrieval.

Synthesised set: espeak-ng says ``PHRASES`` (short picture captions) in each of ``--voices``;
PocketSphinx transcribes them. Per voice: word recall (reference words found in the transcript),
word error rate (Levenshtein over words), and Recall@1 of each spoken phrase against the written
phrases (speech_text embedding vs all-MiniLM-L6-v2 embedding of the texts; chance is 1/N), with
no training. Optionally, a manifest's audio column against its text column (e.g. Tux Paint's
spoken descriptions against their captions: ``--manifest tux.csv --audio description
--text caption``).

Prints JSON lines: one per voice, then one for the manifest if given.

Usage:
    python benchmarks/bench_speech.py
    python benchmarks/bench_speech.py --voices en-us+f2 --manifest runs/demo/tuxpaint.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import torch

PHRASES = [
    "a frog", "a red apple", "a big yellow school bus", "the dog is running in the park",
    "one two three four five", "thank you very much", "the sun is hot", "a cat on a mat",
    "a green tree", "a blue car", "an orange fish", "a birthday cake with candles",
    "a black and white cow", "a fire truck", "a house with a red roof", "a small white rabbit",
    "the moon and the stars", "a yellow banana", "a bird in the sky", "a pair of shoes",
]  # fmt: skip
VOICES = ["en-us+f2", "en-us+f5", "en-us+f3", "en-us"]


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance between two word sequences (substitutions, insertions, deletions)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def recall_at_1(queries: torch.Tensor, gallery: torch.Tensor) -> float:
    """Share of rows i whose most similar gallery row is i: (N, D) x (N, D) unit rows."""
    best = (queries @ gallery.T).argmax(dim=1)  # (N,)
    return float((best == torch.arange(len(queries))).float().mean())


def embed_texts(encoder: torch.nn.Module, texts: list[str]) -> torch.Tensor:
    with torch.inference_mode():
        return encoder(encoder.collate(texts))  # (N, D)


def embed_audio(encoder: torch.nn.Module, paths: list[str]) -> tuple[torch.Tensor, list[str]]:
    """speech_text embeddings (N, D) and transcripts, 8 clips a batch."""
    out, heard = [], []
    with torch.inference_mode():
        for k in range(0, len(paths), 8):
            batch = encoder.collate([encoder.load(p) for p in paths[k : k + 8]])
            heard += encoder.transcripts(batch)
            out.append(encoder.text(encoder.text.collate(heard[k:])))
    return torch.cat(out), heard


def bench_voice(encoder: torch.nn.Module, voice: str, speed: int, folder: Path) -> dict:
    paths = []
    for i, phrase in enumerate(PHRASES):
        path = folder / f"{voice}-{speed}-{i}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), phrase],
                       check=True)  # fmt: skip
        paths.append(str(path))
    start = time.perf_counter()
    spoken, heard = embed_audio(encoder, paths)
    seconds = time.perf_counter() - start
    refs = [tokens(p) for p in PHRASES]
    hyps = [tokens(h) for h in heard]
    found = sum(sum(w in set(h) for w in r) for r, h in zip(refs, hyps, strict=True))
    errors = sum(word_errors(r, h) for r, h in zip(refs, hyps, strict=True))
    n_words = sum(len(r) for r in refs)
    written = embed_texts(encoder.text, PHRASES)
    return {"voice": voice, "speed_wpm": speed, "n": len(PHRASES),
            "word_recall": round(found / n_words, 3), "wer": round(errors / n_words, 3),
            "spoken_to_written_recall@1": round(recall_at_1(spoken, written), 3),
            "chance": round(1 / len(PHRASES), 3), "seconds_per_clip": round(seconds / len(paths), 2),
            "examples": list(zip(PHRASES[:4], heard[:4], strict=True))}  # fmt: skip


def bench_manifest(encoder: torch.nn.Module, path: Path, audio: str, text: str) -> dict:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get(audio) and r.get(text)]
    paths = [str((path.parent / r[audio]).resolve()) for r in rows]
    spoken, heard = embed_audio(encoder, paths)
    written = embed_texts(encoder.text, [r[text] for r in rows])
    return {"manifest": str(path), "n": len(rows),
            f"{audio}_to_{text}_recall@1": round(recall_at_1(spoken, written), 3),
            f"{text}_to_{audio}_recall@1": round(recall_at_1(written, spoken), 3),
            "chance": round(1 / len(rows), 3), "empty_transcripts": sum(h == "" for h in heard)}  # fmt: skip


def main() -> None:
    from modalign.encoders import build_encoder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", nargs="+", default=VOICES)
    parser.add_argument("--speed", type=int, default=150, help="words per minute")
    parser.add_argument("--manifest", type=Path, help="a CSV with an audio and a text column")
    parser.add_argument("--audio", default="description")
    parser.add_argument("--text", default="caption")
    parser.add_argument("--passes", type=int, default=2, help="PocketSphinx decodings per clip")
    args = parser.parse_args()
    options = {"transcriber_options": {"passes": args.passes}}
    encoder = build_encoder("speech_text", "speech", None, options)
    with tempfile.TemporaryDirectory() as tmp:
        for voice in args.voices:
            result = bench_voice(encoder, voice, args.speed, Path(tmp))
            print(json.dumps({**result, "passes": args.passes, "load_avg": os.getloadavg()}),
                  flush=True)  # fmt: skip
    if args.manifest is not None:
        result = bench_manifest(encoder, args.manifest, args.audio, args.text)
        print(json.dumps({**result, "passes": args.passes, "load_avg": os.getloadavg()}))


if __name__ == "__main__":
    main()
