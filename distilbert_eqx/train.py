"""Optimizer, train step and eval step: one ``eqx.filter_jit`` region each.

The teacher is an ordinary argument of the step: never donated, never in the optimizer state, never
differentiated (its forward runs outside ``value_and_grad`` under ``stop_gradient``), and never a static field, so
its weights are inputs of the compiled program rather than constants baked into it.

The step bodies take an optional ``axis_name``: ``parallel.py`` runs the very same bodies inside ``jax.shard_map``,
and the bodies are where the sums that normalise a loss or a metric are summed across devices, in one ``psum``
each (the losses themselves return sums and know nothing of devices).
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from .data import Batch
from .losses import distillation_terms, weighted_total
from .models import AbstractSequenceClassifier, ClassifierOutput


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms; ``alpha_kl = alpha_cos = 0`` is plain fine-tuning (no teacher needed)."""

    temperature: float = 2.0
    alpha_ce: float = 1.0
    alpha_kl: float = 0.45
    alpha_cos: float = 0.1

    @property
    def alphas(self) -> dict[str, float]:
        return {"alpha_ce": self.alpha_ce, "alpha_kl": self.alpha_kl, "alpha_cos": self.alpha_cos}

    @property
    def needs_teacher(self) -> bool:
        return self.alpha_kl > 0 or self.alpha_cos > 0


class TrainState(eqx.Module):
    """Everything that changes during training (the teacher does not, so it is not here)."""

    student: AbstractSequenceClassifier
    opt_state: PyTree
    step: Int[Array, ""]
    key: PRNGKeyArray


class StepMetrics(NamedTuple):
    loss: Float[Array, ""]
    loss_ce: Float[Array, ""]
    loss_kl: Float[Array, ""]
    loss_cos: Float[Array, ""]
    grad_norm: Float[Array, ""]


