"""Training on a transfer set: the train split joined with unlabelled variants. Label terms read the labelled
rows only, the terms marked ``on_variants`` every row; the teacher-output cache stores each term's rows."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distilbert_eqx.data import TokenizedSplit, indexed_train_batches, make_batch, with_transfer_set
from distilbert_eqx.distill import Objective
from distilbert_eqx.distill.teacher_cache import field_bytes, teacher_cache
from distilbert_eqx.distill.terms import CE, KL, Cos, Hidden
from distilbert_eqx.train import forward, init_state, make_optimizer, train_step
from helpers import VOCAB, copy_tree, flat_weights, max_diff, tiny_student, tiny_teacher

BUCKETS = (8, 16)
OBJECTIVE = Objective([CE(1.0), KL(0.5), Cos(0.1), Hidden(1.0, layer_map=((0, 0), (1, 2)))])


def _split(examples: int, seed: int, name: str = "train") -> TokenizedSplit:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 15, size=examples)
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)])
    token_ids = rng.integers(1, VOCAB, size=int(offsets[-1])).astype(np.int32)
    labels = rng.integers(0, 2, size=examples).astype(np.int32)
    return TokenizedSplit(name, labels, offsets, token_ids, np.zeros_like(token_ids), pad_id=0)


def _pool(variant_labels: np.ndarray | None = None) -> TokenizedSplit:
    variants = _split(30, seed=2, name="variants")
    if variant_labels is not None:
        variants = dataclasses.replace(variants, labels=variant_labels)
    return with_transfer_set(_split(20, seed=1), variants)


def test_the_joined_split_keeps_both_parts_and_marks_the_originals():
    train, variants = _split(20, seed=1), _split(30, seed=2)
    pool = with_transfer_set(train, variants)
    assert len(pool) == 50 and pool.labelled.tolist() == [True] * 20 + [False] * 30
    for i in (0, 19):
        np.testing.assert_array_equal(
            pool.token_ids[pool.offsets[i] : pool.offsets[i + 1]],
            train.token_ids[train.offsets[i] : train.offsets[i + 1]],
        )
    j = 7
    np.testing.assert_array_equal(
        pool.token_ids[pool.offsets[20 + j] : pool.offsets[21 + j]],
        variants.token_ids[variants.offsets[j] : variants.offsets[j + 1]],
    )
    batch = make_batch(pool, np.array([3, 25, 40]), 4, BUCKETS)
    assert batch.labelled.tolist() == [1.0, 0.0, 0.0, 0.0]  # the dummy fourth row is not labelled either
    assert make_batch(train, np.array([3]), 4, BUCKETS).labelled is None  # no pool: the step is unchanged


def test_variant_labels_do_not_enter_the_loss_and_originals_labels_do():
    """Garbage labels on the variants change no term; the original rows' labels change CE (the test can fail)."""
    teacher = tiny_teacher(num_hidden_layers=2)
    student = tiny_student(teacher)
    rng = np.random.default_rng(3)
    clean, garbage = _pool(), _pool(rng.integers(0, 2, size=30).astype(np.int32))
    indices = np.array([0, 1, 2, 21, 22, 35, 40, 49])

    def terms(split):
        batch = jax.tree.map(jnp.asarray, make_batch(split, indices, 8, BUCKETS))
        outputs = OBJECTIVE.outputs()
        targets = OBJECTIVE.teacher_targets(forward(teacher, batch, key=None, **outputs))
        sums = OBJECTIVE(forward(student, batch, key=None, **outputs), targets, None, batch)
        return {name: float(s.mean()) for name, s in sums.items()} | {
            f"{name}_rows": float(s.weight) for name, s in sums.items()
        }

    base = terms(clean)
    assert base == terms(garbage)
    assert base["loss_ce_rows"] == 3.0 and base["loss_kl_rows"] == 8.0  # CE on the originals, KL on every row
    flipped = dataclasses.replace(clean, labels=np.where(np.arange(50) < 20, 1 - clean.labels, clean.labels))
    assert terms(flipped)["loss_ce"] != base["loss_ce"]


@pytest.mark.slow
def test_the_cache_stores_variants_only_for_the_terms_computed_on_them_and_trains_as_the_live_teacher():
    teacher = tiny_teacher(num_hidden_layers=2)
    pool = _pool()
    cache = teacher_cache(teacher, pool, OBJECTIVE, batch_size=8, buckets=BUCKETS, log=lambda _: None)
    tokens = int(pool.lengths.sum())
    labelled_tokens = int(pool.lengths[:20].sum())
    assert cache.arrays["kl.logits"].shape == (50, 2)
    assert cache.arrays["cos.last_hidden_state"].shape == (labelled_tokens, 32) and labelled_tokens < tokens
    assert cache.arrays["hidden.hidden_states"].shape == (labelled_tokens, 2, 32)
    assert field_bytes(teacher, OBJECTIVE, pool.lengths, "float32", pool.labelled) == cache.nbytes

    optimizer, _ = make_optimizer(1e-3, 0.01, 0.1, 12)
    student = tiny_student(teacher, dropout=True)

    def run(with_cache: bool):
        state = init_state(copy_tree(student), optimizer, key=jax.random.key(9))
        stream = indexed_train_batches(pool, 8, BUCKETS, seed=2, epoch=0, group_by_length=True)
        batches = cache.attach(stream) if with_cache else (batch for _, batch in stream)
        for batch in batches:
            state, metrics = train_step(None if with_cache else teacher, state, batch, optimizer, OBJECTIVE)
        assert np.isfinite(float(metrics.loss))
        return flat_weights(state.student)

    live = run(False)
    assert max_diff(run(True), live) <= 1e-5
    assert max_diff(live, flat_weights(student)) > 1e-3  # it trained


@pytest.mark.slow
def test_sharded_steps_on_a_pool_equal_single_device():
    """The labelled mask is split over devices like the rows it weighs: 4 devices give the single device's
    losses and student, CE's row count summed across devices included."""
    from distilbert_eqx import parallel
    from distilbert_eqx.train import single_device_steps

    teacher = tiny_teacher(num_hidden_layers=2)
    student = tiny_student(teacher)
    optimizer, _ = make_optimizer(1e-3, 0.01, 0.1, 8)
    pool = _pool()

    def run(steps):
        state = steps.place_state(init_state(copy_tree(student), optimizer, key=jax.random.key(9)))
        t = steps.place_state(teacher)
        losses = []
        for _, batch in indexed_train_batches(pool, 8, BUCKETS, seed=4, epoch=0):
            state, metrics = steps.train(t, state, steps.place(batch))
            losses.append([float(metrics.loss), float(metrics.terms["loss_ce"])])
        return np.asarray(losses), flat_weights(state.student)

    single = run(single_device_steps(OBJECTIVE, optimizer))
    sharded = run(parallel.sharded_steps(parallel.make_mesh(4, "cpu"), OBJECTIVE, optimizer))
    np.testing.assert_allclose(sharded[0], single[0], rtol=0, atol=1e-5)
    assert max_diff(sharded[1], single[1]) <= 1e-5
