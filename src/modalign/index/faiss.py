"""FAISS backends (extra ``modalign[faiss]``): ``flat``, ``ivf``, ``hnsw`` and ``ivfpq``.

All use the inner product of unit rows (cosine). Defaults follow the data size ``n`` of the
first build, and every one can be set through ``options``:

* ``flat``: exact, ``IndexFlatIP`` under an ``IndexIDMap2`` (labels, ``remove``, reconstruct).
* ``ivf``: ``IndexIVFFlat``; ``nlist`` = the power of two nearest ``sqrt(n)`` (at most n / 39, the
  fewest training points per list faiss accepts without warning), ``nprobe`` = max(min(nlist, 8),
  nlist / 32); k-means (10 iterations) trained on a sample of at most 64 points per list.
* ``ivfpq``: ``IndexIVFPQ`` with the same lists and ``m`` = D / 4 sub-quantizers of 8 bits
  (64 bytes per vector at D = 256 instead of 1,024), for millions of vectors in little memory;
  scores are approximate (the vectors are compressed; D / 8 halved recall@10 in the tests).
* ``hnsw``: ``IndexHNSWFlat`` (``M`` = 32, ``efConstruction`` = 40, ``efSearch`` = 64) under an
  ``IndexIDMap2``, built with the L2 metric on the unit rows (the same ranking as the inner
  product, and the metric the graph's construction assumes); scores are ``1 - d / 2``.

``remove``: flat, ivf and ivfpq remove in place (``remove_ids``; the IVF kinds keep a hash-table
direct map so labels can also be reconstructed); an HNSW graph cannot drop nodes, so ``hnsw``
rebuilds its graph from the stored vectors without the removed ones (time O(n log n)).

References:
    Johnson, Douze and Jégou, 2019, "Billion-scale similarity search with GPUs" (faiss).
    Jégou, Douze and Schmid, 2011, "Product quantization for nearest neighbor search" (IVF-PQ).
    Malkov and Yashunin, 2018, "Efficient and robust approximate nearest neighbor search using
    Hierarchical Navigable Small World graphs" (HNSW).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modalign.errors import ConfigError
from modalign.eval.topk import default_workers
from modalign.index.base import VectorBackend, as_labels, register_backend
from modalign.io import atomic_path

TRAIN_POINTS_PER_LIST = 64  # faiss asks for 39 at least; k-means quality saturates early
KMEANS_ITERATIONS = 10
SUFFIX = ".faiss"
SAMPLE_GROUP = 8192  # rows read through one memory map by sample_rows


def import_faiss() -> Any:
    """The ``faiss`` module, or a one-line error saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            "FAISS backends need faiss: pip install 'modalign[faiss]' (or use --backend exact)"
        ) from None
    return faiss


def default_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: the power of two nearest sqrt(n), at most n / 39.

    Example:
        >>> default_nlist(1_000_000), default_nlist(5_000_000), default_nlist(500)
        (1024, 2048, 8)
    """
    nearest = 2 ** round(math.log2(max(1.0, math.sqrt(n))))
    return int(max(1, min(nearest, 2 ** int(math.log2(max(1, n // 39))))))


def default_nprobe(nlist: int) -> int:
    """Lists visited per query: all of a few, else 1/32 of them (at least 8).

    Example:
        >>> default_nprobe(8), default_nprobe(1024)
        (8, 32)
    """
    return max(min(nlist, 8), nlist // 32)


def iter_row_chunks(source: np.ndarray | str | Path, chunk: int) -> Iterator[np.ndarray]:
    """(c, D) float32 copies of consecutive rows of an array or a ``.npy`` file.

    A file is memory-mapped afresh for every chunk and unmapped after, so the pages read do not
    stay in this process's resident set: streaming a file larger than memory costs one chunk.
    """
    n = _rows(source)
    for i in range(0, n, chunk):
        data = np.load(source, mmap_mode="r") if isinstance(source, str | Path) else source
        rows = np.array(data[i : i + chunk], dtype=np.float32)
        del data
        yield rows


def sample_rows(source: np.ndarray | str | Path, size: int, seed: int = 0) -> np.ndarray:
    """A seeded random sample of ``size`` rows (all rows when there are fewer), in file order.

    From a file, rows are read in groups through a fresh memory map each, so the pages touched
    by a scattered sample never pile up in the resident set.
    """
    n = _rows(source)
    rows = (
        np.arange(n)
        if n <= size
        else np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    )
    if not isinstance(source, str | Path):
        return np.array(source[rows], dtype=np.float32)
    parts = []
    for i in range(0, len(rows), SAMPLE_GROUP):
        data = np.load(source, mmap_mode="r")
        parts.append(np.array(data[rows[i : i + SAMPLE_GROUP]], dtype=np.float32))
        del data
    return np.concatenate(parts)


def _rows(source: np.ndarray | str | Path) -> int:
    if isinstance(source, str | Path):
        return int(np.load(source, mmap_mode="r").shape[0])
    return int(source.shape[0])


def _search_in_workers(index: Any, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` over query blocks on worker threads with one OpenMP thread each.

    faiss parallelises a search with OpenMP, whose threads wait for each other at every
    barrier: on a shared machine one busy core stalls them all (faiss flat searched 9 queries/s
    against 41 for the same work split this way in ``bench_search.py --ann``, under load). faiss
    releases the GIL, so Python threads each searching a block use the cores independently.
    """
    workers = min(default_workers(), max(1, len(q) // 16))
    if workers <= 1:
        found: tuple[np.ndarray, np.ndarray] = index.search(q, k)
        return found
    blocks = np.array_split(np.arange(len(q)), workers * 4)
    with omp_threads(1), ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda rows: index.search(q[rows], k), blocks))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def build_threads() -> int:
    """OpenMP threads for training and adding: all cores, or one when they are busy.

    faiss builds with OpenMP only; when other processes hold the cores, its threads wait for
    each other at every barrier: building ivfpq over 20,000 vectors took 68 s with two threads
    and 20 s with one at a load average of 16 on 2 cores. So: one thread when the 1-minute load
    average already fills the cores, else all of them.
    """
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] >= cores - 0.5 else max(1, default_workers())


