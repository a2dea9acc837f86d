"""The model: per-modality encoders and heads into one normalised space.

``aligner`` (the module and its builder), ``heads`` (projection heads), ``init`` (fitted starts
such as CCA), ``inference`` (embedding a run's splits).
"""

from modalign.model.aligner import Aligner, build_model
from modalign.model.heads import HEADS

__all__ = ["HEADS", "Aligner", "build_model"]
