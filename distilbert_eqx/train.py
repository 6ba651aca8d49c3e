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
from jaxtyping import Array, Float, Int, Key, PRNGKeyArray, PyTree

from .batch import Batch, PackedRows
from .distill.objective import Objective
from .models import AbstractSequenceClassifier, ClassifierOutput


class TrainState(eqx.Module):
    """Everything that changes during training (the teacher does not, so it is not here).

    ``projection`` is TinyBERT's ``W_h``, the learned map from the student's hidden width to the teacher's that
    the hidden-state losses compare through (``None`` when they need none). It is trained and checkpointed with
    the student, and is not part of the saved student.
    """

    student: AbstractSequenceClassifier
    opt_state: PyTree
    step: Int[Array, ""]
    key: PRNGKeyArray
    projection: eqx.nn.Linear | None = None

    @property
    def trainable(self) -> tuple[AbstractSequenceClassifier, eqx.nn.Linear | None]:
        """What the optimizer updates: the student and the projection."""
        return self.student, self.projection


class StepMetrics(NamedTuple):
    """The step's total loss, each computed term's mean (keyed by its metrics name) and the gradients' norm."""

    loss: Float[Array, ""]
    terms: dict[str, Float[Array, ""]]
    grad_norm: Float[Array, ""]

    def as_record(self) -> dict[str, float]:
        """Plain floats for metrics.jsonl: ``loss``, one key per term, ``grad_norm``."""
        return {
            "loss": float(self.loss),
            **{k: float(v) for k, v in self.terms.items()},
            "grad_norm": float(self.grad_norm),
        }


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


def warmup_decay_schedule(learning_rate: float, warmup_ratio: float, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 over ``warmup_ratio`` of ``total_steps``, then linear decay to 0."""
    warmup = int(warmup_ratio * total_steps)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, learning_rate, max(warmup, 1)),
            optax.linear_schedule(learning_rate, 0.0, max(total_steps - warmup, 1)),
        ],
        [warmup],
    )


def make_optimizer(
    learning_rate: float,
    weight_decay: float,
    warmup_ratio: float,
    total_steps: int,
    max_grad_norm: float | None = 1.0,
    first_stage_steps: int = 0,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warm-up over ``warmup_ratio`` of the steps, then linear decay to 0, and gradient clipping
    to ``max_grad_norm`` (``None``: no clipping).

    With ``first_stage_steps > 0`` (a two-stage run) each stage gets that schedule over its own steps, as two
    separate TinyBERT runs would; the AdamW moments carry over.

    Returns the optimizer and its learning-rate schedule (for logging).
    """
    if first_stage_steps:
        schedule = optax.join_schedules(
            [
                warmup_decay_schedule(learning_rate, warmup_ratio, first_stage_steps),
                warmup_decay_schedule(learning_rate, warmup_ratio, total_steps - first_stage_steps),
            ],
            [first_stage_steps],
        )
    else:
        schedule = warmup_decay_schedule(learning_rate, warmup_ratio, total_steps)
    optimizer = optax.chain(
        optax.identity() if max_grad_norm is None else clip_by_global_norm(max_grad_norm),
        optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay, mask=decay_mask),
    )
    return optimizer, schedule


def init_state(
    student: AbstractSequenceClassifier,
    optimizer: optax.GradientTransformation,
    *,
    key: PRNGKeyArray,
    projection: eqx.nn.Linear | None = None,
) -> TrainState:
    """Fresh optimizer state over the float arrays of the student (and of the projection, if any), step 0."""
    opt_state = optimizer.init(eqx.filter((student, projection), eqx.is_inexact_array))
    return TrainState(student, opt_state, jnp.zeros((), jnp.int32), key, projection)


def forward(
    model: AbstractSequenceClassifier,
    batch: Batch,
    *,
    key: PRNGKeyArray | None,
    row_keys: Key[Array, " rows"] | None = None,
    **outputs: bool,
) -> ClassifierOutput:
    """Run a classifier over a batch; token types go only to a model that takes them (DistilBERT has none).

    ``key`` is split into one dropout key per row, unless ``row_keys`` gives them. ``outputs`` are the model's
    ``output_*`` flags (``output_hidden_states=True``, ...).
    """
    keys = row_keys
    if keys is None and key is not None:
        keys = jax.random.split(key, batch.model_rows)
    if batch.packed is not None:
        return _forward_packed(model, batch.packed, keys, outputs)
    types = batch.token_type_ids if model.takes_token_types else None

    def one(ids, mask, types, k):
        return model(ids, mask, types, key=k, **outputs)

    return jax.vmap(one)(batch.input_ids, batch.attention_mask, types, keys)


def _forward_packed(
    model: AbstractSequenceClassifier,
    packed: PackedRows,
    keys: Key[Array, " rows"] | None,
    outputs: dict[str, bool],
) -> ClassifierOutput:
    """``forward`` on packed rows: one output per sentence, sentence ``r * slots + s`` from slot ``s`` of row
    ``r``, as the batch's one-to-a-row fields list them."""
    types = packed.token_type_ids if model.takes_token_types else None

    def row(ids, segments, positions, tokens, types, k):
        return model.classify_packed(ids, segments, positions, tokens, types, key=k, **outputs)

    per_row = jax.vmap(row)(
        packed.input_ids, packed.segment_ids, packed.position_ids, packed.sentence_tokens, types, keys
    )
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), per_row)


