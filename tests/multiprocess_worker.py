"""One process of the two-process test in ``test_parallel.py``, and the tiny models and training run it shares
with that test.

Run as ``python tests/multiprocess_worker.py PORT PROCESS_ID OUT_DIR``: two of these on one machine form a
4-device mesh (2 CPU devices each) over ``jax.distributed`` on 127.0.0.1:PORT, train on
``training_batches()``, and process 0 writes ``metrics.npy`` and ``weights.npy`` to ``OUT_DIR``.
"""

import sys
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import optax

import distilbert_eqx as de
from distilbert_eqx import parallel
from distilbert_eqx.config import ExperimentConfig
from distilbert_eqx.data import Batch
from distilbert_eqx.init import student_from_teacher
from distilbert_eqx.train import LossConfig, init_state

VOCAB = 100
# All three loss terms, so that every psum'd normaliser (rows and tokens) is exercised.
LOSSES = LossConfig(temperature=2.0, alpha_ce=1.0, alpha_kl=0.45, alpha_cos=0.1)
# Plain SGD with learning rate 1: weights after n steps are the initial weights minus the sum of the n
# gradients, so comparing weights compares gradients element by element (Adam would amplify rounding in
# near-zero gradients into differences of the size of the learning rate).
SGD = optax.sgd(1.0)


def tiny_teacher(seed: int = 0) -> de.BertForSequenceClassification:
    """A random 2-layer BERT classifier, hidden size 32, in inference mode."""
    config = de.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=32, num_labels=2,
    )
    return eqx.nn.inference_mode(de.BertForSequenceClassification(config, key=jax.random.key(seed)))


def tiny_student(teacher: de.BertForSequenceClassification, dropout: bool = False) -> de.SequenceClassifier:
    """A 2-layer DistilBERT student copied from ``teacher``; dropout off unless ``dropout``."""
    student = student_from_teacher(teacher, [0, 1], key=jax.random.key(1))
    return student if dropout else eqx.nn.inference_mode(student)


def random_batch(seed: int, batch: int = 8, seq: int = 12, real_rows: int | None = None) -> Batch:
    """A padded batch ``(batch, seq)`` of random tokens; rows from ``real_rows`` on are weight-0 padding."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, seq + 1, size=batch)
    weights = np.ones(batch, np.float32)
    if real_rows is not None:
        weights[real_rows:] = 0.0
        # As data.py pads: a padding row attends to its first token only.
        lengths[real_rows:] = 1
    mask = np.arange(seq)[None, :] < lengths[:, None]
    ids = np.where(mask, rng.integers(1, VOCAB, size=(batch, seq)), 0).astype(np.int32)
    labels = rng.integers(0, 2, size=batch).astype(np.int32)
    return Batch(ids, mask, np.zeros_like(ids), labels, weights)


def training_batches() -> list[Batch]:
    """Three global batches of 8 rows and one shape (one compilation); the last has 5 real rows, so some
    devices hold only padding rows."""
    return [random_batch(10), random_batch(11), random_batch(12, real_rows=5)]


def flat_weights(model: eqx.Module) -> np.ndarray:
    """Every float array of ``model``, flattened and concatenated."""
    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    return np.concatenate([np.ravel(np.asarray(x)) for x in leaves])


def train_sharded(mesh: jax.sharding.Mesh, batches: list[Batch]) -> tuple[np.ndarray, np.ndarray]:
    """Sharded SGD steps on ``batches`` from the tiny student.

    Returns:
        ``(metrics, weights)``: loss and gradient norm of each step, ``(steps, 2)``, and the flat student
        weights.
    """
    teacher = tiny_teacher()
    steps = parallel.sharded_steps(mesh, LOSSES, SGD)
    state = steps.place_state(init_state(tiny_student(teacher), SGD, key=jax.random.key(2)))
    teacher = steps.place_state(teacher)
    metrics = []
    for batch in batches:
        state, step_metrics = steps.train(teacher, state, steps.place(batch))
        metrics.append([float(step_metrics.loss), float(step_metrics.grad_norm)])
    return np.asarray(metrics), flat_weights(state.student)


def main(port: int, process_id: int, out: Path) -> None:
    # Before any backend starts: 2 CPU devices per process; gloo carries the cross-process CPU collectives.
    jax.config.update("jax_num_cpu_devices", 2)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    config = ExperimentConfig(
        num_devices=4, platform="cpu", batch_size=8, num_processes=2, process_id=process_id,
        coordinator_address=f"127.0.0.1:{port}",
    )
    parallel.initialize(config)
    mesh = parallel.make_mesh(config.num_devices, config.platform)
    metrics, weights = train_sharded(mesh, training_batches())
    if process_id == 0:
        np.save(out / "metrics.npy", metrics)
        np.save(out / "weights.npy", weights)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
