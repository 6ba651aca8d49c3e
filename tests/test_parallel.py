"""Data parallelism on 8 CPU devices: sharded steps equal single-device steps (dropout off and on), two
processes equal one, dropout masks differ across rows, one compilation per bucket."""

import contextlib
import functools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distilbert_eqx import loop, parallel
from distilbert_eqx.data import TokenizedSplit, eval_batches
from distilbert_eqx.distill import Objective
from distilbert_eqx.distill.layer_map import uniform_layer_map
from distilbert_eqx.distill.terms import CE, KL, AttentionKL, AttentionScores, Cos, Hidden, ValueRelation
from distilbert_eqx.init import random_student
from distilbert_eqx.models.layers import linear
from distilbert_eqx.train import (
    forward,
    init_state,
    make_optimizer,
    row_dropout_keys,
    single_device_steps,
    train_step,
)
from helpers import (
    REPO,
    VOCAB,
    flat_weights,
    max_diff,
    random_batch,
    tiny_bert_config,
    tiny_student,
    tiny_teacher,
)
from multiprocess_worker import LOSSES, SGD, train_sharded, training_batches

TOL = 1e-5
WORKER = Path(__file__).with_name("multiprocess_worker.py")
LABEL_LOSS = Objective([CE(1.0)])
# The tests that compile a step are marked slow: even for these tiny models a compilation costs more than a
# test of the fast tier may take. The fast tier proves the sums across devices on the losses (test_losses.py).


@functools.cache
def single_device_run() -> tuple[np.ndarray, np.ndarray]:
    """``train.train_step`` on ``training_batches()``: ``(loss and grad norm per step, flat weights)``."""
    teacher = tiny_teacher()
    state = init_state(tiny_student(teacher), SGD, key=jax.random.key(2))
    metrics = []
    for batch in training_batches():
        state, step_metrics = train_step(teacher, state, batch, SGD, LOSSES)
        metrics.append([float(step_metrics.loss), float(step_metrics.grad_norm)])
    return np.asarray(metrics), flat_weights(state.student)


@functools.cache
def sharded_run(num_devices: int) -> tuple[np.ndarray, np.ndarray]:
    return train_sharded(parallel.make_mesh(num_devices, "cpu"), training_batches())


# Two devices in the fast tier: the check a researcher editing the step wants; 4 and 8 with the slow tests.
@pytest.mark.parametrize(
    "num_devices", [2, pytest.param(4, marks=pytest.mark.slow), pytest.param(8, marks=pytest.mark.slow)]
)
def test_sharded_steps_equal_single_device_steps(num_devices):
    """Three steps (all three loss terms, the last batch 5 real rows of 8, so on 4 and 8 devices some devices
    hold only padding) give the single-device losses, gradient norms and weights.

    The optimizer is SGD with learning rate 1, so the weights differ from the single-device ones by the summed
    difference of the gradients, element by element. This also shows the gradients are not scaled by the
    device count: had each device differentiated the mean over its own rows only, ``shard_map`` would sum the
    replicated parameters' gradients over devices (a ``pmean`` afterwards changes nothing, they are already
    identical on every device), giving ``num_devices`` times the true gradient norm and failing both checks.
    """
    metrics, weights = sharded_run(num_devices)
    expected_metrics, expected_weights = single_device_run()
    np.testing.assert_allclose(metrics, expected_metrics, rtol=0, atol=TOL)
    assert max_diff(weights, expected_weights) <= TOL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    """Two processes with 2 CPU devices each (``jax.distributed`` on 127.0.0.1, gloo collectives) train
    exactly like one process with 4 devices."""
    port = _free_port()
    # The worker imports distilbert_eqx from this checkout, installed or not.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    logs = [tmp_path / f"process{process_id}.log" for process_id in range(2)]
    with contextlib.ExitStack() as stack:
        workers = [
            subprocess.Popen(
                [sys.executable, str(WORKER), str(port), str(process_id), str(tmp_path)],
                stdout=stack.enter_context(open(log, "w")),
                stderr=subprocess.STDOUT,
                env=env,
            )
            for process_id, log in enumerate(logs)
        ]
        deadline = time.monotonic() + 300
        for w in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.wait(timeout=max(deadline - time.monotonic(), 1))
        # A worker left running is stuck (e.g. waiting for a peer that died); its log says where.
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    for w, log in zip(workers, logs):
        assert w.returncode == 0, f"{log.name} (exit code {w.returncode}):\n{log.read_text()[-4000:]}"
    expected_metrics, expected_weights = sharded_run(4)
    np.testing.assert_allclose(np.load(tmp_path / "metrics.npy"), expected_metrics, rtol=0, atol=TOL)
    assert max_diff(np.load(tmp_path / "weights.npy"), expected_weights) <= TOL


