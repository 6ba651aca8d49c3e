"""The fit loop: steps, logging, validation, checkpoints, exact resume, Ctrl-C.

It runs whatever ``Steps`` it is given (one device from ``single_device_steps``, or the ``jax.shard_map`` version
from ``parallel.py``), so there is one training loop however many devices there are. It knows nothing of the hub:
models come in as modules and go out through ``save_pretrained`` to local folders.
"""

import dataclasses
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import equinox as eqx
import numpy as np
from jaxtyping import PRNGKeyArray
from tqdm import tqdm

from .checkpoint import CheckpointManager, atomic_write_text
from .config import ExperimentConfig, config_to_dict, resolved_eval_batch_size, resolved_length_buckets
from .data import Batch, TokenizedSplit, eval_batches, num_batches, train_batches
from .hf import save_pretrained
from .models import SequenceClassifier
from .train import (
    EvalCounts,
    LossConfig,
    StepMetrics,
    TrainState,
    eval_step,
    init_state,
    make_optimizer,
    train_step,
)


@dataclasses.dataclass(frozen=True)
class Steps:
    """How to run one step: on one device, or sharded over a mesh (``parallel.sharded_steps``).

    ``place`` moves a host batch to the devices (and, on several hosts, takes this process's rows);
    ``place_state`` puts the model or train state where the steps expect it (replicated on a mesh).
    """

    train: Callable[[SequenceClassifier | None, TrainState, Batch], tuple[TrainState, StepMetrics]]
    evaluate: Callable[[SequenceClassifier, Batch], tuple[EvalCounts, Any]]
    place: Callable[[Batch], Batch]
    place_state: Callable[[Any], Any]
    is_writer: bool = True


def single_device_steps(losses: LossConfig, optimizer) -> Steps:
    """The jitted single-device steps of ``train.py``."""

    def train(teacher, state, batch):
        return train_step(teacher, state, batch, optimizer, losses)

    return Steps(train, eval_step, place=lambda b: b, place_state=lambda s: s)


