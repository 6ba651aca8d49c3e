"""What a notebook needs beyond the parts: batches from sentences, and `fit` over a list of batches.

The experiment scripts build the same parts from a config (``experiment.py``) and run the same loop
(``loop.fit``) with checkpoints, a run folder and a log file; here the loop keeps its records in memory and
returns the trained students.
"""

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .batch import Batch
from .data import (
    SentenceTokenizer,
    TextSplit,
    default_length_buckets,
    eval_batches,
    tokenize_split,
    train_batches,
)
from .distill.objective import Objective
from .loop import FitPlan, fit as fit_loop
from .metrics_log import MetricsLog
from .models import AbstractSequenceClassifier
from .models.layers import linear
from .packing import PackingSettings, make_packed_batch, packed_eval_batches, packed_steps
from .train import init_state, single_device_steps


def sentence_batches(
    sentences: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    tokenizer: SentenceTokenizer,
    batch_size: int,
    *,
    seed: int | None = None,
    epoch: int = 0,
    buckets: Sequence[int] | None = None,
    packing: PackingSettings | None = None,
) -> list[Batch]:
    """Tokenise ``sentences`` and pad them into batches of ``batch_size`` rows, as the scripts' batches are.

    **Arguments:**

    - `sentences`, `labels`: the examples (labels 0 to classes - 1).
    - `tokenizer`: from `load_tokenizer` (truncates to its ``max_length``).
    - `batch_size`: rows per batch; the last batch is filled with weight-0 rows.
    - `seed`: ``None`` keeps the sentences' order (evaluation); an int shuffles them, in the order of the
      scripts' epoch ``epoch`` of seed ``seed``.
    - `buckets`: the padded lengths; ``default_length_buckets(tokenizer.max_length)`` by default. Each bucket
      compiles the steps once.
    - `packing`: pack the sentences several to a row instead (``PackingSettings(rows, length, slots)``, its
      length at least the longest tokenised sentence; ``batch_size`` and ``buckets`` then do nothing): every
      batch has one shape, and holds as many sentences as fit.

    **Returns:**

    The batches, a list (so `fit` can go over it several times).
    """
    if len(sentences) != len(labels):
        raise ValueError(f"{len(sentences)} sentences but {len(labels)} labels")
    split = tokenize_split(TextSplit("sentences", tuple(sentences), np.asarray(labels, np.int32)), tokenizer)
    if packing is not None:
        if packing.length is None:
            raise ValueError(
                "packing.length is None; give the row length (at least the longest sentence's tokens)"
            )
        widest = int(split.lengths.max())
        if seed is None:
            return list(packed_eval_batches(split, packing, widest))
        steps = packed_steps(split.lengths, packing, seed=seed, epoch=epoch)
        return [make_packed_batch(split, step, packing, widest) for step in steps]
    buckets = tuple(buckets or default_length_buckets(tokenizer.max_length))
    if seed is None:
        return list(eval_batches(split, batch_size, buckets))
    return list(train_batches(split, batch_size, buckets, seed=seed, epoch=epoch))


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What `fit` returns: the final ``student``, the ``best_student`` by validation accuracy, the ``summary``
    (steps, final and best validation accuracy, wall time, examples/s) and the metrics ``records`` (the
    records a script's ``metrics.jsonl`` holds)."""

    student: AbstractSequenceClassifier
    best_student: AbstractSequenceClassifier | None
    summary: dict[str, Any]
    records: list[dict[str, Any]]


def _copy(model: AbstractSequenceClassifier) -> AbstractSequenceClassifier:
    # The step donates the state: the model saved now would be deleted by the next step.
    return jax.tree.map(lambda x: jnp.copy(x) if eqx.is_array(x) else x, model)


def fit(
    teacher: AbstractSequenceClassifier | None,
    student: AbstractSequenceClassifier,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    train_batches: Sequence[Batch],
    *,
    dev_batches: Sequence[Batch],
    key: jax.Array,
    steps: int | None = None,
    learning_rate: optax.Schedule | None = None,
    projection: eqx.nn.Linear | None = None,
    log_every: int = 50,
    validate_every: int | None = None,
    metrics_path: str | Path | None = None,
) -> FitResult:
    """Train ``student`` on ``train_batches`` (in order, again and again) with the scripts' fit loop.

    **Arguments:**

    - `teacher`: the frozen teacher (any mode: the step switches its dropout off), or ``None`` (labels only).
    - `student`: the model to train, in training mode for dropout; left as it is (the loop trains a copy,
      since the step donates what it trains).
    - `objective`: the loss terms, e.g. ``Objective([terms.CE(1.0), terms.KL(0.45, temperature=2.0)])``; bound
      to the two models here (`Objective.bind`).
    - `optimizer`: e.g. from `make_optimizer` (pass its schedule as `learning_rate` to log it).
    - `train_batches`, `dev_batches`: from `sentence_batches`.
    - `key`: dropout.
    - `steps`: optimizer steps; one pass over `train_batches` by default.
    - `projection`: TinyBERT's ``W_h`` for hidden-state terms; one is made when the widths differ.
    - `log_every`, `validate_every`: in steps; validation once per pass and at the end by default.
    - `metrics_path`: a ``metrics.jsonl`` to write as well as the in-memory records.

    **Returns:**

    A `FitResult`: the final and best students (copies, safe to keep), the summary and the records. After
    Ctrl-C the summary is ``{"interrupted": True, "steps": ...}`` and ``student`` the best one so far.
    """
    if teacher is None and objective.needs_teacher:
        readers = [term.name for term in objective.terms if term.reads_teacher]
        raise ValueError(
            f"the loss terms {readers} compare the student with a teacher: pass one, or drop them"
        )
    if teacher is not None:
        objective = objective.bind(student, teacher)
    widths_differ = teacher is not None and student.hidden_size != teacher.hidden_size
    if projection is None and widths_differ and objective.projects_student:
        std = teacher.config.initializer_range
        projection = linear(student.hidden_size, teacher.hidden_size, std, key=jax.random.fold_in(key, 1))
    per_pass = len(train_batches)
    total = steps or per_pass
    plan = FitPlan(total, per_pass, log_every, validate_every or per_pass, checkpoint_every=None)
    log = MetricsLog(None if metrics_path is None else Path(metrics_path))
    saved: dict[str, AbstractSequenceClassifier] = {}

    def save_model(model: AbstractSequenceClassifier, name: str, accuracy: float | None) -> None:
        del accuracy
        saved[name] = _copy(model)

    summary = fit_loop(
        init_state(_copy(student), optimizer, key=key, projection=projection),
        teacher,
        train_batches=lambda start: itertools.islice(itertools.cycle(train_batches), start, None),
        dev_batches=lambda: dev_batches,
        steps=single_device_steps(objective, optimizer),
        plan=plan,
        learning_rate=learning_rate,
        checkpoints=None,
        log=log,
        save_model=save_model,
        final_name="final",
    )
    return FitResult(saved.get("final", saved.get("best")), saved.get("best"), summary, log.records)