def _tiny_split(examples: int, max_tokens: int) -> TokenizedSplit:
    rng = np.random.default_rng(7)
    lengths = rng.integers(3, max_tokens + 1, size=examples)
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)])
    token_ids = rng.integers(1, VOCAB, size=int(offsets[-1])).astype(np.int32)
    labels = rng.integers(0, 2, size=examples).astype(np.int32)
    return TokenizedSplit("dev", labels, offsets, token_ids, np.zeros_like(token_ids), pad_id=0)


@pytest.mark.slow
def test_sharded_evaluation_equals_single_device():
    """21 examples in batches of 8 over 8 devices: the last batch leaves 3 devices with padding rows only."""
    model = tiny_student(tiny_teacher())
    split = _tiny_split(21, max_tokens=12)
    expected = loop.evaluate(model, eval_batches(split, 8, (12,)), single_device_steps(LOSSES, SGD))
    sharded = parallel.sharded_steps(parallel.make_mesh(8, "cpu"), LOSSES, SGD)
    accuracy, examples, logits = loop.evaluate(model, eval_batches(split, 8, (12,)), sharded)
    assert (accuracy, examples) == expected[:2] and examples == 21
    assert max_diff(logits, expected[2]) <= TOL


def _dropout_run(steps, batches) -> np.ndarray:
    """The tiny student, dropout on, after SGD steps on ``batches``: its flat weights."""
    teacher = tiny_teacher()
    state = steps.place_state(init_state(tiny_student(teacher, dropout=True), SGD, key=jax.random.key(2)))
    teacher = steps.place_state(teacher)
    for batch in batches:
        state, _ = steps.train(teacher, state, steps.place(batch))
    return flat_weights(state.student)


@pytest.mark.slow
def test_dropout_masks_do_not_depend_on_the_device_count():
    """Dropout on, three steps: 4 devices train the student 1 device trains, to the tolerance of the
    dropout-off comparison. Each row's key is drawn for the global batch and travels with the row; keys split
    per device (or folded with its index) would give each row another mask on 4 devices, and the students
    would differ by far more (0.15 at this SGD learning rate of 1)."""
    one = _dropout_run(single_device_steps(LOSSES, SGD), training_batches())
    four = _dropout_run(parallel.sharded_steps(parallel.make_mesh(4, "cpu"), LOSSES, SGD), training_batches())
    assert max_diff(one, single_device_run()[1]) > 1e-3, "dropout had no effect, so this test shows nothing"
    assert max_diff(four, one) <= TOL


def test_the_single_device_step_draws_the_dropout_keys_it_always_drew():
    """One key per row, split from the step's key: the scheme single-device runs (and their checkpoints and
    recorded results) have always used, so they train as they did before the keys moved out of ``forward``."""
    state_key = jax.random.key(7)
    _, step_key = jax.random.split(state_key)
    expected = jax.random.key_data(jax.random.split(step_key, 8))
    np.testing.assert_array_equal(jax.random.key_data(row_dropout_keys(state_key, 8)), expected)


@pytest.mark.slow
def test_devices_draw_different_dropout_masks():
    """Label loss on 8 devices, one row each: one example copied to every row, against the same rows weighted
    1 on device 0 and 0 everywhere else (the same compiled step). One SGD step with learning rate 1 leaves the
    weights minus the gradient.

    If the rows shared a dropout key, every copy would get row 0's mask and the two gradients would be equal.
    They are with dropout off; with dropout on they are not, so the rows (and devices) drew different masks.
    """
    copies = jax.tree.map(lambda x: np.repeat(x, 8, axis=0), random_batch(30, batch=1))
    alone = copies._replace(weights=(np.arange(8) == 0).astype(np.float32))
    teacher = tiny_teacher()

    def updated_weights(dropout: bool) -> tuple[np.ndarray, np.ndarray]:
        steps = parallel.sharded_steps(parallel.make_mesh(8, "cpu"), LABEL_LOSS, SGD)
        results = []
        for batch in (copies, alone):
            student = tiny_student(teacher, dropout=dropout)
            state = steps.place_state(init_state(student, SGD, key=jax.random.key(3)))
            results.append(flat_weights(steps.train(None, state, steps.place(batch))[0].student))
        return results[0], results[1]

    copies_off, alone_off = updated_weights(dropout=False)
    copies_on, alone_on = updated_weights(dropout=True)
    assert max_diff(copies_off, alone_off) <= 1e-6
    assert max_diff(alone_on, alone_off) > 1e-3, "dropout had no effect, so this test shows nothing"
    assert max_diff(copies_on, alone_on) > 1e-3