def evaluate(
    model: SequenceClassifier,
    split: TokenizedSplit,
    batch_size: int,
    buckets: tuple[int, ...],
    steps: Steps | None = None,
) -> tuple[float, int, np.ndarray]:
    """Accuracy of ``model`` on ``split`` with ``steps`` (one device when ``None``).

    Returns ``(accuracy, examples, logits (examples, classes))``, logits in dataset order.
    """
    run, place = (eval_step, lambda b: b) if steps is None else (steps.evaluate, steps.place)
    model = eqx.nn.inference_mode(model)
    if steps is not None:
        model = steps.place_state(model)
    correct = total = 0.0
    all_logits = []
    for batch in eval_batches(split, batch_size, buckets):
        counts, logits = run(model, place(batch))
        correct += float(counts.correct)
        total += float(counts.total)
        all_logits.append(np.asarray(logits)[batch.weights > 0])
    return correct / total, int(total), np.concatenate(all_logits)


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per record) and, optionally, Weights & Biases."""

    def __init__(self, path: Path, config: ExperimentConfig, *, append: bool, enabled: bool):
        self.path, self.enabled, self.wandb = path, enabled, None
        if not enabled:
            return
        if not append:
            path.write_text("")
        if config.use_wandb:
            try:
                import wandb
            except ImportError as e:
                raise RuntimeError("use_wandb is true but wandb is not installed: pip install wandb") from e
            self.wandb = wandb.init(
                project=config.project_name, name=config.job_name, group=config.experiment_name,
                config=config_to_dict(config),
            )

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def _epoch_batches(config: ExperimentConfig, train: TokenizedSplit, buckets, start_step: int) -> Iterator[Batch]:
    """Training batches from ``start_step`` on, across epochs, in the order fixed by ``seed`` and the epoch."""
    per_epoch = num_batches(train, config.batch_size)
    epoch, position = divmod(start_step, per_epoch)
    while True:
        yield from train_batches(
            train, config.batch_size, buckets, seed=config.seed, epoch=epoch, group_by_length=config.group_by_length,
            group_chunk_batches=config.group_chunk_batches, group_fraction=config.group_fraction, start=position,
        )
        epoch, position = epoch + 1, 0


def fit(
    config: ExperimentConfig,
    student: SequenceClassifier,
    teacher: SequenceClassifier | None,
    splits: dict[str, TokenizedSplit],
    *,
    tokenizer: str | Path | Any | None = None,
    final_name: str = "student",
    key: PRNGKeyArray,
    make_steps: Callable[[LossConfig, Any], Steps] = single_device_steps,
) -> dict[str, Any]:
    """Train ``student`` on ``splits["train"]`` (distilling from ``teacher`` when the loss weights ask for it).

    Writes to ``config.output_dir``: ``metrics.jsonl``, ``checkpoints/`` (when ``do_checkpoint``),
    ``best/`` (the student with the best validation accuracy) and ``<final_name>/`` (the final student), both in
    Hugging Face format with the tokenizer files. Ctrl-C saves a checkpoint and returns.

    Returns:
        a summary: steps run, final and best validation accuracy, wall time, examples/s.
    """
    out = Path(config.output_dir)
    buckets = resolved_length_buckets(config)
    eval_batch = resolved_eval_batch_size(config)
    # train_mean_length: every token weighs the same in every batch, grouped by length or not.
    mean_length = float(splits["train"].lengths.mean())
    losses = LossConfig(
        config.temperature, config.alpha_ce, config.alpha_kl, config.alpha_cos,
        cosine_tokens_per_example=mean_length if config.cosine_normalizer == "train_mean_length" else None,
    )
    if losses.needs_teacher and teacher is None:
        raise ValueError("alpha_kl or alpha_cos is positive, which needs a teacher, but none was given")
    per_epoch = num_batches(splits["train"], config.batch_size)
    total_steps = config.max_steps or config.num_epochs * per_epoch
    optimizer, schedule = make_optimizer(
        config.learning_rate, config.weight_decay, config.warmup_ratio, total_steps, config.max_grad_norm
    )
    steps = make_steps(losses, optimizer)
    writer = steps.is_writer
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    state = init_state(student, optimizer, key=key)
    manager = CheckpointManager(out / "checkpoints", config.keep_top_k_checkpoints, is_writer=writer)
    best_accuracy, start_step = -1.0, 0  # any accuracy beats -1
    latest = manager.latest() if config.resume_from_checkpoint else None
    if latest is not None:
        state, meta = manager.restore(latest, state)
        start_step = int(meta["step"])
        best_accuracy = meta["metadata"]["best_accuracy"]
        print(f"resumed from {latest} at step {start_step}")
    elif not config.resume_from_checkpoint:
        manager.clear()
    if writer:
        atomic_write_text(out / "config.json", json.dumps(config_to_dict(config), indent=2))
    log = MetricsLog(out / "metrics.jsonl", config, append=latest is not None, enabled=writer)
    state = steps.place_state(state)
    teacher = None if teacher is None else steps.place_state(eqx.nn.inference_mode(teacher))

    eval_seconds, saved_steps = 0.0, set()

    def validate(step: int) -> float:
        nonlocal best_accuracy, eval_seconds
        started = time.perf_counter()
        accuracy, n, _ = evaluate(state.student, splits["dev"], eval_batch, buckets, steps)
        eval_seconds += time.perf_counter() - started
        log.write({"step": step, "val_accuracy": accuracy, "val_examples": n})
        if accuracy > best_accuracy:
            best_accuracy = accuracy
            if writer:
                save_pretrained(state.student, out / "best", tokenizer)
        return accuracy

    def checkpoint(step: int, accuracy: float | None) -> None:
        if step in saved_steps:
            return
        saved_steps.add(step)
        manager.save(
            step, state, epoch=step // per_epoch, batch_in_epoch=step % per_epoch, val_accuracy=accuracy,
            metadata={"best_accuracy": best_accuracy},
        )

    # Ctrl-C only raises a flag: stopping mid-step would leave `state` pointing at donated (deleted) buffers.
    interrupted = []
    previous_handler = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    batches = _epoch_batches(config, splits["train"], buckets, start_step)
    window_examples, window_start = 0, time.perf_counter()
    run_start, run_examples = window_start, 0
    accuracy = None
    step = start_step
    progress = tqdm(total=total_steps, initial=start_step, disable=not writer, dynamic_ncols=True, desc="train")
    try:
        while step < total_steps and not interrupted:
            batch = next(batches)
            state, metrics = steps.train(teacher, state, steps.place(batch))
            step += 1
            examples = int(batch.weights.sum())
            window_examples += examples
            run_examples += examples
            progress.update(1)
            if step % config.log_every == 0 or step == total_steps:
                values = {k: float(v) for k, v in metrics._asdict().items()}
                now = time.perf_counter()
                record = {
                    "step": step, "epoch": step / per_epoch, **values, "lr": float(schedule(step - 1)),
                    "examples_per_sec": window_examples / (now - window_start),
                }
                log.write(record)
                progress.set_postfix(loss=f"{values['loss']:.4f}")
                window_examples, window_start = 0, now
            validated = step % config.log_val_every == 0 or step == total_steps
            if validated:
                accuracy = validate(step)
            if config.do_checkpoint and (step % config.checkpoint_every == 0 or step == total_steps):
                checkpoint(step, accuracy if validated else validate(step))
            if validated:
                window_start = time.perf_counter()
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        progress.close()
    if interrupted:
        checkpoint(step, None)
        print(f"\ninterrupted at step {step}; checkpoint saved, resume with --set resume_from_checkpoint=true")
        log.close()
        return {"interrupted": True, "steps": step}
    elapsed = time.perf_counter() - run_start
    if writer:
        save_pretrained(state.student, out / final_name, tokenizer)
    summary = {
        "steps": step,
        "final_val_accuracy": accuracy,
        "best_val_accuracy": best_accuracy,
        "wall_time_sec": elapsed,
        "train_examples_per_sec": run_examples / (elapsed - eval_seconds),
    }
    log.write({"step": step, **{f"summary/{k}": v for k, v in summary.items()}})
    log.close()
    return summary
