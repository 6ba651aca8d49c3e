"""DistilBERT's cosine loss between the last hidden states of student and teacher."""

from typing import ClassVar

import equinox as eqx
from jaxtyping import Array, Float

from ..._types import BatchTokenMask, BatchWeights
from ...batch import Batch
from ...errors import ConfigError
from ...models import ClassifierOutput
from ..losses import WeightedSum, cosine_distance, token_weights, weighted_sum
from ..term import AbstractTerm, Kept, Projection


def cosine_loss(
    student_hidden: Float[Array, "batch seq s_hidden"],
    teacher_hidden: Float[Array, "batch seq t_hidden"],
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
        raise ConfigError(
            f"cosine loss needs equal hidden sizes, got student hidden size {s_hidden} and teacher hidden "
            f"size {t_hidden}; set alpha_cos=0 or project the student's hidden states (hidden_projection)"
        )
    return weighted_sum(
        cosine_distance(student_hidden, teacher_hidden), token_weights(attention_mask, weights)
    )


class Cos(AbstractTerm):
    """``weight * (1 - cos)`` between the last layer's states, the mean over every real token of every real row
    (DistilBERT's ``alpha_cos``; Sanh et al. 2019). The student goes through ``W_h`` when the widths differ."""

    name: ClassVar[str] = "cos"
    title: ClassVar[str] = "cosine"
    projects_student: ClassVar[bool] = True
    shorthand: ClassVar[dict[str, str]] = {"alpha_cos": "weight"}

    weight: float = eqx.field(static=True, default=0.1)

    def keep(self, teacher: ClassifierOutput) -> Kept:
        return {"last_hidden_state": teacher.last_hidden_state}

    def __call__(
        self, student: ClassifierOutput, teacher: Kept, batch: Batch, project: Projection
    ) -> WeightedSum:
        return cosine_loss(
            project(student.last_hidden_state),
            teacher["last_hidden_state"],
            batch.attention_mask,
            batch.weights,
        )
