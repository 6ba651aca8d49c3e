"""One process of the two-process test in ``test_parallel.py``, and the training run it shares with that test.

Run as ``python tests/multiprocess_worker.py PORT PROCESS_ID OUT_DIR``: two of these on one machine form a
4-device mesh (2 CPU devices each) over ``jax.distributed`` on 127.0.0.1:PORT, train on
``training_batches()``, and process 0 writes ``metrics.npy`` and ``weights.npy`` to ``OUT_DIR``.
"""

import sys
from pathlib import Path

import jax
import numpy as np
import optax

from distilbert_eqx import parallel
from distilbert_eqx.batch import Batch
from distilbert_eqx.train import init_state
from helpers import flat_weights, original_objective, random_batch, tiny_student, tiny_teacher

# All three loss terms, so that every psum'd normaliser (rows and tokens) is exercised.
LOSSES = original_objective()
# Plain SGD with learning rate 1: weights after n steps are the initial weights minus the sum of the n
# gradients, so comparing weights compares gradients element by element (Adam would amplify rounding in
# near-zero gradients into differences of the size of the learning rate).
SGD = optax.sgd(1.0)


def training_batches() -> list[Batch]:
    """Three global batches of 8 rows and one shape (one compilation); the last has 5 real rows, so some
    devices hold only padding rows."""
    return [random_batch(10), random_batch(11), random_batch(12, real_rows=5)]


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
    parallel.initialize(2, process_id, f"127.0.0.1:{port}")
    mesh = parallel.make_mesh(4, "cpu")
    metrics, weights = train_sharded(mesh, training_batches())
    if process_id == 0:
        np.save(out / "metrics.npy", metrics)
        np.save(out / "weights.npy", weights)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
