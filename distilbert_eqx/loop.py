"""The fit loop: steps, logging, validation, checkpoints, exact resume, Ctrl-C.

It receives built parts (a train state, the steps, a stream of batches, a checkpoint manager, a metrics log, a
function that saves a model) and plain numbers; it reads no config and knows nothing of the hub or of how many
devices the steps run on, so there is one training loop for every setup.
"""

import dataclasses
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import equinox as eqx
import numpy as np
import optax
from tqdm import tqdm

from .batch import Batch
from .checkpoint import CheckpointManager
from .compilations import Compilations
from .metrics_log import MetricsLog, say
from .models import AbstractSequenceClassifier
from .train import StepMetrics, Steps, TrainState, TrainStep, eval_step

SaveModel = Callable[[AbstractSequenceClassifier, str, float | None], None]


@dataclasses.dataclass(frozen=True)
class FitPlan:
    """When a run logs, validates, checkpoints and stops, in optimizer steps.

    ``checkpoint_every=None`` writes no periodic checkpoints; Ctrl-C always saves one to resume from. A two-stage
    run (TinyBERT) takes its first ``first_stage_steps`` steps with the first stage's train step.
    """

    total_steps: int
    steps_per_epoch: int
    log_every: int
    log_val_every: int
    checkpoint_every: int | None
    first_stage_steps: int = 0


def evaluate(
    model: AbstractSequenceClassifier,
    batches: Iterable[Batch],
    steps: Steps | None = None,
    progress: tqdm | None = None,
) -> tuple[float, int, np.ndarray]:
    """Accuracy of ``model`` over ``batches`` with ``steps`` (one device when ``None``); ``progress`` (a tqdm
    bar) advances by one per batch.

    Returns ``(accuracy, examples, logits (examples, classes))``, logits in batch order, padding rows dropped.
    """
    accuracy, examples, logits, _ = _evaluate(model, batches, steps, progress)
    return accuracy, examples, logits


def _evaluate(
    model: AbstractSequenceClassifier, batches: Iterable[Batch], steps: Steps | None, progress: tqdm | None
) -> tuple[float, int, np.ndarray, np.ndarray]:
    """`evaluate`, with the real rows' labels as well."""
    run, place = (eval_step, lambda b: b) if steps is None else (steps.evaluate, steps.place)
    model = eqx.nn.inference_mode(model)
    if steps is not None:
        model = steps.place_state(model)
    correct = total = 0.0
    all_logits, all_labels = [], []
    for batch in batches:
        counts, logits = run(model, place(batch))
        correct += float(counts.correct)
        total += float(counts.total)
        all_logits.append(np.asarray(logits)[batch.weights > 0])
        all_labels.append(np.asarray(batch.labels)[batch.weights > 0])
        if progress is not None:
            progress.update(1)
    return correct / total, int(total), np.concatenate(all_logits), np.concatenate(all_labels)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """The mean cross-entropy of ``logits (examples, classes)`` against ``labels``, in float64: the validation
    loss, the CE term's formula over every dev example."""
    logits = logits.astype(np.float64)
    top = logits.max(axis=1)
    log_normaliser = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    return float(np.mean(log_normaliser - logits[np.arange(len(labels)), labels]))


def mean_metrics(window: list[StepMetrics]) -> dict[str, float]:
    """The train record's values over the steps since the last one: ``loss`` and each term averaged over the
    steps that computed it (a two-stage run changes terms mid-window), ``grad_norm`` the last step's."""
    records = [metrics.as_record() for metrics in window]  # reads the values back from the devices only now
    keys = [key for key in records[-1] if key != "grad_norm"]
    keys += [key for record in records[:-1] for key in record if key not in keys and key != "grad_norm"]
    means = {key: float(np.mean([r[key] for r in records if key in r])) for key in dict.fromkeys(keys)}
    return {**means, "grad_norm": records[-1]["grad_norm"]}


