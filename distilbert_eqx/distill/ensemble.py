"""Several teachers as one: their class probabilities averaged, stored in the teacher-output cache like one
teacher's logits (TextBrewer's multi-teacher distillation averages the teachers' soft targets).

Each teacher's cache is made (or read) as a single teacher's is; the averaged cache holds, per example and per
field of logits, ``T * log(mean_i softmax(z_i / T))`` at the temperature ``T`` of the term that keeps them:
logits whose softmax at ``T`` is the mean of the teachers' probabilities at ``T``, so the terms read them
unchanged. Only logits average: the hidden states or attention of different teachers have no common
coordinates, so a loss with a term that keeps anything else is refused.
"""

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from jaxtyping import Float

from ..errors import ConfigError
from .objective import Objective
from .teacher_cache import TeacherCache


def logit_temperatures(objective: Objective, fields: Iterable[str]) -> dict[str, float]:
    """Each cached field's averaging temperature: that of the term keeping it (1 for a term without one).
    Refuses a field other than logits, naming the term."""
    terms = {term.name: term for term in objective.terms}
    temperatures = {}
    for name in fields:
        term, _, kept = name.partition(".")
        if kept != "logits":
            raise ConfigError(
                f"with several teachers only their logits can be averaged, but the {term!r} term keeps the "
                f"teacher's {kept}: drop it from the loss (or its weight to 0), or distil from one teacher"
            )
        temperatures[name] = float(getattr(terms[term], "temperature", 1.0))
    return temperatures


def mean_probability_logits(
    logits: Float[np.ndarray, "teachers examples classes"], temperature: float
) -> Float[np.ndarray, "examples classes"]:
    """``T * log(mean_i softmax(logits_i / T))``, in float64: logits whose softmax at ``T`` is the teachers' mean
    probability at ``T``."""
    scaled = np.asarray(logits, np.float64) / temperature
    log_probs = scaled - _logsumexp(scaled, axis=-1, keepdims=True)
    return temperature * (_logsumexp(log_probs, axis=0) - np.log(len(logits)))


def average_soft_targets(caches: Sequence[TeacherCache], temperatures: Mapping[str, float]) -> TeacherCache:
    """One cache holding, for every field of logits, the teachers' mean probabilities as logits
    (``mean_probability_logits``), in the first cache's storage dtype. The caches must cover the same split."""
    first = caches[0]
    for other in caches[1:]:
        if other.fields != first.fields or not np.array_equal(other.lengths, first.lengths):
            raise ConfigError(
                "the teachers' caches hold other fields or examples; they were made for other runs"
            )
    arrays = {
        name: mean_probability_logits(np.stack([c.arrays[name] for c in caches]), temperatures[name]).astype(
            first.arrays[name].dtype
        )
        for name in first.fields
    }
    description = {"members": [c.key for c in caches], "temperatures": dict(temperatures)}
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
    return TeacherCache(first.lengths, arrays, first.layout, key, first.labelled)


def _logsumexp(x: np.ndarray, axis: int, keepdims: bool = False) -> np.ndarray:
    top = np.max(x, axis=axis, keepdims=True)
    out = top + np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)