def row_dropout_keys(state_key: PRNGKeyArray, rows: int) -> Key[Array, " rows"]:
    """The step's dropout keys, one per row of the global batch. The sharded step draws them outside
    ``shard_map`` and splits them like the batch, so a row's mask does not depend on the device count."""
    _, step_key = jax.random.split(state_key)
    return jax.random.split(step_key, rows)


def train_step_body(
    teacher: AbstractSequenceClassifier | None,
    state: TrainState,
    batch: Batch,
    optimizer: optax.GradientTransformation,
    objective: Objective,
    axis_name: str | None = None,
    row_keys: Key[Array, " rows"] | None = None,
) -> tuple[TrainState, StepMetrics]:
    """One optimizer step on one (local) batch. See ``train_step`` for the jitted single-device version.

    ``row_keys``: this batch's rows' dropout keys (``row_dropout_keys`` of the global batch, sharded);
    ``None`` draws them here, for a batch that is the global batch. The teacher runs in inference mode
    whatever mode it is passed in (its dropout would need a key, and its targets would be noise)."""
    if teacher is not None:
        teacher = eqx.nn.inference_mode(teacher)
    key = jax.random.split(state.key)[0]
    if row_keys is None:
        row_keys = row_dropout_keys(state.key, batch.model_rows)
    outputs = objective.outputs()
    targets = batch.teacher  # the teacher-output cache's, if the run has one
    if objective.needs_teacher and targets is None:
        targets = jax.lax.stop_gradient(
            objective.teacher_targets(forward(teacher, batch, key=None, **outputs))
        )

    params, static = eqx.partition(state.trainable, eqx.is_inexact_array)

    def loss_fn(params):
        student, projection = eqx.combine(params, static)
        out = forward(student, batch, key=None, row_keys=row_keys, **outputs)
        terms = objective(out, targets, projection, batch)
        if axis_name is not None:
            # The global batch's sums, before any mean: each device's loss (and so its gradient) is the
            # global batch's, also when its own rows are all padding.
            terms = jax.lax.psum(terms, axis_name)
        return objective.total(terms)

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    # optax computes e.g. `b1 ** count` (float ** int32), which strict dtype promotion (our test setting) rejects.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
    student, projection = eqx.apply_updates(state.trainable, updates)
    metrics = StepMetrics(loss, parts, optax.tree.norm(grads))
    return TrainState(student, opt_state, state.step + 1, key, projection), metrics


@eqx.filter_jit(donate="all-except-first")
# Counts compilations (max_traces=None never raises): tests assert one trace per batch shape.
@eqx.debug.assert_max_traces(max_traces=None)
def train_step(
    teacher: AbstractSequenceClassifier | None,
    state: TrainState,
    batch: Batch,
    optimizer: optax.GradientTransformation,
    objective: Objective,
) -> tuple[TrainState, StepMetrics]:
    """One jitted optimizer step on one device: ``new_state, metrics = train_step(teacher, state, ...)``.

    The state is donated: its buffers become the new state's, so ``state`` and every array in it (the student
    you built it from, too) are deleted after the call ("Array has been deleted" on the next use). Keep using
    the returned state (``new_state.student``); copy a student you want to keep first
    (``jax.tree.map(lambda x: jnp.copy(x) if eqx.is_array(x) else x, student)``). The teacher (first
    argument) is not donated, and runs in inference mode whatever mode it is passed in.
    """
    return train_step_body(teacher, state, batch, optimizer, objective)


class EvalCounts(NamedTuple):
    correct: Float[Array, ""]
    total: Float[Array, ""]


def eval_step_body(
    model: AbstractSequenceClassifier, batch: Batch, axis_name: str | None = None
) -> tuple[EvalCounts, Any]:
    """Weighted count of correct predictions (padding rows weigh 0), and the logits; the model runs in
    inference mode."""
    logits = forward(model, batch, key=None).logits
    correct = jnp.sum(jnp.where(jnp.argmax(logits, axis=-1) == batch.labels, batch.weights, 0.0))
    counts = EvalCounts(correct, jnp.sum(batch.weights))
    if axis_name is not None:
        counts = jax.lax.psum(counts, axis_name)
    return counts, logits


@eqx.filter_jit
def eval_step(model: AbstractSequenceClassifier, batch: Batch) -> tuple[EvalCounts, Any]:
    """Jitted single-device evaluation of one batch (dropout off, whatever mode ``model`` is in)."""
    return eval_step_body(eqx.nn.inference_mode(model), batch)


TrainStep = Callable[[AbstractSequenceClassifier | None, TrainState, Batch], tuple[TrainState, StepMetrics]]


@dataclasses.dataclass(frozen=True)
class Steps:
    """How to run one step: on one device (``single_device_steps``), or sharded over a mesh
    (``parallel.sharded_steps``). The fit loop runs whichever it is given.

    ``place`` moves a host batch to the devices (and, on several hosts, takes this process's rows);
    ``place_state`` puts the model or train state where the steps expect it (replicated on a mesh);
    ``is_writer`` says whether this process writes checkpoints, logs and models (process 0 of several).
    """

    train: TrainStep
    evaluate: Callable[[AbstractSequenceClassifier, Batch], tuple[EvalCounts, Any]]
    place: Callable[[Batch], Batch]
    place_state: Callable[[Any], Any]
    is_writer: bool = True


def single_device_steps(objective: Objective, optimizer: optax.GradientTransformation) -> Steps:
    """The jitted single-device steps."""

    def train(teacher, state, batch):
        return train_step(teacher, state, batch, optimizer, objective)

    return Steps(train, eval_step, place=lambda b: b, place_state=lambda s: s)
