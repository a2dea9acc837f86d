"""Features: frozen encoders run once over a manifest (``extract``), their resumable cache, and
the feature files training reads (``store``).

"Features" are what an encoder outputs; "embeddings" are only the shared space's vectors.
"""

from modalign.features.extract import EmbedResult, embed_manifest
from modalign.features.store import FeatureStore, write_features

__all__ = ["EmbedResult", "FeatureStore", "embed_manifest", "write_features"]
