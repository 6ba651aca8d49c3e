"""Hinton et al.'s soft-target loss: KL between the temperature-softened class distributions."""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..._types import BatchLogits, BatchWeights
from ...batch import Batch
from ...errors import ConfigError
from ...models import ClassifierOutput
from ..losses import WeightedSum, weighted_sum
from ..term import AbstractTerm, Kept, Projection


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ConfigError(f"temperature must be positive, got {temperature}")


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


class KL(AbstractTerm):
    """``weight * T**2 * KL(teacher || student)`` on the logits, the mean over real rows (see :func:`soft_loss`).

    The original experiment's ``alpha_kl``; note that the DistilBERT training script's ``alpha_ce`` weighs this
    soft loss, where ours (the ``ce`` term) weighs the hard one.
    """

    name: ClassVar[str] = "kl"
    title: ClassVar[str] = "KL"
    prediction_layer: ClassVar[bool] = True
    shorthand: ClassVar[dict[str, str]] = {"alpha_kl": "weight", "temperature": "temperature"}
    on_variants: ClassVar[bool] = True

    weight: float = eqx.field(static=True, default=0.45)
    temperature: float = eqx.field(static=True, default=2.0)

    def __check_init__(self):
        _check_temperature(self.temperature)

    def keep(self, teacher: ClassifierOutput) -> Kept:
        return {"logits": teacher.logits}

    def __call__(
        self, student: ClassifierOutput, teacher: Kept, batch: Batch, project: Projection
    ) -> WeightedSum:
        return soft_loss(student.logits, teacher["logits"], batch.weights, self.temperature)

    def describe(self) -> str:
        return f"{self.title} {self.weight} (T = {self.temperature})"
