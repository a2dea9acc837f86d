"""Discrete unified representations: a codebook shared by all modalities (CMG, DCID, FCID, TOC)."""

from modalign.quantize.codebook import SharedCodebook
from modalign.quantize.disentangle import CLUBEstimator, CrossCPC
from modalign.quantize.fcid import FCIDModel
from modalign.quantize.model import METHODS, DCIDModel, UnifiedModel, build_model
from modalign.quantize.toc import select_dimensions, toc_scores

__all__ = [
    "METHODS",
    "CLUBEstimator",
    "CrossCPC",
    "DCIDModel",
    "FCIDModel",
    "SharedCodebook",
    "UnifiedModel",
    "build_model",
    "select_dimensions",
    "toc_scores",
]
