"""TinyBERT's hidden-state loss (and DistilBERT's cosine on every matched layer): the student's states of the
mapped layers against the teacher's, through the learned ``W_h`` when the widths differ."""

import dataclasses
from typing import ClassVar, Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..._types import BatchTokenMask, BatchWeights
from ...batch import Batch
from ...errors import ConfigError
from ...models import AbstractSequenceClassifier, ClassifierOutput
from ..layer_map import LayerMapSetting, describe_layer_map, resolve_layer_map, resolved
from ..losses import WeightedSum, check_widths, cosine_distance, token_weights, weighted_sum
from ..term import AbstractTerm, Kept, Projection

StudentStates = Float[Array, "batch pairs seq s_hidden"]
TeacherStates = Float[Array, "batch pairs seq t_hidden"]
DISTANCES = ("mse", "cosine")


def _token_weights(attention_mask: BatchTokenMask, weights: BatchWeights, shape: tuple[int, ...]) -> Array:
    """The real tokens of real rows, broadcast over the matched layers."""
    return jnp.broadcast_to(token_weights(attention_mask, weights)[:, None, :], shape)


def hidden_mse_loss(
    student_states: StudentStates,
    teacher_states: TeacherStates,
    attention_mask: BatchTokenMask,
    weights: BatchWeights,
) -> WeightedSum:
    """Mean squared error over the hidden axis, per real token and matched layer (TinyBERT's ``L_hidn``).

    Arguments:
        student_states: ``(batch, pairs, seq, hidden)``, already projected to the teacher's width.
        teacher_states: ``(batch, pairs, seq, hidden)``, the targets.
        attention_mask: ``(batch, seq)``, ``True`` for real tokens.
        weights: ``(batch,)``, 1 for real rows and 0 for padding rows.

    Returns:
        float32 sum of the per-token MSE over the selected tokens of every pair, and their count.
    """
    check_widths(student_states, teacher_states, "hidden-state MSE")
    diff = student_states.astype(jnp.float32) - teacher_states.astype(jnp.float32)
    per_token = jnp.mean(diff * diff, axis=-1)
    return weighted_sum(per_token, _token_weights(attention_mask, weights, per_token.shape))


def hidden_cosine_loss(
    student_states: StudentStates,
    teacher_states: TeacherStates,
    attention_mask: BatchTokenMask,
    weights: BatchWeights,
) -> WeightedSum:
    """``1 - cos(student, teacher)`` per real token and matched layer (DistilBERT's cosine, on every pair).

    Arguments and returns as :func:`hidden_mse_loss`.
    """
    check_widths(student_states, teacher_states, "hidden-state cosine")
    per_token = cosine_distance(student_states, teacher_states)
    return weighted_sum(per_token, _token_weights(attention_mask, weights, per_token.shape))


class Hidden(AbstractTerm):
    """``weight * distance(h_S W_h, h_T)`` over the layer map's pairs of hidden states (index 0: embeddings).

    Reduction: the per-token MSE (mean over the hidden axis) or ``1 - cos``, averaged over every real token of
    every real row *and over the matched layers*: each layer weighs ``1 / pairs``. TinyBERT (Jiao et al. 2020,
    eq. 8-11, and its ``task_distill.py``) *sums* the layers' MSEs, each a mean over all positions, padding
    included; ``reduction: sum`` takes its sum over layers (so its weight 1 is the paper's weight 1), still over
    real tokens only.
    """

    name: ClassVar[str] = "hidden"
    title: ClassVar[str] = "hidden-state"
    outputs: ClassVar[tuple[str, ...]] = ("output_hidden_states",)
    projects_student: ClassVar[bool] = True
    shorthand: ClassVar[dict[str, str]] = {
        "alpha_hidden": "weight",
        "hidden_loss": "distance",
        "layer_map": "layer_map",
    }

    weight: float = eqx.field(static=True, default=1.0)
    distance: Literal["mse", "cosine"] = eqx.field(static=True, default="mse")
    layer_map: LayerMapSetting = eqx.field(static=True, default="uniform")
    reduction: Literal["mean", "sum"] = eqx.field(static=True, default="mean")

    def __check_init__(self):
        if self.distance not in DISTANCES:
            raise ConfigError(f"hidden_loss={self.distance!r} is invalid; expected one of {DISTANCES}")
        if self.reduction not in ("mean", "sum"):
            raise ConfigError(f"hidden: reduction={self.reduction!r} is invalid; expected mean or sum")

    def bind(self, student: AbstractSequenceClassifier, teacher: AbstractSequenceClassifier) -> "Hidden":
        pairs = resolve_layer_map(self.layer_map, student.num_layers, teacher.num_layers)
        return dataclasses.replace(self, layer_map=pairs)

    def keep(self, teacher: ClassifierOutput) -> Kept:
        pairs = resolved(self.layer_map, self.name)
        return {"hidden_states": teacher.hidden_states[:, jnp.array([t for _, t in pairs])]}

    def __call__(
        self, student: ClassifierOutput, teacher: Kept, batch: Batch, project: Projection
    ) -> WeightedSum:
        pairs = resolved(self.layer_map, self.name)
        states = project(student.hidden_states[:, jnp.array([s for s, _ in pairs])])
        loss = hidden_mse_loss if self.distance == "mse" else hidden_cosine_loss
        sums = loss(states, teacher["hidden_states"], batch.attention_mask, batch.weights)
        return sums if self.reduction == "mean" else WeightedSum(len(pairs) * sums.total, sums.weight)

    def describe(self) -> str:
        reduction = "" if self.reduction == "mean" else ", summed over layers"
        return f"{self.title} {self.distance} {self.weight} (layers {describe_layer_map(self.layer_map)}{reduction})"
