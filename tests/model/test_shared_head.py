"""``model.heads.<m>.share``: two modalities in one feature space train one head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tests.conftest import synthetic_config

import modalign
from modalign import fit
from modalign.config import Config, with_overrides
from modalign.errors import ConfigError
from modalign.features.store import write_features
from modalign.model.inference import load_run
from modalign.model.init import HEAD_INITS
from modalign.pipeline import build_parts


def with_speech(folder: Path, overrides: list[str], speech: bool = True) -> Config:
    """Synthetic image/text data plus ``speech``: the text features of 30% of the rows, noisier."""
    cfg = synthetic_config(folder, overrides, n=500)
    if not speech:
        return cfg
    frame = pd.read_csv(folder / "pairs.csv")
    text = np.load(folder / "text.npy")
    rng = np.random.default_rng(3)
    keys = [f"speech-{i}" for i in range(len(frame))]
    write_features(folder / "speech.npy", keys, text + 0.3 * rng.standard_normal(text.shape))
    frame["speech"] = [k if rng.random() < 0.3 else "" for k in keys]
    frame.to_csv(folder / "pairs.csv", index=False)
    extra = [f"data.features.speech={folder / 'speech.npy'}", "model.heads.speech.share=text"]
    return with_overrides(cfg, extra)


def test_the_head_is_one_module(tmp_path: Path) -> None:
    plain = build_parts(with_speech(tmp_path / "a", [], speech=False)).model
    shared = build_parts(with_speech(tmp_path / "b", [])).model
    assert shared.heads["speech"] is shared.heads["text"]
    assert shared.head_owner("speech") == "text" and shared.head_owner("text") == "text"
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(shared) == count(plain)  # nothing added: the sharer trains the text head


def test_the_cca_start_fits_owners_only(tmp_path: Path) -> None:
    linear = ["model.head.kind=linear", "model.head.bias=true", "model.head.init=cca"]
    heads = {}
    for name, speech in (("plain", False), ("shared", True)):
        cfg = with_speech(tmp_path / name, linear, speech)
        parts = build_parts(cfg)
        HEAD_INITS.get("cca").fit(parts.model, parts.data, ("image", "text"), cfg.model.head)
        heads[name] = parts.model.heads["text"].state_dict()
    for key, value in heads["plain"].items():
        torch.testing.assert_close(heads["shared"][key], value)


def test_trained_and_loaded_runs_embed_both_modalities_with_one_head(tmp_path: Path) -> None:
    cfg = with_speech(tmp_path / "data", ["train.epochs=2"])
    fit(cfg, tmp_path / "run")
    model = modalign.load(tmp_path / "run")
    x = np.random.default_rng(0).standard_normal((7, 32)).astype(np.float32)
    np.testing.assert_array_equal(model.encode("speech", x), model.encode("text", x))
    _, aligner, _ = load_run(tmp_path / "run")  # the evaluation's loader, from safetensors
    assert aligner.heads["speech"] is aligner.heads["text"]
    aligner.eval()
    with torch.no_grad():
        got = aligner.encode("text", torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, model.encode("text", x), atol=1e-6)


@pytest.mark.parametrize(
    ("share", "message"),
    [
        ("nothing", "not a modality"),
        ("image", "one feature space"),
        ("text,model.heads.speech.kind=linear", r"\['kind'\] do not apply"),
    ],
)
def test_a_bad_share_is_one_line(tmp_path: Path, share: str, message: str) -> None:
    cfg = with_speech(tmp_path / "data", [])
    owner, *more = share.split(",")
    bad = with_overrides(cfg, [f"model.heads.speech.share={owner}", *more])
    with pytest.raises(ConfigError, match=message):
        build_parts(bad)