def fit(
    state: TrainState,
    teacher: AbstractSequenceClassifier | None,
    *,
    train_batches: Callable[[int], Iterator[Batch]],
    dev_batches: Callable[[], Iterable[Batch]],
    steps: Steps,
    plan: FitPlan,
    learning_rate: optax.Schedule | None,
    checkpoints: CheckpointManager | None,
    log: MetricsLog,
    save_model: SaveModel,
    final_name: str,
    resume: bool = False,
    first_stage_train: TrainStep | None = None,
    compilations: Compilations | None = None,
) -> dict[str, Any]:
    """Train ``state.student``, distilling from ``teacher`` when the steps' losses need one.

    Arguments:
        state: the fresh train state; replaced by the latest checkpoint's when ``resume`` finds one.
        teacher: the frozen teacher (in inference mode), or ``None`` for label-only training.
        train_batches: ``train_batches(start_step)`` gives the training batches from that step on.
        dev_batches: ``dev_batches()`` gives one pass over the validation split.
        steps: the train and eval steps (one device, or a mesh).
        plan: when to log, validate, checkpoint and stop.
        learning_rate: the optimizer's schedule, for the ``lr`` record (``None``: no ``lr`` record).
        checkpoints: where full train states go; cleared at the start unless ``resume``. ``None``: no
            checkpoints (Ctrl-C then stops the run without one).
        log: the metrics log.
        save_model: ``save_model(model, name, dev_accuracy)`` writes a model folder ``name`` (``"best"``,
            ``final_name``).
        final_name: the folder of the final model.
        resume: continue from the latest checkpoint, if there is one.
        first_stage_train: the train step of the first ``plan.first_stage_steps`` steps (a two-stage run), in
            place of ``steps.train``; the stage follows from the step number, so a resumed run is in the right one.
        compilations: an open ``Compilations`` (see ``compilations.py``); the summary then says what the run
            compiled, and the run ends with its line.

    Returns:
        a summary: steps run, final and best validation accuracy, the fit loop's wall time over every process
        of the run (a resumed run adds the time its checkpoint recorded, and says ``resumed_at_step``), this
        process's training examples/s; or ``{"interrupted": True, "steps": ...}`` after Ctrl-C, which saves a
        checkpoint first.
    """
    writer = steps.is_writer
    # A bar redrawn with carriage returns floods a log file or a CI log: off unless stderr is a terminal;
    # without one, each train record and validation is printed as a line instead.
    interactive = writer and sys.stderr.isatty()
    best_accuracy, start_step = -1.0, 0  # any accuracy beats -1
    earlier_seconds = 0.0  # the fit loop's time in the processes before this one (a resumed run)
    latest = checkpoints.latest() if resume and checkpoints is not None else None
    if latest is not None:
        state, meta = checkpoints.restore(latest, state)
        start_step = int(meta["step"])
        best_accuracy = meta["metadata"]["best_accuracy"]
        say(f"resumed from {latest} at step {start_step}")
        if "wall_time_sec" in meta["metadata"]:
            earlier_seconds = meta["metadata"]["wall_time_sec"]
        else:  # a checkpoint written before the loop recorded its time
            say("the checkpoint does not record the time before it: wall_time_sec counts this process only")
    elif not resume and checkpoints is not None:
        checkpoints.clear()
    log.start(append=latest is not None)
    state = steps.place_state(state)
    teacher = None if teacher is None else steps.place_state(teacher)

    eval_seconds, saved_steps = 0.0, set()
    dev_count: int | None = None  # batches per validation, known after the first

    def validate(step: int) -> float:
        nonlocal best_accuracy, eval_seconds, dev_count
        started = time.perf_counter()
        bar = tqdm(total=dev_count, disable=not interactive, leave=False, dynamic_ncols=True, desc="validate")
        try:
            accuracy, n, logits, labels = _evaluate(state.student, dev_batches(), steps, bar)
        finally:
            bar.close()
        dev_count = bar.n
        eval_seconds += time.perf_counter() - started
        loss = cross_entropy(logits, labels)
        log.write({"step": step, "val_accuracy": accuracy, "val_loss": loss, "val_examples": n})
        if writer:
            say(f"step {step}: val_accuracy {accuracy:.4f}, val_loss {loss:.4f} ({n} examples)")
        if accuracy > best_accuracy:
            best_accuracy = accuracy
            if writer:
                save_model(state.student, "best", accuracy)
        return accuracy

    def checkpoint(step: int, accuracy: float | None) -> None:
        if checkpoints is None or step in saved_steps:
            return
        saved_steps.add(step)
        checkpoints.save(
            step,
            state,
            epoch=step // plan.steps_per_epoch,
            batch_in_epoch=step % plan.steps_per_epoch,
            val_accuracy=accuracy,
            metadata={"best_accuracy": best_accuracy, "wall_time_sec": run_seconds()},
        )

    def checkpoint_due(step: int) -> bool:
        every = plan.checkpoint_every
        due = every is not None and (step % every == 0 or step == plan.total_steps)
        return checkpoints is not None and due

    # Ctrl-C only raises a flag: stopping mid-step would leave `state` pointing at donated (deleted) buffers.
    interrupted = []
    previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    batches = train_batches(start_step)
    window_examples, window_start, window = 0, time.perf_counter(), []
    run_start, run_examples = window_start, 0

    def run_seconds() -> float:
        """The fit loop's wall time so far, over this process and the ones before it."""
        return earlier_seconds + time.perf_counter() - run_start

    accuracy = None
    step = start_step
    progress = tqdm(
        total=plan.total_steps, initial=start_step, disable=not interactive, dynamic_ncols=True, desc="train"
    )
    try:
        while step < plan.total_steps and not interrupted:
            batch = next(batches)
            first_stage = first_stage_train is not None and step < plan.first_stage_steps
            train = first_stage_train if first_stage else steps.train
            state, metrics = train(teacher, state, steps.place(batch))
            window.append(metrics)
            step += 1
            examples = int(batch.weights.sum())
            window_examples += examples
            run_examples += examples
            progress.update(1)
            if step % plan.log_every == 0 or step == plan.total_steps:
                values = mean_metrics(window)
                now = time.perf_counter()
                record = {
                    "step": step,
                    "epoch": step / plan.steps_per_epoch,
                    **values,
                    "examples_per_sec": window_examples / (now - window_start),
                }
                if learning_rate is not None:
                    record["lr"] = float(learning_rate(step - 1))
                if first_stage_train is not None:
                    record["stage"] = 1 if first_stage else 2
                log.write(record)
                progress.set_postfix(loss=f"{values['loss']:.4f}")
                if writer and not interactive:
                    lr = f", lr {record['lr']:.3g}" if "lr" in record else ""
                    say(
                        f"step {step}/{plan.total_steps}: loss {values['loss']:.4f} (mean of {len(window)} "
                        f"steps){lr}, {record['examples_per_sec']:.1f} examples/s"
                    )
                window_examples, window_start, window = 0, now, []
            validated = step % plan.log_val_every == 0 or step == plan.total_steps
            if validated:
                accuracy = validate(step)
            if checkpoint_due(step):
                checkpoint(step, accuracy if validated else validate(step))
            if validated:
                window_start = time.perf_counter()
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        progress.close()
    if interrupted:
        checkpoint(step, None)
        resume = "checkpoint saved, resume with --set resume_from_checkpoint=true"
        saved = resume if checkpoints is not None else "no checkpoint"
        say(f"interrupted at step {step}; {saved}")
        log.close()
        return {"interrupted": True, "steps": step}
    elapsed = time.perf_counter() - run_start
    if writer:
        save_model(state.student, final_name, accuracy)
    summary = {
        "steps": step,
        "final_val_accuracy": accuracy,
        "best_val_accuracy": best_accuracy,
        "wall_time_sec": earlier_seconds + elapsed,
        "train_examples_per_sec": run_examples / (elapsed - eval_seconds),
    }
    if start_step:
        summary["resumed_at_step"] = start_step
    if compilations is not None:
        summary |= {"compiled_programs": compilations.count, "compile_sec": compilations.compile_seconds}
        if writer:
            say(compilations.summary())
    log.write({"step": step, **{f"summary/{k}": v for k, v in summary.items()}})
    log.close()
    return summary
