"""The arithmetic the loss terms share: a loss as a weighted sum, the row and token masks, float32 distances.

Every term takes per-example ``weights``: 1 for real rows and 0 for the rows that pad the last batch to a fixed
shape, so padded rows never change a loss (and an all-padding batch gives 0, not NaN). All arithmetic is float32,
whatever the input dtype, and every log-probability comes from ``log_softmax``.

Each term returns a ``WeightedSum`` (its numerator and denominator) rather than a mean. On one device ``.mean()``
is the loss. With the batch rows split over devices, the step body sums the ``WeightedSum``s across devices first
(one ``psum``) and takes the means after, so every device gets the loss of the global batch and its gradient;
that is the only place a collective happens.
"""

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._types import BatchTokenMask, BatchWeights
from ..errors import ConfigError

Scalar = Float[Array, ""]

# torch.nn.CosineEmbeddingLoss adds this to both squared norms, which also keeps zero vectors finite.
_COSINE_EPS = 1e-12


class WeightedSum(NamedTuple):
    """A loss before its mean: ``total = sum(w * value)`` and ``weight = sum(w)`` over the selected entries.

    Sums of several devices' ``WeightedSum``s are the global batch's (``jax.lax.psum`` over the tuple).
    """

    total: Scalar
    weight: Scalar

    def mean(self) -> Scalar:
        """``total / weight``; 0 when every weight is 0 (the safe denominator keeps gradients finite too)."""
        return self.total / jnp.where(self.weight > 0, self.weight, 1.0)


def weighted_sum(values: Float[Array, "*shape"], weights: Float[Array, "*shape"]) -> WeightedSum:
    """``sum(w * v)`` and ``sum(w)``.

    ``jnp.where`` rather than a bare product so that garbage (even inf/NaN) in zero-weight entries cannot leak
    into the result.
    """
    weights = weights.astype(jnp.float32)
    return WeightedSum(jnp.sum(jnp.where(weights > 0, weights * values, 0.0)), jnp.sum(weights))


def weighted_total(
    terms: Mapping[str, WeightedSum], term_weights: Mapping[str, float]
) -> tuple[Scalar, dict[str, Scalar]]:
    """``sum(weight * mean)`` over the terms, from their (device-summed) sums.

    Arguments:
        terms: each term's ``WeightedSum``, keyed by its metrics name (``"loss_ce"``, ...).
        term_weights: the weight of every term in ``terms``, keyed the same way.

    Returns:
        ``(total, parts)``: the float32 total and each term's mean, keyed as in ``terms``.
    """
    parts = {name: sums.mean() for name, sums in terms.items()}
    total = sum(term_weights[name] * value for name, value in parts.items())
    return total, parts


def cosine_distance(
    student: Float[Array, "*tokens hidden"], teacher: Float[Array, "*tokens hidden"]
) -> Float[Array, "*tokens"]:
    """``1 - cos`` over the last axis, in float32, with torch's eps on both squared norms (zero vectors stay
    finite)."""
    s = student.astype(jnp.float32)
    t = teacher.astype(jnp.float32)
    dot = jnp.sum(s * t, axis=-1)
    norms = jnp.sqrt((jnp.sum(s * s, axis=-1) + _COSINE_EPS) * (jnp.sum(t * t, axis=-1) + _COSINE_EPS))
    return 1.0 - dot / norms


def token_weights(attention_mask: BatchTokenMask, weights: BatchWeights) -> Float[Array, "batch seq"]:
    """1 for the real tokens of real rows, 0 elsewhere."""
    return (attention_mask & (weights > 0)[:, None]).astype(jnp.float32)


def check_widths(student: Array, teacher: Array, loss: str) -> None:
    """The hidden-state terms compare states of one width: a narrower student goes through ``W_h`` first."""
    s, t = student.shape[-1], teacher.shape[-1]
    if s != t:
        raise ConfigError(
            f"the {loss} loss compares hidden states of equal width, got student width {s} and teacher width {t}; "
            "project the student's states to the teacher's width first (hidden_projection)"
        )


def masked_log_softmax(
    scores: Float[Array, "batch pairs heads seq seq"], attention_mask: BatchTokenMask
) -> Float[Array, "batch pairs heads seq seq"]:
    """Log-probabilities over the real keys; masked keys get probability 0 (their log is not used)."""
    keys = attention_mask[:, None, None, None, :]
    return jax.nn.log_softmax(
        jnp.where(keys, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min), axis=-1
    )


def relation_kl(
    student_scores: Float[Array, "batch pairs heads seq seq"],
    teacher_scores: Float[Array, "batch pairs heads seq seq"],
    attention_mask: BatchTokenMask,
    weights: BatchWeights,
) -> WeightedSum:
    """``KL(softmax(teacher) || softmax(student))`` over real keys, per pair, head and real query (MiniLM's
    attention and value-relation transfer)."""
    student_log = masked_log_softmax(student_scores, attention_mask)
    teacher_log = masked_log_softmax(teacher_scores, attention_mask)
    keys = attention_mask[:, None, None, None, :]
    kl = jnp.sum(jnp.where(keys, jnp.exp(teacher_log) * (teacher_log - student_log), 0.0), axis=-1)
    queries = jnp.broadcast_to(token_weights(attention_mask, weights)[:, None, None, :], kl.shape)
    return weighted_sum(kl, queries)
