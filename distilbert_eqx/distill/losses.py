"""Shape-checked distillation losses over a padded batch.

Every loss takes per-example ``weights``: 1 for real rows and 0 for the rows that pad the last batch to a
fixed shape, so padded rows never change a loss (and an all-padding batch gives 0, not NaN). All arithmetic is
float32, whatever the input dtype, and every log-probability comes from ``log_softmax``. The losses know
nothing of models: the caller picks the hidden states and stops gradients through the teacher.

Each loss returns a ``WeightedSum`` (its numerator and denominator) rather than a mean. On one device
``.mean()`` is the loss. With the batch rows split over devices, the step body sums the ``WeightedSum``s across
devices first (one ``psum``) and takes the means after, so every device gets the loss of the global batch and
its gradient; that is the only place a collective happens.
"""

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._types import BatchLabels, BatchLogits, BatchTokenMask, BatchWeights

Scalar = Float[Array, ""]
StudentHidden = Float[Array, "batch seq s_hidden"]
TeacherHidden = Float[Array, "batch seq t_hidden"]

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


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def softmax_with_temperature(
    logits: Float[Array, "*batch classes"], temperature: float
) -> Float[Array, "*batch classes"]:
    """``softmax(logits / T)`` over the last axis, in float32.

    Arguments:
        logits: ``(..., classes)``, any float dtype.
        temperature: ``T > 0``; larger ``T`` gives a softer distribution.

    Returns:
        float32 probabilities of shape ``(..., classes)``.
    """
    _check_temperature(temperature)
    return jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def hard_loss(student_logits: BatchLogits, labels: BatchLabels, weights: BatchWeights) -> WeightedSum:
    """Cross-entropy against the gold labels, weighted mean over examples.

    Arguments:
        student_logits: ``(batch, classes)``.
        labels: ``(batch,)`` class indices.
        weights: ``(batch,)``, 1 for real rows and 0 for padding rows.

    Returns:
        float32 ``sum(w * ce)`` over ``sum(w)``.
    """
    log_probs = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
    ce = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    return weighted_sum(ce, weights)


def soft_loss(
    student_logits: BatchLogits,
    teacher_logits: BatchLogits,
    weights: BatchWeights,
    temperature: float,
) -> WeightedSum:
    """``T**2 * KL(teacher || student)`` between the temperature-softened distributions, weighted batch mean.

    The ``T**2`` keeps the gradient scale independent of ``T`` (Hinton et al., 2015). With all weights 1 this
    is ``torch.nn.KLDivLoss(reduction="batchmean")(log_softmax(s / T), softmax(t / T)) * T**2``.

    Arguments:
        student_logits: ``(batch, classes)``.
        teacher_logits: ``(batch, classes)``, the target.
        weights: ``(batch,)``, 1 for real rows and 0 for padding rows.
        temperature: ``T > 0``.

    Returns:
        float32 ``sum(w * T**2 * kl)`` over ``sum(w)``.
    """
    _check_temperature(temperature)
    student_log_probs = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    teacher_log_probs = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)
    # Scaling the sum equals scaling the mean: T**2 is applied once, to one scalar.
    sums = weighted_sum(kl, weights)
    return WeightedSum(temperature**2 * sums.total, sums.weight)


def cosine_loss(
    student_hidden: StudentHidden,
    teacher_hidden: TeacherHidden,
    attention_mask: BatchTokenMask,
    weights: BatchWeights,
) -> WeightedSum:
    """``1 - cos(student, teacher)`` per token, over the real tokens of the real rows.

    Its mean equals ``torch.nn.CosineEmbeddingLoss()`` with target +1 on the tokens where ``attention_mask`` is
    set and the row's weight is positive. Weights act only as a row mask here: every selected token counts once.

    Arguments:
        student_hidden: ``(batch, seq, hidden)``.
        teacher_hidden: ``(batch, seq, hidden)``; the hidden size must equal the student's.
        attention_mask: ``(batch, seq)``, ``True`` for real tokens.
        weights: ``(batch,)``, 1 for real rows and 0 for padding rows.

    Returns:
        float32 sum of ``1 - cos`` over the selected tokens, and their count.
    """
    # The two hidden axes have different names in the annotation so that this message, not a generic shape
    # mismatch from the type checker, is what a user distilling into a narrower student sees.
    s_hidden, t_hidden = student_hidden.shape[-1], teacher_hidden.shape[-1]
    if s_hidden != t_hidden:
        raise ValueError(
            f"cosine loss needs equal hidden sizes, got student hidden size {s_hidden} and teacher hidden "
            f"size {t_hidden}; set alpha_cos=0 or project the student's hidden states (hidden_projection)"
        )
    token_weights = (attention_mask & (weights > 0)[:, None]).astype(jnp.float32)
    return weighted_sum(cosine_distance(student_hidden, teacher_hidden), token_weights)


