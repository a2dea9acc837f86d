"""Turn a query (a text, a file or an indexed item's id) into a vector and search with it.

One function for the command line and the server, so both refuse the same bad queries with the
same one-line messages (:class:`~modalign.errors.DataError`).

Example:
    >>> import numpy as np
    >>> from modalign.index.store import Index
    >>> idx = Index(model_id="m")
    >>> idx.add(["a", "b"], "image", np.eye(2, dtype=np.float32))
    >>> [h.id for h in search_query(idx, None, Query(item_id="a"), k=1)]
    ['a']
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modalign.errors import ConfigError, DataError
from modalign.index.base import Hit, QueryEncoder
from modalign.index.store import Index


@dataclass(frozen=True)
class Query:
    """Exactly one of ``text``, ``file`` (a path) or ``item_id``; ``modality`` is the query's
    modality for files (default: the encoder's only file modality, or ``image``)."""

    text: str | None = None
    file: str | None = None
    item_id: str | None = None
    modality: str | None = None


def query_vector(index: Index, encoder: QueryEncoder | None, query: Query) -> np.ndarray:
    """The (1, D) vector of a query; a DataError saying what is wrong otherwise."""
    given = [x for x in (query.text, query.file, query.item_id) if x is not None]
    if len(given) != 1:
        raise DataError("give exactly one of text, file or id")
    if query.item_id is not None:
        return index.vector(query.item_id)[None, :]
    if encoder is None:
        raise DataError("this index records no model to embed text or files with; query by id")
    index.check_model(encoder.model_id)
    if query.text is not None:
        return encoder.encode(_modality_of_kind(encoder, "text", None), [query.text])
    path = Path(str(query.file))
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return encoder.encode(_modality_of_kind(encoder, "file", query.modality), [str(path)])


def _modality_of_kind(encoder: QueryEncoder, kind: str, wanted: str | None) -> str:
    names = [m for m in encoder.modalities if encoder.input_kind(m) == kind]
    if wanted is not None:
        if wanted not in names:
            raise DataError(
                f"the model reads no {kind} modality {wanted!r} (has: {', '.join(names) or 'none'})"
            )
        return wanted
    if not names:
        raise DataError(f"the model has no modality that reads a {kind}")
    return "image" if "image" in names else names[0]


def search_query(
    index: Index,
    encoder: QueryEncoder | None,
    query: Query,
    k: int = 10,
    modality: str | None = None,
) -> list[Hit]:
    """Top-k hits of one query, optionally only items of ``modality``.

    Args:
        index: the index. encoder: the index's model (None allows only id queries).
        query: what to search with. k: results. modality: result modality filter.
    """
    vector = query_vector(index, encoder, query)  # (1, D)
    return index.search(vector, k, modality=modality)[0]


def load_encoder(index: Index) -> QueryEncoder | None:
    """The model of the run the index was built with, or None when it records no run."""
    if not index.run:
        return None
    try:  # imported by name: the model loader is optional to this package
        loader = importlib.import_module("modalign.model.load")
    except ImportError:
        raise ConfigError(
            "loading a trained run needs modalign.model.load, missing in this install"
        ) from None
    encoder: QueryEncoder = loader.load(index.run)
    return encoder
