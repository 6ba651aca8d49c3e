"""MiniLM's value-relation transfer on the last layer, with MiniLMv2's relation heads."""

import dataclasses
import math
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..._types import BatchTokenMask, BatchWeights
from ...batch import Batch
from ...errors import ConfigError
from ...models import AbstractSequenceClassifier, ClassifierOutput
from ..losses import WeightedSum, relation_kl
from ..term import AbstractTerm, Kept, Projection


def _relations(
    values: Float[Array, "batch pairs seq hidden"], heads: int
) -> Float[Array, "batch pairs heads seq seq"]:
    """``V V^T / sqrt(d)`` of each relation head, ``d = hidden / heads``."""
    batch, pairs, seq, hidden = values.shape
    d = hidden // heads
    v = values.astype(jnp.float32).reshape(batch, pairs, seq, heads, d)
    return jnp.einsum("bpqhd,bpkhd->bphqk", v, v) / math.sqrt(d)


def value_relation_loss(
    student_values: Float[Array, "batch pairs seq s_hidden"],
    teacher_values: Float[Array, "batch pairs seq t_hidden"],
    attention_mask: BatchTokenMask,
    weights: BatchWeights,
    *,
    relation_heads: int,
) -> WeightedSum:
    """MiniLM's value-relation transfer: ``KL(VR_T || VR_S)``, ``VR = softmax(V V^T / sqrt(d))`` over real keys.

    Arguments:
        student_values: ``(batch, pairs, seq, hidden)``, the attention values with the heads side by side.
        teacher_values: ``(batch, pairs, seq, t_hidden)``; the width may differ from the student's.
        attention_mask: ``(batch, seq)``, ``True`` for real tokens.
        weights: ``(batch,)``, 1 for real rows and 0 for padding rows.
        relation_heads: how many heads both models' values are split into; must divide both widths.

    Returns:
        float32 sum of the KL over the selected (pair, relation head, query) entries, and their count.
    """
    for name, values in (("student", student_values), ("teacher", teacher_values)):
        _check_divides(relation_heads, name, values.shape[-1])
    return relation_kl(
        _relations(student_values, relation_heads),
        _relations(teacher_values, relation_heads),
        attention_mask,
        weights,
    )


def _check_divides(relation_heads: int, name: str, width: int) -> None:
    if relation_heads < 1 or width % relation_heads != 0:
        raise ConfigError(
            f"relation_heads={relation_heads} must be a positive divisor of the {name}'s width {width}"
        )


class ValueRelation(AbstractTerm):
    """``weight * KL(VR_T || VR_S)`` between the last layers' value relations (Wang et al. 2020, eq. 6).

    Both models' values (heads side by side) are split into ``relation_heads`` heads of their own width,
    MiniLMv2's relation heads (Wang et al. 2021), so the head counts and widths of the two models may differ;
    with ``relation_heads`` equal to both models' head count this is MiniLM (v1) exactly, and ``null`` takes the
    teacher's head count. Reduction as the attention KL: the mean over relation heads and real queries.
    """

    name: ClassVar[str] = "value_relation"
    title: ClassVar[str] = "value-relation KL"
    outputs: ClassVar[tuple[str, ...]] = ("output_values",)
    shorthand: ClassVar[dict[str, str]] = {
        "alpha_value_relation": "weight",
        "relation_heads": "relation_heads",
    }

    weight: float = eqx.field(static=True, default=1.0)
    relation_heads: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.relation_heads is not None and self.relation_heads < 1:
            raise ConfigError(
                f"relation_heads={self.relation_heads} is invalid; expected null (the teacher's head count) or an "
                "int >= 1"
            )

    def bind(
        self, student: AbstractSequenceClassifier, teacher: AbstractSequenceClassifier
    ) -> "ValueRelation":
        heads = teacher.num_heads if self.relation_heads is None else self.relation_heads
        for name, model in (("student", student), ("teacher", teacher)):
            if model.hidden_size % heads:
                raise ConfigError(
                    f"relation_heads={heads} does not divide the {name}'s hidden size {model.hidden_size}; pick a "
                    f"common divisor of {student.hidden_size} and {teacher.hidden_size}"
                )
        return dataclasses.replace(self, relation_heads=heads)

    def keep(self, teacher: ClassifierOutput) -> Kept:
        return {"last_values": teacher.values[:, -1:]}

    def __call__(
        self, student: ClassifierOutput, teacher: Kept, batch: Batch, project: Projection
    ) -> WeightedSum:
        if self.relation_heads is None:
            raise ValueError(
                "the value_relation term's relation_heads is unset: bind the term to the two models"
            )
        return value_relation_loss(
            student.values[:, -1:],
            teacher["last_values"],
            batch.attention_mask,
            batch.weights,
            relation_heads=self.relation_heads,
        )

    def describe(self) -> str:
        return f"{self.title} {self.weight} ({self.relation_heads} relation heads)"
