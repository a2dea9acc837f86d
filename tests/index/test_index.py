"""Index: backends against exact search, add/remove/save/load, model refusal, errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from modalign.errors import DataError
from modalign.index import BACKENDS, Index

HAS_FAISS = importlib.util.find_spec("faiss") is not None
needs_faiss = pytest.mark.skipif(
    not HAS_FAISS, reason="faiss-cpu not installed (extra modalign[faiss])"
)
ALL = [
    "exact",
    pytest.param("flat", marks=needs_faiss),
    pytest.param("ivf", marks=needs_faiss),
    pytest.param("hnsw", marks=needs_faiss),
    pytest.param("ivfpq", marks=needs_faiss),
]


def clustered(rng: np.random.Generator, n: int, d: int, clusters: int = 20) -> np.ndarray:
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(q: np.ndarray, g: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q.astype(np.float64) @ g.astype(np.float64).T), axis=1, kind="stable")[
        :, :k
    ]


def test_exact_backend_equals_brute_force():
    rng = np.random.default_rng(0)
    g, q = clustered(rng, 3000, 16), clustered(rng, 50, 16)
    s, lab = BACKENDS.get("exact").build(np.arange(3000) + 100, g, {}).search(q, 10)
    assert (lab - 100 == brute_force(q, g, 10)).all()
    np.testing.assert_allclose(s, np.take_along_axis(q @ g.T, lab - 100, 1), atol=1e-5)


@needs_faiss
def test_flat_backend_matches_exact():
    rng = np.random.default_rng(1)
    g, q = clustered(rng, 3000, 16), clustered(rng, 50, 16)
    labels = np.arange(3000) * 3
    es, el = BACKENDS.get("exact").build(labels, g, {}).search(q, 10)
    fs, fl = BACKENDS.get("flat").build(labels, g, {}).search(q, 10)
    assert (el == fl).mean() > 0.99  # only float near-ties may swap
    np.testing.assert_allclose(es, fs, atol=1e-5)


@needs_faiss
@pytest.mark.parametrize(("name", "floor"), [("ivf", 0.9), ("hnsw", 0.9), ("ivfpq", 0.35)])
def test_ann_recall_against_exact(name, floor):
    # ivfpq compresses 32 floats into 8 codes of 7 bits here: 0.45 measured; chance is 0.002
    rng = np.random.default_rng(2)
    g = clustered(rng, 5000, 32)
    q = g[:100] + 0.05 * rng.standard_normal((100, 32)).astype(np.float32)  # near the data
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = brute_force(q, g, 10)
    _, found = BACKENDS.get(name).build(np.arange(5000), g, {}).search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    assert recall >= floor, recall


@pytest.mark.parametrize("backend", ALL)
def test_add_remove_save_load(tmp_path, backend):
    rng = np.random.default_rng(3)
    img, txt = clustered(rng, 600, 16), clustered(rng, 400, 16)
    idx = Index(backend=backend, model_id="m1", run="/runs/x")
    idx.add(
        [f"i{j}" for j in range(600)], "image", img, [{"source": f"{j}.png"} for j in range(600)]
    )
    idx.add([f"t{j}" for j in range(400)], "text", txt)
    gone = [f"i{j}" for j in range(0, 600, 3)] + ["t5"]
    idx.remove(gone)
    assert len(idx) == 1000 - len(gone)
    # the removed items' own vectors are never returned, even as queries for themselves
    hits = idx.search(np.concatenate([img[:30], txt[5:6]]), 20)
    assert not {h.id for row in hits for h in row} & set(gone)
    idx.save(tmp_path / "ix")
    back = Index.load(tmp_path / "ix")
    assert (back.model_id, back.run, back.backend, len(back)) == (
        "m1",
        "/runs/x",
        backend,
        len(idx),
    )
    assert back.item("i1").metadata == {"source": "1.png"}
    assert [h.id for h in back.search(img[1:2], 5)[0]] == [h.id for h in idx.search(img[1:2], 5)[0]]
    assert [h.modality for h in back.search(img[1:2], 5, modality="text")[0]] == ["text"] * 5
    if backend == "ivfpq":  # 3-bit codes at this size: close in direction, not in value
        assert float(back.vector("i1") @ img[1]) > 0.7
    else:
        np.testing.assert_allclose(back.vector("i1"), img[1], atol=1e-6)
    back.add(["new"], "text", img[:1])  # labels continue after a load: no clash with old ones
    assert back.search(img[:1], 1, modality="text")[0][0].id == "new"


def test_model_id_refusal_and_errors():
    idx = Index(model_id="model-A")
    idx.add(["a", "b"], "image", np.eye(3, dtype=np.float32)[:2])
    with pytest.raises(DataError, match="model-B"):
        idx.search(np.eye(3, dtype=np.float32)[:1], 1, model_id="model-B")
    assert idx.search(np.eye(3, dtype=np.float32)[:1], 1, model_id="model-A")[0][0].id == "a"
    bad = [
        (lambda: idx.add(["a"], "image", np.eye(3)[:1]), "already in the index"),
        (lambda: idx.add(["x", "x"], "image", np.eye(3)[:2]), "twice"),
        (lambda: idx.add(["y"], "image", np.eye(4)[:1]), "dimension 4"),
        (lambda: idx.add(["z"], "image", np.zeros((1, 3))), "zero or not finite"),
        (lambda: idx.search(np.eye(3)[:1], 0), "k must be"),
        (lambda: idx.search(np.eye(3)[:1], 1, modality="audio"), "no items of modality"),
        (lambda: idx.remove(["nope"]), "not in the index"),
        (lambda: idx.vector("nope"), "not in the index"),
    ]
    for call, message in bad:
        with pytest.raises(DataError, match=message):
            call()


def test_real_encoder_queries(real_index, real_encoder, search_helpers):
    from modalign.index.query import Query, search_query

    idx = Index.load(real_index)
    img0 = idx.item("img0").metadata["source"]
    hits = search_query(idx, real_encoder, Query(file=img0), k=3, modality="image")
    assert hits[0].id == "img0" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    hits = search_query(idx, real_encoder, Query(text="a small dog"), k=16)
    assert hits[0].id == "cap1" and len(hits) == 16
    assert [h.id for h in search_query(idx, None, Query(item_id="cap3"), k=1)] == ["cap3"]
    other = search_helpers.SmallRealEncoder(seed=1)  # same architecture, other weights
    with pytest.raises(DataError, match="embedded by model"):
        search_query(idx, other, Query(text="a small dog"))
    with pytest.raises(DataError, match="no model"):
        search_query(idx, None, Query(text="a dog"))
    with pytest.raises(DataError, match="exactly one"):
        search_query(idx, real_encoder, Query(text="a", item_id="cap1"))


@needs_faiss
def test_streamed_build_from_a_file_equals_the_array(tmp_path):
    from modalign.index.faiss import IVFBackend, iter_row_chunks, sample_rows

    x = clustered(np.random.default_rng(5), 3000, 16)
    np.save(tmp_path / "x.npy", x)
    path = tmp_path / "x.npy"
    assert np.array_equal(sample_rows(path, 500, seed=1), sample_rows(x, 500, seed=1))
    assert np.array_equal(np.concatenate(list(iter_row_chunks(path, 700))), x)
    streamed = IVFBackend.build_streamed(path, chunk=700, options={"threads": 1})
    direct = IVFBackend.build(np.arange(3000), x, {"threads": 1})
    assert len(streamed) == 3000
    assert np.array_equal(streamed.search(x[:20], 5)[1], direct.search(x[:20], 5)[1])
