"""The teacher-output cache against the live teacher: stored values, padding, the train step's result, keys and
atomic files."""


import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distilbert_eqx.data import TokenizedSplit, epoch_batches, train_batches
from distilbert_eqx.layer_map import uniform_layer_map
from distilbert_eqx.objective import LossConfig, teacher_targets
from distilbert_eqx.teacher_cache import (
    TeacherCache,
    TeacherCacheError,
    field_bytes,
    teacher_cache,
)
from distilbert_eqx.train import forward, init_state, make_optimizer, train_step
from helpers import VOCAB, copy_tree, flat_weights, max_diff, tiny_student, tiny_teacher

BUCKETS = (8, 16)
# Every field the cache can store: logits, last hidden state, mapped hidden states and scores, MiniLM's last layer.
EVERY_FIELD = LossConfig(
    alpha_ce=1.0, alpha_kl=0.5, alpha_cos=0.1, alpha_hidden=1.0, alpha_attention_scores=0.1,
    alpha_attention_kl=1.0, alpha_value_relation=1.0, layer_map=uniform_layer_map(2, 4), relation_heads=4,
)


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


def _live(teacher, batch, losses):
    return jax.device_get(teacher_targets(forward(teacher, batch, key=None, **losses.outputs()), losses))


def _real(name: str, value: np.ndarray, mask: np.ndarray, rows: int) -> np.ndarray:
    """The entries of a target field that a loss may read: real rows, real tokens (and real key positions)."""
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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cached_targets_equal_the_live_teachers_on_real_tokens(teacher, dtype):
    split = _split()
    cache = _computed(teacher, split, EVERY_FIELD, batch_size=8, buckets=BUCKETS, dtype=dtype)
    assert cache.fields == EVERY_FIELD.teacher_fields
    assert cache.nbytes == field_bytes(teacher, EVERY_FIELD, split.lengths, dtype)
    tolerance = 1e-6 if dtype == "float32" else 2 ** -8  # bfloat16 keeps 8 bits of mantissa
    for batch in train_batches(split, 8, BUCKETS, seed=1, epoch=0, group_by_length=False, teacher_cache=cache):
        live = _live(teacher, batch, EVERY_FIELD)
        rows = int(batch.weights.sum())
        for name in EVERY_FIELD.teacher_fields:
            cached = getattr(batch.teacher, name)
            assert cached.shape == getattr(live, name).shape and cached.dtype == np.float32, name
            want, got = _real(name, getattr(live, name), batch.attention_mask, rows), _real(
                name, cached, batch.attention_mask, rows
            )
            assert want.size > 0
            np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * np.abs(want).max(), err_msg=name)


def test_a_cache_of_another_teacher_would_not_match(teacher):
    """The comparison above can fail: a different teacher's cache differs from this teacher's outputs."""
    split = _split()
    other = _computed(tiny_teacher(seed=5, num_hidden_layers=4), split, EVERY_FIELD, batch_size=8, buckets=BUCKETS)
    batch = next(iter(train_batches(split, 8, BUCKETS, seed=1, epoch=0, teacher_cache=other)))
    live = _live(teacher, batch, EVERY_FIELD)
    assert not np.allclose(batch.teacher.logits, live.logits, atol=1e-3)


def test_twenty_steps_with_the_cache_train_the_same_student_dropout_on(teacher):
    split = _split(80)  # 10 batches an epoch: the second epoch reads every example's targets again
    cache = _computed(teacher, split, EVERY_FIELD, batch_size=8, buckets=BUCKETS)
    optimizer, _ = make_optimizer(1e-3, 0.01, 0.1, 20)
    student = tiny_student(teacher, layers=(0, 2), dropout=True)

    def run(with_cache: bool):
        state = init_state(copy_tree(student), optimizer, key=jax.random.key(9))
        batches = epoch_batches(split, 8, BUCKETS, seed=2, group_by_length=True,
                                teacher_cache=cache if with_cache else None)
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
    cache = teacher_cache(teacher, split, LossConfig(), batch_size=8, buckets=BUCKETS, folder=tmp_path, log=logs.append)
    assert logs[0].startswith("teacher cache (float32, 37 examples): logits ")
    assert "last_hidden_state" in logs[0] and logs[-1].startswith("teacher cache: saved")
    assert logs[1].startswith("teacher cache: computed in ")
    (folder,) = tmp_path.iterdir()
    assert folder.name == cache.key
    again = teacher_cache(teacher, split, LossConfig(), batch_size=8, buckets=BUCKETS, folder=tmp_path, log=logs.append)
    assert logs[3:] == [logs[0], f"teacher cache: reading {folder}"]  # read back, not computed again
    assert isinstance(again.arrays["last_hidden_state"], np.memmap)
    for name in cache.fields:
        np.testing.assert_array_equal(again.arrays[name], cache.arrays[name])
    # Anything that changes the stored values is another key, another folder: the teacher's weights, the data,
    # the stored fields, the dtype.
    changed = eqx.tree_at(lambda m: m.classifier.bias, teacher, teacher.classifier.bias + 1e-3)
    other_data = _split(seed=4)
    for model, data, losses, dtype in [
        (changed, split, LossConfig(), "float32"),
        (teacher, other_data, LossConfig(), "float32"),
        (teacher, split, LossConfig(alpha_cos=0.0), "float32"),
        (teacher, split, LossConfig(), "bfloat16"),
    ]:
        teacher_cache(model, data, losses, batch_size=8, buckets=BUCKETS, dtype=dtype, folder=tmp_path, log=logs.append)
        assert logs[-1].startswith("teacher cache: saved")
    assert len(list(tmp_path.iterdir())) == 5
    bf16 = TeacherCache.load(next(p for p in tmp_path.iterdir() if "bfloat16" in (p / "meta.json").read_text()))
    assert bf16.arrays["logits"].dtype == jnp.bfloat16


def test_a_crash_while_saving_leaves_nothing_a_later_run_reads(teacher, tmp_path, monkeypatch):
    split = _split()
    cache = _computed(teacher, split, LossConfig(), batch_size=8, buckets=BUCKETS)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.save(tmp_path / "key")
    assert list(tmp_path.iterdir()) == []


def test_a_cache_over_the_limit_is_refused_before_it_is_computed(teacher):
    split = _split()
    sizes = field_bytes(teacher, LossConfig(), split.lengths, "float32")
    with pytest.raises(TeacherCacheError, match=r"would take .*over the limit of .*teacher_cache_max_gb"):
        teacher_cache(teacher, split, LossConfig(), batch_size=8, buckets=BUCKETS, max_bytes=sum(sizes.values()) - 1,
                      log=lambda _: None)
    with pytest.raises(TeacherCacheError, match="dtype='float16'; expected one of float32, bfloat16"):
        teacher_cache(teacher, split, LossConfig(), batch_size=8, buckets=BUCKETS, dtype="float16")
    with pytest.raises(TeacherCacheError, match="nothing to cache"):
        teacher_cache(teacher, split, LossConfig(alpha_kl=0.0, alpha_cos=0.0), batch_size=8, buckets=BUCKETS)
    # Logits: 2 floats per example; the last hidden state: 32 per real token.
    assert sizes == {"logits": 37 * 2 * 4, "last_hidden_state": int(split.lengths.sum()) * 32 * 4}
