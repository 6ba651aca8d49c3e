"""The distillation method family: loss terms (one module each, registered in ``terms``), the objective that
sums them, the layer maps they read, the teacher-output cache derived from them, and the augmented transfer sets
the teacher labels (``augment/``)."""

from .losses import WeightedSum
from .objective import Objective, shorthand_terms
from .term import AbstractTerm
from .terms import TERMS

__all__ = ["TERMS", "AbstractTerm", "Objective", "WeightedSum", "shorthand_terms"]
