"""The training objective: which loss terms a run uses, what the models must return for them, and how each term
is read off the models' outputs.

``LossConfig`` is a static argument of the jitted step: a term with weight 0 is not traced, and the models return
no stack that no term reads, so the plain recipe's step is the same program it was before these losses existed.
"""

import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .data import Batch
from .layer_losses import (
    attention_kl_loss,
    attention_score_loss,
    hidden_cosine_loss,
    hidden_mse_loss,
    value_relation_loss,
)
from .layer_map import LayerMap, attention_pairs
from .losses import TERM_ALPHAS, WeightedSum, distillation_terms
from .models import ClassifierOutput
from .models.layers import dense

HIDDEN_LOSSES = ("mse", "cosine")

# Each term's metrics.jsonl name and the LossConfig field that weighs it.
TERM_WEIGHTS = {
    **TERM_ALPHAS,
    "loss_hidden": "alpha_hidden",
    "loss_attention_scores": "alpha_attention_scores",
    "loss_attention_kl": "alpha_attention_kl",
    "loss_value_relation": "alpha_value_relation",
}
# TinyBERT's second stage: the prediction layer's losses alone.
PREDICTION_TERMS = ("loss_ce", "loss_kl")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms and the settings they need; ``alpha_kl = alpha_cos = 0`` (and every layer loss
    0) is plain fine-tuning, which needs no teacher.

    ``layer_map`` holds the resolved ``(student, teacher)`` hidden-state pairs of the hidden-state and
    attention-score losses (``layer_map.uniform_layer_map`` or a checked explicit map); MiniLM's two losses
    always match the last layers. ``relation_heads`` is the value relation's head count (the experiment sets the
    teacher's).
    """

    temperature: float = 2.0
    alpha_ce: float = 1.0
    alpha_kl: float = 0.45
    alpha_cos: float = 0.1
    alpha_hidden: float = 0.0
    hidden_loss: str = "mse"
    alpha_attention_scores: float = 0.0
    alpha_attention_kl: float = 0.0
    alpha_value_relation: float = 0.0
    layer_map: LayerMap = ()
    relation_heads: int | None = None

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        negative = {name: a for name, a in self.alphas.items() if a < 0}
        if negative:
            raise ValueError(f"loss weights must be non-negative, got {negative}")
        if not any(a > 0 for a in self.alphas.values()):
            raise ValueError(f"at least one loss weight must be positive, got {self.alphas}")
        if self.hidden_loss not in HIDDEN_LOSSES:
            raise ValueError(f"hidden_loss={self.hidden_loss!r}; expected one of {HIDDEN_LOSSES}")
        if (self.alpha_hidden > 0 or self.alpha_attention_scores > 0) and not self.layer_map:
            raise ValueError("alpha_hidden or alpha_attention_scores is positive but the layer map is empty")
        if self.alpha_value_relation > 0 and (self.relation_heads is None or self.relation_heads < 1):
            raise ValueError(
                f"alpha_value_relation is positive, which needs relation_heads >= 1 (e.g. the teacher's head "
                f"count), got {self.relation_heads}"
            )
        if self.alpha_attention_scores > 0 and not attention_pairs(self.layer_map):
            raise ValueError(
                f"alpha_attention_scores is positive but the layer map {list(self.layer_map)} pairs no layers "
                "(only embeddings, state 0, which have no attention)"
            )

    @property
    def alphas(self) -> dict[str, float]:
        return {field: getattr(self, field) for field in TERM_WEIGHTS.values()}

    @property
    def term_weights(self) -> dict[str, float]:
        """Each term's weight, keyed by its metrics name."""
        return {name: getattr(self, field) for name, field in TERM_WEIGHTS.items()}

    @property
    def terms(self) -> tuple[str, ...]:
        """The names of the terms with a positive weight, the only ones computed."""
        return tuple(name for name, field in TERM_WEIGHTS.items() if getattr(self, field) > 0)

    @property
    def needs_teacher(self) -> bool:
        return any(name != "loss_ce" for name in self.terms)

    @property
    def compares_hidden_states(self) -> bool:
        """Whether a term compares student and teacher hidden states (and so needs equal widths or a projection)."""
        return self.alpha_cos > 0 or self.alpha_hidden > 0

    def outputs(self) -> dict[str, bool]:
        """The ``output_*`` flags both models are called with: a stack is returned only when a term reads it."""
        return {
            "output_hidden_states": self.alpha_hidden > 0,
            "output_attention_scores": self.alpha_attention_scores > 0 or self.alpha_attention_kl > 0,
            "output_values": self.alpha_value_relation > 0,
        }

    @property
    def teacher_fields(self) -> tuple[str, ...]:
        """The `TeacherTargets` fields the terms read: none without a teacher, else the logits and what else the
        positive terms compare."""
        if not self.needs_teacher:
            return ()
        wanted = {
            "logits": True,
            "last_hidden_state": self.alpha_cos > 0,
            "hidden_states": self.alpha_hidden > 0,
            "attention_scores": self.alpha_attention_scores > 0,
            "last_attention_scores": self.alpha_attention_kl > 0,
            "last_values": self.alpha_value_relation > 0,
        }
        return tuple(name for name in TeacherTargets._fields if wanted[name])

    def without(self, terms: tuple[str, ...]) -> "LossConfig":
        """This config with the named terms' weights set to 0 (a stage of a two-stage run)."""
        return dataclasses.replace(self, **{TERM_WEIGHTS[name]: 0.0 for name in terms})

    def prediction_stage(self) -> "LossConfig":
        """TinyBERT's second stage: only the prediction-layer terms (CE and KL on the logits)."""
        return self.without(tuple(t for t in TERM_WEIGHTS if t not in PREDICTION_TERMS))

    def intermediate_stage(self) -> "LossConfig":
        """TinyBERT's first stage: every term but the prediction layer's."""
        return self.without(PREDICTION_TERMS)


