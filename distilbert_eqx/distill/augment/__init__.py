"""Transfer sets for distillation: word-level variants of the train split, labelled later by the teacher.

``words.py`` (what a word is, which may be replaced), ``neighbours.py`` (embedding-neighbour candidates),
``mlm.py`` (masked-LM candidates), ``pool.py`` (masking, replacement, n-gram sampling, deduplication, the
on-disk pool). The candidate sources are the family, registered in ``CANDIDATES``.
"""

from .pool import (
    CANDIDATES,
    AugmentedPool,
    AugmentError,
    AugmentSettings,
    augmented_pool,
    load_pool,
    pool_text,
)
from .words import STOP_WORDS

__all__ = [
    "CANDIDATES",
    "STOP_WORDS",
    "AugmentError",
    "AugmentSettings",
    "AugmentedPool",
    "augmented_pool",
    "load_pool",
    "pool_text",
]
