"""Cross-entropy against the gold labels: the only term that needs no teacher."""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._types import BatchLabels, BatchLogits, BatchWeights
from ...batch import Batch
from ...models import ClassifierOutput
from ..losses import WeightedSum, weighted_sum
from ..term import AbstractTerm, Kept, Projection


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


class CE(AbstractTerm):
    """``weight * CE(student logits, labels)``, the mean over real rows (``torch.nn.CrossEntropyLoss``)."""

    name: ClassVar[str] = "ce"
    title: ClassVar[str] = "CE"
    reads_teacher: ClassVar[bool] = False
    prediction_layer: ClassVar[bool] = True
    shorthand: ClassVar[dict[str, str]] = {"alpha_ce": "weight"}

    weight: float = eqx.field(static=True, default=1.0)

    def __call__(
        self, student: ClassifierOutput, teacher: Kept, batch: Batch, project: Projection
    ) -> WeightedSum:
        return hard_loss(student.logits, batch.labels, batch.weights)
