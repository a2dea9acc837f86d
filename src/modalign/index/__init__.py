"""Search the shared space: an index of items of every modality, exact or FAISS backends.

``exact`` needs nothing beyond torch; ``flat``, ``ivf``, ``hnsw`` and ``ivfpq`` need the
``faiss`` extra (imported only when such an index is built or loaded).
"""

from modalign.index import exact, faiss
from modalign.index.base import BACKENDS, Hit, QueryEncoder, VectorBackend
from modalign.index.store import Index, Item

__all__ = ["BACKENDS", "Hit", "Index", "Item", "QueryEncoder", "VectorBackend", "exact", "faiss"]
