"""Objectives over several modalities (see ``base``); importing this package registers them."""

from modalign.losses.objectives.all_pairs import AllPairsObjective, AnchorObjective
from modalign.losses.objectives.base import OBJECTIVES, Objective, build_objective

__all__ = ["OBJECTIVES", "AllPairsObjective", "AnchorObjective", "Objective", "build_objective"]
