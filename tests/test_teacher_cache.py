"""The teacher-output cache against the live teacher: stored values, padding, the train step's result, keys and
atomic files."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distilbert_eqx.data import TokenizedSplit, indexed_epoch_batches, indexed_train_batches
from distilbert_eqx.distill import Objective
from distilbert_eqx.distill.layer_map import uniform_layer_map
from distilbert_eqx.distill.teacher_cache import (
    TeacherCache,
    TeacherCacheError,
    field_bytes,
    teacher_cache,
)
from distilbert_eqx.distill.terms import CE, KL, AttentionKL, AttentionScores, Cos, Hidden, ValueRelation
from distilbert_eqx.packing import PackingSettings
from distilbert_eqx.train import forward, init_state, make_optimizer, train_step
from helpers import VOCAB, copy_tree, flat_weights, max_diff, original_objective, tiny_student, tiny_teacher

BUCKETS = (8, 16)
# Every term that keeps something of the teacher: logits, last hidden state, mapped hidden states and scores,
# MiniLM's last layer.
EVERY_FIELD = Objective(
    [
        CE(1.0),
        KL(0.5),
        Cos(0.1),
        Hidden(1.0, layer_map=uniform_layer_map(2, 4)),
        AttentionScores(0.1, layer_map=uniform_layer_map(2, 4)),
        AttentionKL(1.0),
        ValueRelation(1.0, relation_heads=4),
    ]
)
# What the cache stores for EVERY_FIELD: "<term>.<kept field>".
STORED = (
    "attention_kl.last_attention_scores",
    "attention_scores.attention_scores",
    "cos.last_hidden_state",
    "hidden.hidden_states",
    "kl.logits",
    "value_relation.last_values",
)


def _flat(targets) -> dict:
    """Nested teacher targets as ``{"<term>.<field>": array}``."""
    return {f"{term}.{field}": value for term, kept in targets.items() for field, value in kept.items()}


def _split(examples: int = 37, seed: int = 3) -> TokenizedSplit:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 17, size=examples)
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)])
    token_ids = rng.integers(1, VOCAB, size=int(offsets[-1])).astype(np.int32)
    labels = rng.integers(0, 2, size=examples).astype(np.int32)
    return TokenizedSplit("train", labels, offsets, token_ids, np.zeros_like(token_ids), pad_id=0)


@pytest.fixture(scope="module")
def teacher():
    return tiny_teacher(num_hidden_layers=4)


def _computed(teacher, split, losses, **settings) -> TeacherCache:
    """A cache computed in memory, quietly."""
    return teacher_cache(teacher, split, losses, log=lambda _: None, **settings)


def _live(teacher, batch, objective):
    return _flat(
        jax.device_get(objective.teacher_targets(forward(teacher, batch, key=None, **objective.outputs())))
    )


def _real(name: str, value: np.ndarray, mask: np.ndarray, rows: int) -> np.ndarray:
    """The entries of a target field that a loss may read: real rows, real tokens (and real key positions)."""
    name = name.partition(".")[2]
    value = value[:rows]
    mask = mask[:rows]
    if name == "logits":
        return value
    if name == "last_hidden_state":
        return value[mask]
    if name in ("hidden_states", "last_values"):
        return np.moveaxis(value, 1, 2)[mask]
    pairs = mask[:, :, None] & mask[:, None, :]
    return np.moveaxis(value, (1, 2), (3, 4))[pairs]


# The pass's two batchings: length-sorted batches padded to buckets, and packed rows (up to 4 sentences of a 24-token
# row, 3 rows a batch: several batches, the last one part-filled).
PASSES = {"buckets": None, "packed": PackingSettings(rows=3, length=24, slots=4)}


@pytest.mark.parametrize("batching", PASSES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cached_targets_equal_the_live_teachers_on_real_tokens(teacher, dtype, batching):
    split = _split()
    cache = _computed(
        teacher, split, EVERY_FIELD, batch_size=8, buckets=BUCKETS, dtype=dtype, packing=PASSES[batching]
    )
    assert cache.fields == STORED
    assert cache.nbytes == field_bytes(teacher, EVERY_FIELD, split.lengths, dtype)
    tolerance = 1e-6 if dtype == "float32" else 2**-8  # bfloat16 keeps 8 bits of mantissa
    stream = indexed_train_batches(split, 8, BUCKETS, seed=1, epoch=0, group_by_length=False)
    for batch in cache.attach(stream):
        live = _live(teacher, batch, EVERY_FIELD)
        rows = int(batch.weights.sum())
        stored = _flat(batch.teacher)
        assert tuple(stored) == tuple(live) == STORED
        for name in STORED:
            cached = stored[name]
            # Sent in the storage dtype: the terms compute in float32 on the device.
            assert cached.shape == live[name].shape and cached.dtype == cache.arrays[name].dtype, name
            want, got = (
                _real(name, live[name], batch.attention_mask, rows),
                _real(name, cached, batch.attention_mask, rows).astype(np.float32),
            )
            assert want.size > 0
            # Nothing outside the real rows and tokens: padding and dummy rows are zeros.
            assert np.count_nonzero(cached) == np.count_nonzero(got), name
            np.testing.assert_allclose(
                got, want, rtol=tolerance, atol=tolerance * np.abs(want).max(), err_msg=name
            )


def test_a_cache_of_another_teacher_would_not_match(teacher):
    """The comparison above can fail: a different teacher's cache differs from this teacher's outputs."""
    split = _split()
    other = _computed(
        tiny_teacher(seed=5, num_hidden_layers=4), split, EVERY_FIELD, batch_size=8, buckets=BUCKETS
    )
    batch = next(other.attach(indexed_train_batches(split, 8, BUCKETS, seed=1, epoch=0)))
    live = _live(teacher, batch, EVERY_FIELD)
    assert not np.allclose(batch.teacher["kl"]["logits"], live["kl.logits"], atol=1e-3)


@pytest.mark.slow
def test_twenty_steps_with_the_cache_train_the_same_student_dropout_on(teacher):
    split = _split(80)  # 10 batches an epoch: the second epoch reads every example's targets again
    cache = _computed(teacher, split, EVERY_FIELD, batch_size=8, buckets=BUCKETS)
    optimizer, _ = make_optimizer(1e-3, 0.01, 0.1, 20)
    student = tiny_student(teacher, layers=(0, 2), dropout=True)

    def run(with_cache: bool):
        state = init_state(copy_tree(student), optimizer, key=jax.random.key(9))
        stream = indexed_epoch_batches(split, 8, BUCKETS, seed=2, group_by_length=True)
        batches = cache.attach(stream) if with_cache else (batch for _, batch in stream)
        for _, batch in zip(range(20), batches):
            state, metrics = train_step(None if with_cache else teacher, state, batch, optimizer, EVERY_FIELD)
        assert int(state.step) == 20 and np.isfinite(float(metrics.loss))
        return flat_weights(state.student)

    without = run(False)
    assert max_diff(run(True), without) <= 1e-5
    assert max_diff(without, flat_weights(student)) > 1e-3  # it trained


def test_saved_caches_are_keyed_read_memory_mapped_and_written_atomically(teacher, tmp_path):
    split = _split()
    logs = []
    cache = teacher_cache(
        teacher, split, original_objective(), batch_size=8, buckets=BUCKETS, folder=tmp_path, log=logs.append
    )
    assert logs[0].startswith("teacher cache (float32, 37 examples): cos.last_hidden_state ")
    assert "kl.logits" in logs[0] and logs[-1].startswith("teacher cache: saved")
    assert logs[1].startswith("teacher cache: computed in ")
    (folder,) = tmp_path.iterdir()
    assert folder.name == cache.key
    again = teacher_cache(
        teacher, split, original_objective(), batch_size=8, buckets=BUCKETS, folder=tmp_path, log=logs.append
    )
    assert logs[3:] == [logs[0], f"teacher cache: reading {folder}"]  # read back, not computed again
    assert isinstance(again.arrays["cos.last_hidden_state"], np.memmap)
    for name in cache.fields:
        np.testing.assert_array_equal(again.arrays[name], cache.arrays[name])
    # Anything that changes the stored values is another key, another folder: the teacher's weights, the data,
    # the stored fields, the dtype.
    changed = eqx.tree_at(lambda m: m.classifier.bias, teacher, teacher.classifier.bias + 1e-3)
    other_data = _split(seed=4)
    for model, data, losses, dtype in [
        (changed, split, original_objective(), "float32"),
        (teacher, other_data, original_objective(), "float32"),
        (teacher, split, Objective([CE(1.0), KL(0.45)]), "float32"),
        (teacher, split, original_objective(), "bfloat16"),
    ]:
        teacher_cache(
            model, data, losses, batch_size=8, buckets=BUCKETS, dtype=dtype, folder=tmp_path, log=logs.append
        )
        assert logs[-1].startswith("teacher cache: saved")
    assert len(list(tmp_path.iterdir())) == 5
    bf16 = TeacherCache.load(
        next(p for p in tmp_path.iterdir() if "bfloat16" in (p / "meta.json").read_text())
    )
    assert bf16.arrays["kl.logits"].dtype == jnp.bfloat16


def test_a_crash_while_saving_leaves_nothing_a_later_run_reads(teacher, tmp_path, monkeypatch):
    split = _split()
    cache = _computed(teacher, split, original_objective(), batch_size=8, buckets=BUCKETS)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.save(tmp_path / "key")
    assert list(tmp_path.iterdir()) == []


def test_a_cache_over_the_limit_is_refused_before_it_is_computed(teacher):
    split = _split()
    sizes = field_bytes(teacher, original_objective(), split.lengths, "float32")
    with pytest.raises(TeacherCacheError, match=r"would take .*over the limit of .*teacher_cache_max_gb"):
        teacher_cache(
            teacher,
            split,
            original_objective(),
            batch_size=8,
            buckets=BUCKETS,
            max_bytes=sum(sizes.values()) - 1,
            log=lambda _: None,
        )
    with pytest.raises(TeacherCacheError, match="dtype='float16'; expected one of float32, bfloat16"):
        teacher_cache(teacher, split, original_objective(), batch_size=8, buckets=BUCKETS, dtype="float16")
    with pytest.raises(TeacherCacheError, match="nothing to cache"):
        teacher_cache(teacher, split, Objective([CE(1.0)]), batch_size=8, buckets=BUCKETS)
    # Logits: 2 floats per example; the last hidden state: 32 per real token.
    assert sizes == {"kl.logits": 37 * 2 * 4, "cos.last_hidden_state": int(split.lengths.sum()) * 32 * 4}


def test_a_map_pairing_the_student_embeddings_with_a_teacher_layer_caches_what_the_terms_read(teacher):
    """Regression: with student state 0 paired with teacher state 2 the attention-score term reads 2 layer pairs
    (state 0 has no attention), and the cache allocated 3 (it counted teacher states > 0), failing with a numpy
    broadcast error while it was built. The layout now comes from the term's own selection."""
    layer_map = ((0, 2), (1, 3), (2, 4))
    objective = Objective(
        [CE(1.0), Hidden(1.0, layer_map=layer_map), AttentionScores(1.0, layer_map=layer_map)]
    )
    split = _split()
    cache = _computed(teacher, split, objective, batch_size=8, buckets=BUCKETS)
    assert cache.layout["attention_scores.attention_scores"].row_shape == (2, 4)
    assert cache.layout["hidden.hidden_states"].row_shape == (3, 32)
    pairs = sum(int(n) ** 2 for n in split.lengths)
    assert field_bytes(teacher, objective, split.lengths, "float32")["attention_scores.attention_scores"] == (
        pairs * 2 * 4 * 4
    )
    for batch in cache.attach(indexed_train_batches(split, 8, BUCKETS, seed=1, epoch=0)):
        live, rows = _live(teacher, batch, objective), int(batch.weights.sum())
        for name, cached in _flat(batch.teacher).items():
            want = _real(name, live[name], batch.attention_mask, rows)
            np.testing.assert_allclose(
                _real(name, cached, batch.attention_mask, rows),
                want,
                rtol=1e-6,
                atol=1e-6 * np.abs(want).max(),
                err_msg=name,
            )
