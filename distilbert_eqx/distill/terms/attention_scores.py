"""TinyBERT's attention loss: MSE between the pre-softmax attention scores of matched layers, head by head."""

import dataclasses
from typing import ClassVar, Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..._types import BatchTokenMask, BatchWeights
from ...batch import Batch
from ...errors import ConfigError
from ...models import AbstractSequenceClassifier, ClassifierOutput
from ..layer_map import (
    LayerMap,
    LayerMapSetting,
    attention_pairs,
    describe_layer_map,
    resolve_layer_map,
    resolved,
)
from ..losses import WeightedSum, weighted_sum
from ..term import AbstractTerm, Kept, Projection


def check_heads(student: AbstractSequenceClassifier, teacher: AbstractSequenceClassifier, term: str) -> None:
    """The attention terms compare heads one to one."""
    if student.num_heads != teacher.num_heads:
        raise ConfigError(
            f"the {term} term compares attention heads one to one, but the student has {student.num_heads} heads "
            f"and the teacher {teacher.num_heads}; drop the term or set student_num_heads={teacher.num_heads} "
            "(the value relation, value_relation / alpha_value_relation, takes any head counts through "
            "relation_heads)"
        )


def _pair_weights(attention_mask: BatchTokenMask, weights: BatchWeights) -> Float[Array, "batch 1 1 seq seq"]:
    """1 for the real (query, key) pairs of real rows, 0 elsewhere, broadcastable over the layers and heads."""
    tokens = attention_mask & (weights > 0)[:, None]
    return (tokens[:, :, None] & tokens[:, None, :])[:, None, None].astype(jnp.float32)


def attention_score_loss(
    student_scores: Float[Array, "batch pairs heads seq seq"],
    teacher_scores: Float[Array, "batch pairs heads seq seq"],
    attention_mask: BatchTokenMask,
    weights: BatchWeights,
) -> WeightedSum:
    """MSE between pre-softmax attention scores, per head, over real query and key positions (TinyBERT's ``L_attn``).

    Arguments:
        student_scores: ``(batch, pairs, heads, seq, seq)`` (query, key), unmasked.
        teacher_scores: the same shape.
        attention_mask: ``(batch, seq)``, ``True`` for real tokens.
        weights: ``(batch,)``, 1 for real rows and 0 for padding rows.

    Returns:
        float32 sum of squared differences over the selected (pair, head, query, key) entries, and their count.
    """
    diff = student_scores.astype(jnp.float32) - teacher_scores.astype(jnp.float32)
    selected = jnp.broadcast_to(_pair_weights(attention_mask, weights), diff.shape)
    return weighted_sum(diff * diff, selected)


class AttentionScores(AbstractTerm):
    """``weight * MSE`` of the scores ``q k^T / sqrt(d)`` of each head, over the layer map's pairs of *layers*
    (pairs with both states >= 1: the attention inside the layer whose output is state ``s``).

    Reduction: the mean over real (query, key) pairs of real rows, heads and matched layers (each layer weighs
    ``1 / pairs``). TinyBERT (eq. 7 and ``task_distill.py``) sums the layers' MSEs, each a mean over every
    position, with masked scores zeroed and still counted; ``reduction: sum`` takes its sum over layers, over
    real positions only.
    """

    name: ClassVar[str] = "attention_scores"
    title: ClassVar[str] = "attention-score MSE"
    outputs: ClassVar[tuple[str, ...]] = ("output_attention_scores",)
    shorthand: ClassVar[dict[str, str]] = {"alpha_attention_scores": "weight", "layer_map": "layer_map"}

    weight: float = eqx.field(static=True, default=1.0)
    layer_map: LayerMapSetting = eqx.field(static=True, default="uniform")
    reduction: Literal["mean", "sum"] = eqx.field(static=True, default="mean")

    def __check_init__(self):
        if self.reduction not in ("mean", "sum"):
            raise ConfigError(
                f"attention_scores: reduction={self.reduction!r} is invalid; expected mean or sum"
            )

    def bind(
        self, student: AbstractSequenceClassifier, teacher: AbstractSequenceClassifier
    ) -> "AttentionScores":
        pairs = resolve_layer_map(self.layer_map, student.num_layers, teacher.num_layers)
        if not attention_pairs(pairs):
            raise ConfigError(
                f"attention_scores: the layer map {[list(p) for p in pairs]} pairs no layers (only embeddings, "
                "state 0, which have no attention)"
            )
        check_heads(student, teacher, self.name)
        return dataclasses.replace(self, layer_map=pairs)

    def _layers(self) -> LayerMap:
        return attention_pairs(resolved(self.layer_map, self.name))

    def keep(self, teacher: ClassifierOutput) -> Kept:
        return {"attention_scores": teacher.attention_scores[:, jnp.array([t for _, t in self._layers()])]}

    def __call__(
        self, student: ClassifierOutput, teacher: Kept, batch: Batch, project: Projection
    ) -> WeightedSum:
        layers = self._layers()
        scores = student.attention_scores[:, jnp.array([s for s, _ in layers])]
        sums = attention_score_loss(scores, teacher["attention_scores"], batch.attention_mask, batch.weights)
        return sums if self.reduction == "mean" else WeightedSum(len(layers) * sums.total, sums.weight)

    def describe(self) -> str:
        reduction = "" if self.reduction == "mean" else ", summed over layers"
        return f"{self.title} {self.weight} (layers {describe_layer_map(self.layer_map)}{reduction})"
