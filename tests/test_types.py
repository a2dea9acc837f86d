"""MetricKey: every key an evaluation writes parses back to itself; names that would break it are refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modalign.eval.retrieval import evaluate_retrieval
from modalign.eval.suite import CENTERED, ClassSpec, evaluate_split
from modalign.types import (
    Direction,
    EmbeddingSet,
    MetricKey,
    Pair,
    headline_keys,
    name_problem,
)

HAND_TABLE = [
    ("test/image_to_text/recall@1", MetricKey("test", Direction("image", "text"), "recall@1")),
    ("test/a_vs_b/modality_gap", MetricKey("test", Pair("a", "b"), "modality_gap")),
    ("test/image/uniformity", MetricKey("test", "image", "uniformity")),
    ("train/loss", MetricKey("train", None, "loss")),
    ("train/loss_image_text", MetricKey("train", None, "loss_image_text")),
    (
        "test/image_to_text/recall@1~centered",
        MetricKey("test", Direction("image", "text"), "recall@1", CENTERED),
    ),
    ("val/image_hd_to_todo/mrr", MetricKey("val", Direction("image_hd", "todo"), "mrr")),
]


@pytest.mark.parametrize(("flat", "key"), HAND_TABLE)
def test_flat_forms_against_a_hand_table(flat: str, key: MetricKey) -> None:
    assert key.flatten() == flat == str(key)
    assert MetricKey.parse(flat) == key


@pytest.mark.parametrize(
    "flat",
    [
        "lr",
        "step",
        "a/b/c/d",
        "test//recall@1",
        "test/a_to_b/",
        "test/a_to_b/recall@1~",
        "test/a_to_b/recall@1~x~y",
        "test/a_to_b_to_c/recall@1",
        "test/a_vs_b_vs_c/gap",
        "test/x_to/m",
        " test/a/m",
    ],
)
def test_strings_that_are_not_keys_are_refused(flat: str) -> None:
    with pytest.raises(ValueError):
        MetricKey.parse(flat)
    assert MetricKey.try_parse(flat) is None


def test_keys_cannot_be_built_with_separators_in_their_parts() -> None:
    with pytest.raises(ValueError, match="speech_to_text"):
        Direction("speech_to_text", "image")
    with pytest.raises(ValueError, match="split"):
        MetricKey("test/x", "image", "uniformity")
    with pytest.raises(ValueError, match="variant"):
        MetricKey("test", "image", "uniformity", variant="a~b")


def test_every_key_an_evaluation_writes_round_trips() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6)).astype(np.float32)
    mods = {"image_hd": x, "text": x + rng.normal(size=x.shape).astype(np.float32), "to_x_y": x}
    mods = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in mods.items()}
    del mods["to_x_y"]  # refused below: not a name a key can carry
    assert name_problem("to_x_y") is not None
    labels = np.arange(30) % 3
    emb = EmbeddingSet(mods, [str(i) for i in range(30)], labels=labels)
    protos = np.stack([mods["text"][labels == c].mean(0) for c in range(3)])
    ev = evaluate_split(emb, "test", classes=ClassSpec(["a", "b", "c"], protos), n_boot=20)
    keys = [*ev.metrics, *ev.intervals]
    kinds = {type(k.subject) for k in keys} | {k.variant for k in keys}
    assert kinds == {Direction, Pair, str, None, CENTERED}  # every kind of key is covered
    for key in keys:
        assert MetricKey.parse(key.flatten()) == key
    for flat in evaluate_retrieval(emb, "val"):
        assert MetricKey.parse(flat).flatten() == flat


NAME = st.text(alphabet="atosv_ /~x", min_size=0, max_size=8)


@settings(max_examples=300, deadline=None)
@given(NAME, NAME, st.sampled_from(["recall@1", "loss", "a_to_b"]), st.none() | NAME)
def test_direction_and_pair_keys_round_trip(
    q: str, g: str, metric: str, variant: str | None
) -> None:
    for make in (Direction, Pair, lambda a, b: a, lambda a, b: None):
        try:
            key = MetricKey("val", make(q, g), metric, variant)
        except ValueError:
            continue  # a name with a separator: refused when built, never written
        assert MetricKey.parse(key.flatten()) == key


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab_tovs/~", max_size=16))
def test_a_string_that_parses_is_what_its_key_flattens_to(flat: str) -> None:
    key = MetricKey.try_parse(flat)
    if key is not None:
        assert key.flatten() == flat


def test_name_problem_accepts_names_and_refuses_separators() -> None:
    for ok in ("image", "image_hd", "spoken text", "tox", "photo", "video_clip", "t_o"):
        assert name_problem(ok) is None, ok
    for bad in ("", " ", " image", "a/b", "a~b", "speech_to_text", "a_vs_b", "x_to", "to_x", "vs"):
        assert name_problem(bad) is not None, bad


def test_headline_keys_against_a_hand_table() -> None:
    keys = [
        "test/image_to_text/recall@1",
        "test/image_to_text/recall@10",
        "test/image_to_text/recall@1~centered",
        "test/image_vs_text/recall@1",  # not a direction
        "test/image/recall@1",
        "val/text_to_image/recall@1",
        "test/text_to_image/recall@1",
        "test/text_to_image/mrr",
        "lr",
        "step",
        "all_centered/a_to_b/recall@1",  # the old centred form: a split of its own, kept as such
    ]
    assert headline_keys(keys) == ["test/image_to_text/recall@1", "test/text_to_image/recall@1"]
    assert headline_keys(keys, split="val") == ["val/text_to_image/recall@1"]
    assert headline_keys(keys, split=None) == [
        "test/image_to_text/recall@1",
        "val/text_to_image/recall@1",
        "test/text_to_image/recall@1",
        "all_centered/a_to_b/recall@1",
    ]
    assert headline_keys(keys, metric="mrr") == ["test/text_to_image/mrr"]
    as_keys = [MetricKey.parse(k) for k in keys if k not in ("lr", "step")]
    assert headline_keys(as_keys) == [MetricKey.parse(k) for k in headline_keys(keys)]