@contextlib.contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Run faiss with ``n`` OpenMP threads inside the block."""
    faiss = import_faiss()
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


class FaissBackend(VectorBackend):
    """Shared parts of the FAISS backends: ``self.index`` stores labels as faiss ids."""

    kind: ClassVar[str] = ""

    def __init__(self, index: Any) -> None:
        self.index = index

    @classmethod
    def build(cls, labels: np.ndarray, vectors: np.ndarray, options: dict[str, Any]) -> Any:
        backend = cls(cls.make(int(vectors.shape[1]), len(vectors), options))
        with omp_threads(int(options.get("threads", build_threads()))):
            backend.train(vectors)
            backend.add(labels, vectors)
        return backend

    @classmethod
    def build_streamed(
        cls,
        source: np.ndarray | str | Path,
        chunk: int = 100_000,
        options: dict[str, Any] | None = None,
    ) -> Any:
        """Build over every row of an array or ``.npy`` file, labels 0..n-1, one chunk at a time.

        Peak memory: the train sample, one chunk and the index itself, whatever n is.
        """
        options = dict(options or {})
        n = _rows(source)
        backend = cls(cls.make(int(sample_rows(source, 1).shape[1]), n, options))
        with omp_threads(int(options.get("threads", build_threads()))):
            backend.train(sample_rows(source, backend.train_size(n)))
            start = 0
            for rows in iter_row_chunks(source, chunk):
                backend.add(np.arange(start, start + len(rows)), rows)
                start += len(rows)
        return backend

    @classmethod
    def make(cls, dim: int, n: int, options: dict[str, Any]) -> Any:
        """An empty faiss index for ``n`` vectors of width ``dim``."""
        raise NotImplementedError

    def train_size(self, n: int) -> int:
        return n

    def train(self, vectors: np.ndarray) -> None:
        """Train on a sample of ``vectors`` when the index needs it."""

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), as_labels(labels))

    def remove(self, labels: np.ndarray) -> None:
        self.index.remove_ids(as_labels(labels))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.index.ntotal)
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        q = np.ascontiguousarray(queries, np.float32)  # (Q, D)
        scores, labels = _search_in_workers(self.index, q, k)
        return scores.astype(np.float32), labels.astype(np.int64)

    def reconstruct(self, label: int) -> np.ndarray:
        return np.asarray(self.index.reconstruct(int(label)), np.float32)

    def save(self, stem: Path) -> None:
        faiss = import_faiss()
        with atomic_path(stem.with_name(stem.name + SUFFIX)) as tmp:
            faiss.write_index(self.index, str(tmp))

    @classmethod
    def load(cls, stem: Path) -> Any:
        return cls(import_faiss().read_index(str(stem.with_name(stem.name + SUFFIX))))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}


@register_backend("flat")
class FlatBackend(FaissBackend):
    """Exact search with faiss ``IndexFlatIP`` (labels through ``IndexIDMap2``)."""

    kind = "flat"

    @classmethod
    def make(cls, dim: int, n: int, options: dict[str, Any]) -> Any:
        faiss = import_faiss()
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


class _IVFBackend(FaissBackend):
    """IVF kinds: coarse k-means lists, a hash-table direct map for reconstruct and remove."""

    @classmethod
    def make(cls, dim: int, n: int, options: dict[str, Any]) -> Any:
        faiss = import_faiss()
        nlist = int(options.get("nlist", default_nlist(n)))
        index = cls.make_ivf(faiss, faiss.IndexFlatIP(dim), dim, nlist, n, options)
        index.nprobe = int(options.get("nprobe", default_nprobe(nlist)))
        index.cp.seed = int(options.get("seed", 0))
        index.cp.niter = int(options.get("niter", KMEANS_ITERATIONS))
        return index

    @classmethod
    def make_ivf(
        cls, faiss: Any, quantizer: Any, dim: int, nlist: int, n: int, options: dict[str, Any]
    ) -> Any:
        raise NotImplementedError

    def __init__(self, index: Any) -> None:
        super().__init__(index)
        self.quantizer = getattr(index, "quantizer", None)  # faiss does not own it from Python
        faiss = import_faiss()
        index.set_direct_map_type(faiss.DirectMap.Hashtable)

    def train_size(self, n: int) -> int:
        return min(n, TRAIN_POINTS_PER_LIST * max(int(self.index.nlist), 40))

    def train(self, vectors: np.ndarray) -> None:
        if not self.index.is_trained:
            sample = sample_rows(vectors, self.train_size(len(vectors)))
            self.index.train(np.ascontiguousarray(sample, np.float32))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "nlist": int(self.index.nlist), "nprobe": int(self.index.nprobe)}


@register_backend("ivf")
class IVFBackend(_IVFBackend):
    """Approximate search over inverted lists of full vectors (``IndexIVFFlat``)."""

    kind = "ivf"

    @classmethod
    def make_ivf(
        cls, faiss: Any, quantizer: Any, dim: int, nlist: int, n: int, options: dict[str, Any]
    ) -> Any:
        return faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)


@register_backend("ivfpq")
class IVFPQBackend(_IVFBackend):
    """Approximate search over product-quantised vectors (``IndexIVFPQ``): small in memory."""

    kind = "ivfpq"

    @classmethod
    def make_ivf(
        cls, faiss: Any, quantizer: Any, dim: int, nlist: int, n: int, options: dict[str, Any]
    ) -> Any:
        m = int(options.get("m", _pq_subquantizers(dim)))
        nbits = int(
            options.get("nbits", 8 if n >= 39 * 256 else max(1, int(math.log2(max(2, n // 39)))))
        )
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.niter = int(options.get("niter", KMEANS_ITERATIONS))
        return index

    def train_size(self, n: int) -> int:
        # the product quantiser's 2^nbits centroids per sub-space want >= 39 points each
        return min(n, max(super().train_size(n), 39 << int(self.index.pq.nbits)))

    def describe(self) -> dict[str, Any]:
        pq = self.index.pq
        return {**super().describe(), "m": int(pq.M), "nbits": int(pq.nbits)}


def _pq_subquantizers(dim: int) -> int:
    """The largest divisor of ``dim`` that is at most dim / 4 (4 dimensions per code byte).

    Example:
        >>> _pq_subquantizers(256), _pq_subquantizers(30)
        (64, 6)
    """
    return max(m for m in range(1, max(1, dim // 4) + 1) if dim % m == 0)


@register_backend("hnsw")
class HNSWBackend(FaissBackend):
    """Approximate search over a navigable small-world graph (``IndexHNSWFlat``)."""

    kind = "hnsw"

    @classmethod
    def make(cls, dim: int, n: int, options: dict[str, Any]) -> Any:
        faiss = import_faiss()
        # L2 on unit rows ranks like the inner product (|q - x|^2 = 2 - 2 q.x), and HNSW's
        # graph is built for a metric: with METRIC_INNER_PRODUCT its recall drops (0.73 vs
        # 0.9+ at efSearch 64 in tests/index). Scores are converted back in search().
        graph = faiss.IndexHNSWFlat(dim, int(options.get("M", 32)), faiss.METRIC_L2)
        graph.hnsw.efConstruction = int(options.get("efConstruction", 40))
        graph.hnsw.efSearch = int(options.get("efSearch", 64))
        return faiss.IndexIDMap2(graph)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        distances, labels = super().search(queries, k)  # squared L2 of unit rows
        return (1.0 - 0.5 * distances).astype(np.float32), labels

    def remove(self, labels: np.ndarray) -> None:
        faiss = import_faiss()
        ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)  # (n,) in storage order
        keep = ~np.isin(ids, as_labels(labels))
        vectors = self.index.index.reconstruct_n(0, len(ids))  # (n, D)
        graph = faiss.downcast_index(self.index.index)
        options = {
            "M": graph.hnsw.nb_neighbors(1),
            "efConstruction": graph.hnsw.efConstruction,
            "efSearch": graph.hnsw.efSearch,
        }
        self.index = self.make(int(vectors.shape[1]), int(keep.sum()), options)
        self.add(ids[keep], vectors[keep])

    def describe(self) -> dict[str, Any]:
        graph = import_faiss().downcast_index(self.index.index).hnsw
        return {"kind": "hnsw", "M": int(graph.nb_neighbors(1)), "efSearch": int(graph.efSearch)}
