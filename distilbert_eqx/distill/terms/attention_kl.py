"""MiniLM's self-attention distribution transfer on the last layer."""

from typing import ClassVar

import equinox as eqx
from jaxtyping import Array, Float

from ..._types import BatchTokenMask, BatchWeights
from ...batch import Batch
from ...models import AbstractSequenceClassifier, ClassifierOutput
from ..losses import WeightedSum, relation_kl
from ..term import AbstractTerm, Kept, Projection
from .attention_scores import check_heads


def attention_kl_loss(
    student_scores: Float[Array, "batch pairs heads seq seq"],
    teacher_scores: Float[Array, "batch pairs heads seq seq"],
    attention_mask: BatchTokenMask,
    weights: BatchWeights,
) -> WeightedSum:
    """MiniLM's self-attention distribution transfer: ``KL(A_T || A_S)`` per head and real query, the
    distributions being the softmax over the real keys of the unmasked pre-softmax ``(batch, pairs, heads, seq,
    seq)`` scores (arguments as :func:`.attention_scores.attention_score_loss`).

    Returns:
        float32 sum of the KL over the selected (pair, head, query) entries, and their count.
    """
    return relation_kl(student_scores, teacher_scores, attention_mask, weights)


class AttentionKL(AbstractTerm):
    """``weight * KL(A_T || A_S)`` between the last layers' attention distributions (Wang et al. 2020, eq. 4-5).

    Reduction: the mean over heads and real queries of real rows, each query's KL summed over the real keys (the
    paper's ``1 / (A_h |x|)`` times the sum). MiniLM's softmax runs over every key; here masked keys take no
    probability, which only differs where a sentence is padded.
    """

    name: ClassVar[str] = "attention_kl"
    title: ClassVar[str] = "attention KL"
    outputs: ClassVar[tuple[str, ...]] = ("output_attention_scores",)
    shorthand: ClassVar[dict[str, str]] = {"alpha_attention_kl": "weight"}

    weight: float = eqx.field(static=True, default=1.0)

    def bind(self, student: AbstractSequenceClassifier, teacher: AbstractSequenceClassifier) -> "AttentionKL":
        check_heads(student, teacher, self.name)
        return self

    def keep(self, teacher: ClassifierOutput) -> Kept:
        return {"last_attention_scores": teacher.attention_scores[:, -1:]}

    def __call__(
        self, student: ClassifierOutput, teacher: Kept, batch: Batch, project: Projection
    ) -> WeightedSum:
        return attention_kl_loss(
            student.attention_scores[:, -1:],
            teacher["last_attention_scores"],
            batch.attention_mask,
            batch.weights,
        )