def decay_mask(params: PyTree) -> PyTree:
    """Weight decay on weight matrices and embedding tables only, not on biases or LayerNorms (BERT convention)."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale the gradients by ``min(1, max_norm / norm)``, ``norm`` their global L2 norm (no state).

    ``optax.clip_by_global_norm`` does the same up to rounding, but divides every element by the norm, and XLA
    will not copy a divide into the several AdamW fusions that read each gradient: the clipped gradients were
    written out in a pass of their own over every parameter, the whole word embedding included (see
    docs/performance.md). Here the factor is one scalar, and the multiply fuses into AdamW's moment updates.
    This is also ``torch.nn.utils.clip_grad_norm_``'s form (less its 1e-6).
    """

    def update(
        updates: PyTree, state: optax.EmptyState, params: PyTree | None = None
    ) -> tuple[PyTree, optax.EmptyState]:
        del params
        norm = optax.tree.norm(updates)
        scale = jnp.minimum(1.0, max_norm / norm)  # 1 when norm is 0 (max_norm / 0 = inf)
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(
    learning_rate: float,
    weight_decay: float,
    warmup_ratio: float,
    total_steps: int,
    max_grad_norm: float | None = 1.0,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warm-up over ``warmup_ratio`` of the steps, then linear decay to 0, and gradient clipping
    to ``max_grad_norm`` (``None``: no clipping).

    Returns the optimizer and its learning-rate schedule (for logging).
    """
    warmup = int(warmup_ratio * total_steps)
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, learning_rate, max(warmup, 1)),
            optax.linear_schedule(learning_rate, 0.0, max(total_steps - warmup, 1)),
        ],
        [warmup],
    )
    optimizer = optax.chain(
        optax.identity() if max_grad_norm is None else clip_by_global_norm(max_grad_norm),
        optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay, mask=decay_mask),
    )
    return optimizer, schedule


def init_state(
    student: AbstractSequenceClassifier, optimizer: optax.GradientTransformation, *, key: PRNGKeyArray
) -> TrainState:
    """Fresh optimizer state over the student's float arrays, step 0."""
    opt_state = optimizer.init(eqx.filter(student, eqx.is_inexact_array))
    return TrainState(student, opt_state, jnp.zeros((), jnp.int32), key)


def forward(
    model: AbstractSequenceClassifier,
    batch: Batch,
    *,
    key: PRNGKeyArray | None,
    output_hidden_states: bool = False,
) -> ClassifierOutput:
    """Run a classifier over a batch; token types go only to a model that takes them (DistilBERT has none)."""
    keys = None if key is None else jax.random.split(key, batch.input_ids.shape[0])
    types = batch.token_type_ids if model.takes_token_types else None

    def one(ids, mask, types, k):
        return model(ids, mask, types, key=k, output_hidden_states=output_hidden_states)

    return jax.vmap(one)(batch.input_ids, batch.attention_mask, types, keys)


def train_step_body(
    teacher: AbstractSequenceClassifier | None,
    state: TrainState,
    batch: Batch,
    optimizer: optax.GradientTransformation,
    losses: LossConfig,
    axis_name: str | None = None,
) -> tuple[TrainState, StepMetrics]:
    """One optimizer step on one (local) batch. See ``train_step`` for the jitted single-device version."""
    key, step_key = jax.random.split(state.key)
    if axis_name is not None:
        # Each device draws its own dropout masks.
        step_key = jax.random.fold_in(step_key, jax.lax.axis_index(axis_name))
    use_hidden = losses.alpha_cos > 0
    teacher_out = None
    if losses.needs_teacher:
        teacher_out = jax.lax.stop_gradient(forward(teacher, batch, key=None))

    params, static = eqx.partition(state.student, eqx.is_inexact_array)

    def loss_fn(params):
        student = eqx.combine(params, static)
        out = forward(student, batch, key=step_key)
        terms = distillation_terms(
            out.logits,
            None if teacher_out is None else teacher_out.logits,
            out.last_hidden_state if use_hidden else None,
            teacher_out.last_hidden_state if use_hidden else None,
            batch.labels,
            batch.attention_mask,
            batch.weights,
            temperature=losses.temperature,
            **losses.alphas,
        )
        if axis_name is not None:
            # The global batch's sums, before any mean: each device's loss (and so its gradient) is the
            # global batch's, also when its own rows are all padding.
            terms = jax.lax.psum(terms, axis_name)
        return weighted_total(terms, **losses.alphas)

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    # optax computes e.g. `b1 ** count` (float ** int32), which strict dtype promotion (our test setting) rejects.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
    student = eqx.apply_updates(state.student, updates)
    zero = jnp.zeros((), jnp.float32)
    metrics = StepMetrics(
        loss,
        parts.get("loss_ce", zero),
        parts.get("loss_kl", zero),
        parts.get("loss_cos", zero),
        optax.tree.norm(grads),
    )
    return TrainState(student, opt_state, state.step + 1, key), metrics


@eqx.filter_jit(donate="all-except-first")
# Counts compilations (max_traces=None never raises): tests assert one trace per batch shape.
@eqx.debug.assert_max_traces(max_traces=None)
def train_step(
    teacher: AbstractSequenceClassifier | None,
    state: TrainState,
    batch: Batch,
    optimizer: optax.GradientTransformation,
    losses: LossConfig,
) -> tuple[TrainState, StepMetrics]:
    """One jitted optimizer step on one device; the state is donated, the teacher (first argument) is not."""
    return train_step_body(teacher, state, batch, optimizer, losses)


class EvalCounts(NamedTuple):
    correct: Float[Array, ""]
    total: Float[Array, ""]


def eval_step_body(model: AbstractSequenceClassifier, batch: Batch, axis_name: str | None = None) -> tuple[EvalCounts, Any]:
    """Weighted count of correct predictions (padding rows weigh 0), and the logits."""
    logits = forward(model, batch, key=None).logits
    correct = jnp.sum(jnp.where(jnp.argmax(logits, axis=-1) == batch.labels, batch.weights, 0.0))
    counts = EvalCounts(correct, jnp.sum(batch.weights))
    if axis_name is not None:
        counts = jax.lax.psum(counts, axis_name)
    return counts, logits


@eqx.filter_jit
def eval_step(model: AbstractSequenceClassifier, batch: Batch) -> tuple[EvalCounts, Any]:
    """Jitted single-device evaluation of one batch; ``model`` must be in inference mode."""
    return eval_step_body(model, batch)


@dataclasses.dataclass(frozen=True)
class Steps:
    """How to run one step: on one device (``single_device_steps``), or sharded over a mesh
    (``parallel.sharded_steps``). The fit loop runs whichever it is given.

    ``place`` moves a host batch to the devices (and, on several hosts, takes this process's rows);
    ``place_state`` puts the model or train state where the steps expect it (replicated on a mesh);
    ``is_writer`` says whether this process writes checkpoints, logs and models (process 0 of several).
    """

    train: Callable[[AbstractSequenceClassifier | None, TrainState, Batch], tuple[TrainState, StepMetrics]]
    evaluate: Callable[[AbstractSequenceClassifier, Batch], tuple[EvalCounts, Any]]
    place: Callable[[Batch], Batch]
    place_state: Callable[[Any], Any]
    is_writer: bool = True


def single_device_steps(losses: LossConfig, optimizer: optax.GradientTransformation) -> Steps:
    """The jitted single-device steps."""

    def train(teacher, state, batch):
        return train_step(teacher, state, batch, optimizer, losses)

    return Steps(train, eval_step, place=lambda b: b, place_state=lambda s: s)
