"""The registry of loss terms: each module of this package is one term (see ``term.AbstractTerm``).

``TERMS`` maps a term's name (its config ``type``) to its class. Its order is the order in which the flat
config keys (``alpha_ce``, ``alpha_kl``, ...) expand to terms, and so the order of the loss's sum.
"""

from ..term import AbstractTerm
from .attention_kl import AttentionKL
from .attention_scores import AttentionScores
from .ce import CE
from .cos import Cos
from .hidden import Hidden
from .kl import KL
from .pkd import PKD
from .value_relation import ValueRelation

TERMS: dict[str, type[AbstractTerm]] = {
    term.name: term for term in (CE, KL, Cos, Hidden, AttentionScores, AttentionKL, ValueRelation, PKD)
}

__all__ = ["CE", "KL", "TERMS", "AttentionKL", "AttentionScores", "Cos", "Hidden", "ValueRelation"]