@pytest.mark.slow
def test_sharded_step_compiles_once_per_bucket():
    """Five AdamW steps alternating two sequence lengths trace the sharded step twice."""
    optimizer, _ = make_optimizer(1e-3, 0.01, 0.0, 10)
    # The label loss alone: no teacher to compile, and the loss terms do not change what is traced when.
    steps = parallel.sharded_steps(parallel.make_mesh(2, "cpu"), LABEL_LOSS, optimizer)
    state = steps.place_state(init_state(tiny_student(tiny_teacher()), optimizer, key=jax.random.key(2)))
    for step, seq in enumerate([8, 16, 8, 16, 8]):
        state, metrics = steps.train(None, state, steps.place(random_batch(step, seq=seq)))
        assert np.isfinite(float(metrics.loss))
    assert eqx.debug.get_num_traces(steps.train) == 2
    assert int(state.step) == 5


def test_clear_errors_and_single_process_start_up():
    steps = parallel.sharded_steps(parallel.make_mesh(4, "cpu"), LOSSES, SGD)
    with pytest.raises(ValueError, match="6 rows cannot be split evenly over 4 devices"):
        steps.place(random_batch(0, batch=6))
    with pytest.raises(ValueError, match="num_devices=16 requested, but only 8 cpu devices"):
        parallel.make_mesh(16, "cpu")
    with pytest.raises(ValueError, match="platform='tt'"):
        parallel.make_mesh(1, "tt")
    parallel.initialize(1, 0, None)
    assert not jax.distributed.is_initialized()
    assert steps.is_writer


@pytest.mark.slow
@pytest.mark.parametrize("cached", [False, True])
def test_sharded_layer_losses_and_projection_equal_single_device(cached):
    """The layer losses' sums (tokens, query-key pairs, relation heads) are summed across devices like the
    others: a narrow random student with W_h, hidden MSE, attention-score MSE, attention and value-relation KL,
    on 4 devices (the last batch's padding rows fill whole devices), gives the single-device losses, gradient
    norms, student and projection. ``cached``: the sharded steps read the teacher's outputs from the batches
    (as from the teacher-output cache, each device its own rows') and get no teacher."""
    layer_map = uniform_layer_map(1, 2)
    losses = Objective(
        [
            CE(1.0),
            KL(0.5),
            Cos(0.1),
            Hidden(1.0, layer_map=layer_map),
            AttentionScores(0.1, layer_map=layer_map),
            AttentionKL(1.0),
            ValueRelation(1.0, relation_heads=2),
        ]
    )
    teacher = tiny_teacher()

    def fresh_state():
        student = eqx.nn.inference_mode(
            random_student(
                tiny_bert_config(),
                num_layers=1,
                hidden_size=16,
                num_heads=4,
                intermediate_size=24,
                num_labels=2,
                key=jax.random.key(3),
            )
        )
        return init_state(
            student, SGD, key=jax.random.key(2), projection=linear(16, 32, 0.02, key=jax.random.key(4))
        )

    def with_targets(batch):
        out = forward(teacher, jax.tree.map(jnp.asarray, batch), key=None, **losses.outputs())
        return batch._replace(teacher=jax.device_get(losses.teacher_targets(out)))

    def run(steps, cached=False):
        state, t = steps.place_state(fresh_state()), None if cached else steps.place_state(teacher)
        metrics = []
        for batch in training_batches():
            state, m = steps.train(t, state, steps.place(with_targets(batch) if cached else batch))
            metrics.append([float(m.loss), float(m.grad_norm)])
        return np.asarray(metrics), flat_weights(state.student), flat_weights(state.projection)

    single = run(single_device_steps(losses, SGD))
    sharded = run(parallel.sharded_steps(parallel.make_mesh(4, "cpu"), losses, SGD), cached)
    np.testing.assert_allclose(sharded[0], single[0], rtol=0, atol=TOL)
    assert max_diff(sharded[1], single[1]) <= TOL and max_diff(sharded[2], single[2]) <= TOL
