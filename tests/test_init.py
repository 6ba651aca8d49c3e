"""The student built from teacher layers reproduces the teacher where the DistilBERT recipe says it should."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distilbert_eqx.init import (
    default_student_layers,
    random_student,
    student_config,
    student_from_teacher,
    teacher_pca_embeddings,
)
from distilbert_eqx.models import BertForSequenceClassification, DistilBertConfig
from helpers import max_diff, random_batch, tiny_bert_config, tiny_student, tiny_teacher

# Distinct dropout rates, so a dropout module copied from the wrong place shows.
OVERRIDES = {
    "num_hidden_layers": 6,
    "intermediate_size": 64,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.2,
    "max_position_embeddings": 64,
    "num_labels": 3,
}
CONFIG = tiny_bert_config(**OVERRIDES)
LAYERS = [0, 2, 4]
BATCH, SEQ = 4, 16


@pytest.fixture(scope="module")
def teacher() -> BertForSequenceClassification:
    return tiny_teacher(**OVERRIDES)


@pytest.fixture(scope="module")
def student(teacher):
    return tiny_student(teacher, LAYERS, dropout=True)


@pytest.fixture(scope="module")
def batch() -> tuple[jax.Array, jax.Array]:
    b = random_batch(0, batch=BATCH, seq=SEQ, vocab=CONFIG.vocab_size)
    return jnp.asarray(b.input_ids), jnp.asarray(b.attention_mask)


def _hidden_states(model, ids, mask) -> jax.Array:
    model = eqx.nn.inference_mode(model)
    return jax.vmap(lambda i, m: model(i, m, output_hidden_states=True).hidden_states)(ids, mask)


def test_default_student_layers():
    assert default_student_layers(12) == [0, 2, 4, 7, 9, 11]
    assert default_student_layers(6) == [0, 2, 4]
    assert default_student_layers(5) == [0, 2, 4]
    assert default_student_layers(1) == [0]


def test_default_layers_are_used(teacher):
    student = student_from_teacher(teacher, key=jax.random.key(1))
    assert student.config.n_layers == student.num_layers == 3


def test_student_config(student):
    assert student.config == DistilBertConfig(
        vocab_size=100,
        dim=32,
        n_layers=3,
        n_heads=4,
        hidden_dim=64,
        activation="gelu",
        dropout=0.1,
        attention_dropout=0.2,
        max_position_embeddings=64,
        sinusoidal_pos_embds=False,
        initializer_range=0.02,
        pad_token_id=0,
        num_labels=3,
    )
    assert student_config(CONFIG, 3, 3) == student.config
    assert student.compute_dtype == "float32"


def test_num_labels_and_compute_dtype_overrides(teacher):
    student = student_from_teacher(
        teacher, LAYERS, num_labels=2, key=jax.random.key(1), compute_dtype="bfloat16"
    )
    assert student.config.num_labels == 2
    assert student.classifier.weight.shape == (2, CONFIG.hidden_size)
    assert student.compute_dtype == "bfloat16"


def test_student_embeddings_equal_the_teachers(teacher, student, batch):
    # Without the token-type fold they would differ by token_type[0], which the random init makes non-zero.
    assert float(jnp.max(jnp.abs(teacher.encoder.embeddings.token_type.weight[0]))) > 0
    ids, mask = batch
    student_embeddings = _hidden_states(student, ids, mask)[:, 0]
    assert max_diff(student_embeddings, _hidden_states(teacher, ids, mask)[:, 0]) <= 1e-6


def test_student_layer_weights_equal_the_teachers_exactly(teacher, student):
    for i, t in enumerate(LAYERS):
        s_leaves = jax.tree.leaves(eqx.filter(student.encoder.layers[i], eqx.is_array))
        t_leaves = jax.tree.leaves(eqx.filter(teacher.encoder.layers[t], eqx.is_array))
        assert len(s_leaves) == len(t_leaves) == 16
        for s_leaf, t_leaf in zip(s_leaves, t_leaves):
            np.testing.assert_array_equal(np.asarray(s_leaf), np.asarray(t_leaf))
    np.testing.assert_array_equal(
        np.asarray(student.encoder.embeddings.word.weight), np.asarray(teacher.encoder.embeddings.word.weight)
    )
    assert eqx.tree_equal(student.encoder.embeddings.norm, teacher.encoder.embeddings.norm)


def test_student_dropout_is_distilberts(student):
    for layer in student.encoder.layers:
        assert layer.attention.dropout.p == 0.2
        assert layer.attention_dropout.p == 0.0
        assert layer.feed_forward.dropout.p == 0.1
    assert student.encoder.embeddings.dropout.p == 0.1
    assert student.encoder.embeddings.token_type is None


def test_student_layers_reproduce_teacher_hidden_states(teacher, student, batch):
    ids, mask = batch
    teacher_states = _hidden_states(teacher, ids, mask)
    inference_student = eqx.nn.inference_mode(student)
    for i, t in enumerate(LAYERS):
        out = jax.vmap(inference_student.encoder.layers[i])(teacher_states[:, t], mask).output
        assert max_diff(out, teacher_states[:, t + 1]) <= 1e-5
    # The first copied layer also reproduces the teacher when fed the student's own embeddings.
    student_states = _hidden_states(student, ids, mask)
    assert max_diff(student_states[:, 1], teacher_states[:, 1]) <= 1e-5


def test_head_is_new_and_initialised_like_transformers(teacher, student):
    for layer in (student.pre_classifier, student.classifier):
        np.testing.assert_array_equal(np.asarray(layer.bias), 0.0)
    assert student.pre_classifier.weight.shape == (CONFIG.hidden_size, CONFIG.hidden_size)
    assert 0.015 < float(jnp.std(student.pre_classifier.weight)) < 0.025
    assert not np.array_equal(np.asarray(student.classifier.weight), np.asarray(teacher.classifier.weight))


def test_teacher_survives_donating_the_student(teacher):
    # The train step donates the student; shared buffers would take the teacher's weights with it.
    student = student_from_teacher(teacher, LAYERS, key=jax.random.key(1))
    donate = eqx.filter_jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate="all")
    donate(eqx.filter(student, eqx.is_array))
    assert all(not leaf.is_deleted() for leaf in jax.tree.leaves(eqx.filter(teacher, eqx.is_array)))


def test_student_runs_batched_and_jitted(student, batch):
    ids, mask = batch
    logits = eqx.filter_jit(lambda m, i, k: jax.vmap(lambda x, y: m(x, y).logits)(i, k))(
        eqx.nn.inference_mode(student), ids, mask
    )
    assert logits.shape == (BATCH, CONFIG.num_labels)
    assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([0, 6], r"layer index 6 is out of range: the teacher has 6 layers"),
        ([-1, 2], r"layer index -1 is out of range: the teacher has 6 layers"),
        ([0, 2, 2], r"layer index 2 appears twice in \[0, 2, 2\]; the teacher has 6 layers"),
        ([3, 1], r"layer indices must be increasing, but 1 follows 3 in \[3, 1\]; the teacher has 6 layers"),
        ([], r"at least one layer; the teacher has 6 layers"),
    ],
)
def test_bad_layer_choices_are_rejected(teacher, layers, message):
    with pytest.raises(ValueError, match=message):
        student_from_teacher(teacher, layers, key=jax.random.key(1))


def test_teacher_with_another_layer_norm_eps_is_rejected():
    teacher = tiny_teacher(**OVERRIDES, layer_norm_eps=1e-5)
    with pytest.raises(ValueError, match=r"layer_norm_eps is 1e-05"):
        student_from_teacher(teacher, LAYERS, key=jax.random.key(1))


# Random students whose word embeddings start from the teacher's, reduced by PCA.


def _aligned(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``ours`` with each column's sign flipped to agree with ``reference``'s (singular vectors have no sign)."""
    return ours * np.sign(np.sum(ours * reference, axis=0, keepdims=True))