class TeacherTargets(NamedTuple):
    """What the losses read of the teacher, for a batch: exactly the fields ``LossConfig.teacher_fields`` names
    (the others ``None``), with the layers the terms match and no others.

    The train step computes them from the teacher's forward (`teacher_targets`), or takes them from the
    teacher-output cache (``teacher_cache.py``); the losses cannot tell which.
    """

    logits: Float[Array, "batch classes"] | None = None
    last_hidden_state: Float[Array, "batch seq hidden"] | None = None
    # The hidden states of the layer map's teacher side, in the map's order.
    hidden_states: Float[Array, "batch pairs seq hidden"] | None = None
    # The pre-softmax scores of `attention_pairs(layer_map)`'s teacher layers, in that order.
    attention_scores: Float[Array, "batch pairs heads seq seq"] | None = None
    # The last layer's scores and values (MiniLM's losses).
    last_attention_scores: Float[Array, "batch 1 heads seq seq"] | None = None
    last_values: Float[Array, "batch 1 seq hidden"] | None = None


def teacher_targets(teacher: ClassifierOutput, losses: LossConfig) -> TeacherTargets:
    """The teacher's batched outputs reduced to what ``losses`` read (see `TeacherTargets`)."""
    fields = losses.teacher_fields
    pick = {
        "logits": lambda: teacher.logits,
        "last_hidden_state": lambda: teacher.last_hidden_state,
        "hidden_states": lambda: teacher.hidden_states[:, jnp.array([t for _, t in losses.layer_map])],
        "attention_scores": lambda: teacher.attention_scores[
            :, jnp.array([t for _, t in attention_pairs(losses.layer_map)])
        ],
        "last_attention_scores": lambda: teacher.attention_scores[:, -1:],
        "last_values": lambda: teacher.values[:, -1:],
    }
    return TeacherTargets(**{name: pick[name]() for name in fields})


def project(projection: eqx.nn.Linear | None, states: Float[Array, "*batch s_hidden"]) -> Float[Array, "*batch t_hidden"]:
    """The student's hidden states mapped to the teacher's width by the learned ``W_h`` (identity when ``None``)."""
    if projection is None:
        return states
    flat = states.reshape(-1, states.shape[-1])
    return dense(projection, flat.astype(jnp.float32)).reshape(*states.shape[:-1], -1)


def loss_terms(
    student: ClassifierOutput,
    teacher: TeacherTargets | None,
    projection: eqx.nn.Linear | None,
    batch: Batch,
    losses: LossConfig,
) -> dict[str, WeightedSum]:
    """The ``WeightedSum`` of every term with a positive weight, keyed by its metrics name.

    Arguments:
        student: the student's batched outputs, with the stacks ``losses.outputs()`` asks for.
        teacher: what the terms read of the teacher (`teacher_targets`, gradients already stopped, or the
            cache's), or ``None`` when only ``loss_ce`` is on.
        projection: ``W_h`` from the student's width to the teacher's, or ``None`` when the widths are equal.
        batch: the labels, attention mask and row weights.
        losses: the terms' weights and settings.
    """
    if losses.needs_teacher and teacher is None:
        raise ValueError(f"the terms {losses.terms} need the teacher's outputs, but none were given")
    mask, weights = batch.attention_mask, batch.weights
    terms = distillation_terms(
        student.logits,
        None if teacher is None else teacher.logits,
        project(projection, student.last_hidden_state) if losses.alpha_cos > 0 else None,
        teacher.last_hidden_state if losses.alpha_cos > 0 else None,
        batch.labels,
        mask,
        weights,
        temperature=losses.temperature,
        alpha_ce=losses.alpha_ce,
        alpha_kl=losses.alpha_kl,
        alpha_cos=losses.alpha_cos,
    )
    if losses.alpha_hidden > 0:
        s_idx = jnp.array([s for s, _ in losses.layer_map])
        hidden = hidden_mse_loss if losses.hidden_loss == "mse" else hidden_cosine_loss
        terms["loss_hidden"] = hidden(
            project(projection, student.hidden_states[:, s_idx]), teacher.hidden_states, mask, weights
        )
    if losses.alpha_attention_scores > 0:
        pairs = attention_pairs(losses.layer_map)
        s_idx = jnp.array([s for s, _ in pairs])
        terms["loss_attention_scores"] = attention_score_loss(
            student.attention_scores[:, s_idx], teacher.attention_scores, mask, weights
        )
    if losses.alpha_attention_kl > 0:
        terms["loss_attention_kl"] = attention_kl_loss(
            student.attention_scores[:, -1:], teacher.last_attention_scores, mask, weights
        )
    if losses.alpha_value_relation > 0:
        terms["loss_value_relation"] = value_relation_loss(
            student.values[:, -1:], teacher.last_values, mask, weights, relation_heads=losses.relation_heads
        )
    return terms
