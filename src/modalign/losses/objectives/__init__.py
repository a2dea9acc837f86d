"""Objectives over several modalities (see ``base``); importing this package registers them.

``all_pairs`` and ``anchor`` sum a pair loss over modality pairs; ``symile`` and ``gram`` score
all present modalities of a row at once (``joint``).
"""

from modalign.losses.objectives.all_pairs import AllPairsObjective, AnchorObjective
from modalign.losses.objectives.base import OBJECTIVES, Objective, build_objective
from modalign.losses.objectives.gram import GramObjective, gram_loss, gram_volumes
from modalign.losses.objectives.joint import JointObjective
from modalign.losses.objectives.symile import SymileObjective, symile_loss

__all__ = [
    "OBJECTIVES",
    "AllPairsObjective",
    "AnchorObjective",
    "GramObjective",
    "JointObjective",
    "Objective",
    "SymileObjective",
    "build_objective",
    "gram_loss",
    "gram_volumes",
    "symile_loss",
]