@pytest.mark.parametrize("width", [8, 32])
def test_teacher_pca_embeddings_equal_a_numpy_svd(width):
    table = np.asarray(jax.random.normal(jax.random.key(3), (100, 32))) * np.linspace(0.2, 2.0, 32)
    got = np.asarray(teacher_pca_embeddings(jnp.asarray(table, jnp.float32), width, 0.02))
    centred = table.astype(np.float64) - table.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    reference = u[:, :width] * s[:width]
    reference *= 0.02 / reference.std()
    assert got.shape == (100, width)
    np.testing.assert_allclose(_aligned(got, reference), reference, atol=1e-5)
    assert abs(got.std() - 0.02) < 1e-6
    # The first components carry the most variance: one scale for all columns keeps their order.
    assert np.all(np.diff(got.var(axis=0)) <= 1e-9)


def test_teacher_pca_cannot_widen():
    with pytest.raises(ValueError, match="must be between 1 and 32"):
        teacher_pca_embeddings(jnp.zeros((10, 32)), 48, 0.02)


def test_random_student_with_teacher_pca_embeddings(teacher):
    table = teacher.encoder.embeddings.word.weight
    shape = {"num_layers": 1, "hidden_size": 16, "num_heads": 4, "intermediate_size": 24, "num_labels": 2}
    shape["key"] = jax.random.key(5)
    student = random_student(CONFIG, **shape, teacher_word_embeddings=table)
    plain = random_student(CONFIG, **shape)
    words = student.encoder.embeddings.word.weight
    assert words.shape == (CONFIG.vocab_size, 16)
    np.testing.assert_array_equal(words, teacher_pca_embeddings(table, 16, plain.config.initializer_range))
    # Everything else is the plain random student's.
    same = eqx.tree_at(
        lambda s: s.encoder.embeddings.word.weight, student, plain.encoder.embeddings.word.weight
    )
    assert jax.tree.all(
        jax.tree.map(
            lambda a, b: bool(jnp.array_equal(a, b)),
            eqx.filter(same, eqx.is_array),
            eqx.filter(plain, eqx.is_array),
        )
    )


def test_the_config_key_builds_a_pca_student_and_refuses_a_wider_one(teacher):
    from distilbert_eqx.config import load_config
    from distilbert_eqx.errors import ConfigError
    from distilbert_eqx.experiment import random_student_from_config

    shape = ["student_num_layers=1", "student_num_heads=4", "student_embedding_init=teacher_pca"]
    config = load_config(None, [*shape, "student_hidden_size=16"])
    student = random_student_from_config(config, teacher, key=jax.random.key(0))
    expected = teacher_pca_embeddings(teacher.encoder.embeddings.word.weight, 16, 0.02)
    np.testing.assert_array_equal(student.encoder.embeddings.word.weight, expected)
    with pytest.raises(ConfigError, match="student_hidden_size=48 is wider"):
        random_student_from_config(
            load_config(None, [*shape, "student_hidden_size=48"]), teacher, key=jax.random.key(0)
        )