TERM_ALPHAS = {"loss_ce": "alpha_ce", "loss_kl": "alpha_kl", "loss_cos": "alpha_cos"}


def distillation_terms(
    student_logits: BatchLogits,
    teacher_logits: BatchLogits | None,
    student_hidden: StudentHidden | None,
    teacher_hidden: TeacherHidden | None,
    labels: BatchLabels,
    attention_mask: BatchTokenMask,
    weights: BatchWeights,
    *,
    temperature: float,
    alpha_ce: float,
    alpha_kl: float,
    alpha_cos: float,
) -> dict[str, WeightedSum]:
    """The ``WeightedSum`` of each term with a positive weight: ``"loss_ce"``, ``"loss_kl"``, ``"loss_cos"``.

    A term whose alpha is 0 is not computed, and its inputs may be ``None``. Combine the (device-summed) terms
    with :func:`weighted_total`; :func:`distillation_loss` does both on one device.
    """
    alphas = {"alpha_ce": alpha_ce, "alpha_kl": alpha_kl, "alpha_cos": alpha_cos}
    negative = {name: a for name, a in alphas.items() if a < 0}
    if negative:
        raise ValueError(f"loss weights must be non-negative, got {negative}")
    if alpha_kl > 0 and teacher_logits is None:
        raise ValueError("alpha_kl > 0 needs teacher_logits")
    if alpha_cos > 0 and (student_hidden is None or teacher_hidden is None):
        raise ValueError("alpha_cos > 0 needs student_hidden and teacher_hidden")

    terms: dict[str, WeightedSum] = {}
    if alpha_ce > 0:
        terms["loss_ce"] = hard_loss(student_logits, labels, weights)
    if alpha_kl > 0:
        terms["loss_kl"] = soft_loss(student_logits, teacher_logits, weights, temperature)
    if alpha_cos > 0:
        terms["loss_cos"] = cosine_loss(student_hidden, teacher_hidden, attention_mask, weights)
    return terms


def weighted_total(
    terms: dict[str, WeightedSum], term_weights: Mapping[str, float]
) -> tuple[Scalar, dict[str, Scalar]]:
    """``sum(weight * mean)`` over the terms, from their (device-summed) sums.

    Arguments:
        terms: each term's ``WeightedSum``, keyed by name (``"loss_ce"``, ...).
        term_weights: the weight of every term in ``terms``, keyed the same way.

    Returns:
        ``(total, parts)``: the float32 total and each term's mean, keyed as in ``terms``.
    """
    parts = {name: sums.mean() for name, sums in terms.items()}
    total = sum(term_weights[name] * value for name, value in parts.items())
    return total, parts


def distillation_loss(
    *inputs: Array | None, temperature: float, alpha_ce: float, alpha_kl: float, alpha_cos: float
) -> tuple[Scalar, dict[str, Scalar]]:
    """``alpha_ce * hard + alpha_kl * soft + alpha_cos * cosine`` on one device.

    All three terms (e.g. ``alpha_ce=1.0, alpha_kl=0.45, alpha_cos=0.1``) and the classic Hinton loss
    ``alpha * soft + (1 - alpha) * hard`` (``alpha_kl=alpha, alpha_ce=1 - alpha, alpha_cos=0``, no hidden
    states needed) are one config away. Note ``alpha_ce`` weighs the *hard* loss here, whereas the DistilBERT
    training script's ``alpha_ce`` weighs the soft one. The layer-matching losses are in ``layer_losses.py``,
    and ``objective.py`` combines every term for the train step.

    Arguments:
        inputs: those of :func:`distillation_terms`, which checks their shapes: ``student_logits,
            teacher_logits`` ``(batch, classes)``; ``student_hidden, teacher_hidden`` ``(batch, seq, hidden)``,
            the states to align (e.g. the last layer's); ``labels`` ``(batch,)``; ``attention_mask``
            ``(batch, seq)``, ``True`` for real tokens; ``weights`` ``(batch,)``, 1 for real rows and 0 for
            padding rows.
        temperature: softmax temperature of the soft loss.
        alpha_ce, alpha_kl, alpha_cos: non-negative weights of the three terms, at least one positive.

    Returns:
        ``(total, parts)``: the float32 total and a dict with ``"loss_ce"``, ``"loss_kl"``, ``"loss_cos"`` for
        the terms that were computed (those with a positive alpha).
    """
    alphas = {"alpha_ce": alpha_ce, "alpha_kl": alpha_kl, "alpha_cos": alpha_cos}
    if not any(a > 0 for a in alphas.values()):
        raise ValueError(f"at least one loss weight must be positive, got {alphas}")
    terms = distillation_terms(*inputs, temperature=temperature, **alphas)
    return weighted_total(terms, {term: alphas[alpha] for term, alpha in TERM_ALPHAS.items()})
