"""The objective in the train step: which stacks the models return, the learned width projection (trained,
checkpointed, never saved with the student), random-init students, the two-stage loss configs."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

import distilbert_eqx as de
from distilbert_eqx.checkpoint import CheckpointManager
from distilbert_eqx.init import random_student
from distilbert_eqx.layer_map import uniform_layer_map
from distilbert_eqx.models.layers import linear
from distilbert_eqx.objective import LossConfig, loss_terms, project, teacher_targets
from distilbert_eqx.train import forward, init_state, make_optimizer, train_step
from helpers import flat_weights, random_batch, tiny_bert_config, tiny_teacher

EVERY_TERM = LossConfig(
    alpha_ce=1.0, alpha_kl=0.5, alpha_cos=0.1, alpha_hidden=1.0, alpha_attention_scores=0.1,
    alpha_attention_kl=1.0, alpha_value_relation=1.0, layer_map=uniform_layer_map(2, 4), relation_heads=4,
)


def _batch(seed: int, **kwargs):
    """A random padded batch as device arrays (outside jit the losses' annotations want jax arrays)."""
    return jax.tree.map(jnp.asarray, random_batch(seed, **kwargs))


def _narrow_student(width: int = 16, layers: int = 2) -> de.DistilBertForSequenceClassification:
    student = random_student(
        tiny_bert_config(num_hidden_layers=4), num_layers=layers, hidden_size=width, num_heads=4,
        intermediate_size=24, num_labels=2, key=jax.random.key(3),
    )
    return eqx.nn.inference_mode(student)


def test_plain_recipe_asks_the_models_for_no_stacks():
    """The original recipe's step calls both models exactly as before the layer losses: no stack is built."""
    assert LossConfig().outputs() == {
        "output_hidden_states": False, "output_attention_scores": False, "output_values": False
    }
    out = forward(tiny_teacher(), _batch(0), key=None, **LossConfig().outputs())
    assert out.hidden_states is None and out.attention_scores is None and out.values is None
    assert EVERY_TERM.outputs() == {"output_hidden_states": True, "output_attention_scores": True, "output_values": True}


def test_model_stacks_have_transformers_shapes():
    teacher = tiny_teacher(num_hidden_layers=3)
    out = forward(teacher, _batch(0, batch=2, seq=7), key=None, **EVERY_TERM.outputs())
    assert out.hidden_states.shape == (2, 4, 7, 32)
    assert out.attention_scores.shape == (2, 3, 4, 7, 7)
    assert out.values.shape == (2, 3, 7, 32)
    assert all(x.dtype == jnp.float32 for x in (out.hidden_states, out.attention_scores, out.values))
    # The attention probabilities transformers returns are the masked softmax of these scores: layer 1 of a
    # BERT whose weights we know, computed by hand.
    layer = teacher.encoder.layers[1].attention
    x = out.hidden_states[0, 1]
    q = (x @ layer.query_proj.weight.T + layer.query_proj.bias[None, :]).reshape(7, 4, 8)
    k = (x @ layer.key_proj.weight.T + layer.key_proj.bias[None, :]).reshape(7, 4, 8)
    expected = jnp.einsum("qhd,khd->hqk", q, k) / np.sqrt(8)
    np.testing.assert_allclose(out.attention_scores[0, 1], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"alpha_hidden": 1.0}, "layer map is empty"),
        ({"alpha_attention_scores": 1.0, "layer_map": ((0, 0),)}, "pairs no layers"),
        ({"alpha_value_relation": 1.0}, "relation_heads"),
        ({"hidden_loss": "l1"}, "hidden_loss='l1'"),
        ({"alpha_ce": 0.0, "alpha_kl": 0.0, "alpha_cos": 0.0}, "at least one loss weight"),
        ({"alpha_hidden": -1.0}, "non-negative"),
    ],
)
def test_loss_config_errors_name_the_problem(change, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**change)


def test_stages_split_the_terms():
    first, second = EVERY_TERM.intermediate_stage(), EVERY_TERM.prediction_stage()
    assert set(first.terms) == {"loss_cos", "loss_hidden", "loss_attention_scores", "loss_attention_kl",
                                "loss_value_relation"}
    assert set(second.terms) == {"loss_ce", "loss_kl"}
    assert not second.outputs()["output_hidden_states"]


def test_every_term_is_computed_and_finite_for_a_narrow_student():
    teacher = tiny_teacher(num_hidden_layers=4)
    student = _narrow_student()
    batch = _batch(1, real_rows=6)
    projection = linear(16, 32, 0.02, key=jax.random.key(4))
    s = forward(student, batch, key=None, **EVERY_TERM.outputs())
    t = forward(teacher, batch, key=None, **EVERY_TERM.outputs())
    terms = loss_terms(s, teacher_targets(t, EVERY_TERM), projection, batch, EVERY_TERM)
    assert set(terms) == set(EVERY_TERM.terms)
    for name, sums in terms.items():
        assert np.isfinite(float(sums.mean())) and float(sums.mean()) > 0, name


@pytest.mark.parametrize(
    ("losses", "message"),
    [
        (LossConfig(alpha_cos=0.0, alpha_hidden=1.0, layer_map=uniform_layer_map(2, 4)),
         "student width 16 and teacher width 32.*hidden_projection"),
        (LossConfig(alpha_cos=0.1), "student hidden size 16 and teacher hidden size 32.*hidden_projection"),
    ],
)
def test_hidden_losses_across_widths_without_a_projection_are_a_clear_error(losses, message):
    teacher = tiny_teacher(num_hidden_layers=4)
    batch = _batch(1)
    s = forward(_narrow_student(), batch, key=None, **losses.outputs())
    t = forward(teacher, batch, key=None, **losses.outputs())
    with pytest.raises(ValueError, match=message):
        loss_terms(s, teacher_targets(t, losses), None, batch, losses)


def test_projection_maps_every_position():
    projection = linear(16, 32, 0.02, key=jax.random.key(4))
    x = jax.random.normal(jax.random.key(5), (2, 3, 5, 16))
    y = project(projection, x)
    assert y.shape == (2, 3, 5, 32)
    np.testing.assert_allclose(y[1, 2, 4], projection.weight @ x[1, 2, 4] + projection.bias, rtol=1e-6, atol=1e-6)
    assert project(None, x) is x


def test_random_student_has_the_asked_shape_and_transformers_init():
    student = _narrow_student(width=16, layers=3)
    c = student.config
    assert (c.n_layers, c.dim, c.n_heads, c.hidden_dim, c.vocab_size) == (3, 16, 4, 24, 100)
    assert student.num_layers == 3 and student.hidden_size == 16 and student.num_heads == 4
    weight = student.encoder.layers[0].attention.query_proj.weight
    assert 0.015 < float(jnp.std(weight)) < 0.025
    with pytest.raises(ValueError, match="hidden size 18 is not divisible by its 4 heads"):
        random_student(tiny_bert_config(), num_layers=1, hidden_size=18, num_heads=4, intermediate_size=8,
                       num_labels=2, key=jax.random.key(0))


@pytest.mark.slow
def test_projection_is_trained_checkpointed_and_left_out_of_the_saved_student(tmp_path):
    teacher = tiny_teacher(num_hidden_layers=4)
    optimizer, _ = make_optimizer(1e-2, 0.01, 0.0, 10)
    projection = linear(16, 32, 0.02, key=jax.random.key(4))
    state = init_state(_narrow_student(), optimizer, key=jax.random.key(2), projection=projection)
    before_student, before_projection = flat_weights(state.student), flat_weights(state.projection)
    for step in range(2):
        state, metrics = train_step(teacher, state, random_batch(step), optimizer, EVERY_TERM)
        assert set(metrics.terms) == set(EVERY_TERM.terms)
    assert not np.array_equal(flat_weights(state.projection), before_projection)
    assert not np.array_equal(flat_weights(state.student), before_student)

    manager = CheckpointManager(tmp_path / "checkpoints", 2)
    manager.save(2, state, epoch=0, batch_in_epoch=2, val_accuracy=None, metadata={})
    template = init_state(_narrow_student(), optimizer, key=jax.random.key(9), projection=projection)
    restored, _ = manager.restore(manager.latest(), template)
    assert np.array_equal(flat_weights(restored.projection), flat_weights(state.projection))
    assert np.array_equal(flat_weights(restored.student), flat_weights(state.student))
    for a, b in zip(jax.tree.leaves(restored.opt_state), jax.tree.leaves(state.opt_state)):
        assert np.array_equal(np.asarray(a), np.asarray(b))

    de.save_pretrained(state.student, tmp_path / "student")
    hf_model, info = transformers.DistilBertForSequenceClassification.from_pretrained(
        tmp_path / "student", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert hf_model.config.dim == 16


def test_teacher_targets_hold_exactly_what_the_terms_read():
    assert LossConfig(alpha_kl=0.0, alpha_cos=0.0).teacher_fields == ()
    assert LossConfig().teacher_fields == ("logits", "last_hidden_state")
    assert LossConfig(alpha_cos=0.0).teacher_fields == ("logits",)
    teacher = tiny_teacher(num_hidden_layers=4)
    batch = _batch(1)
    t = forward(teacher, batch, key=None, **EVERY_TERM.outputs())
    targets = teacher_targets(t, EVERY_TERM)
    assert EVERY_TERM.teacher_fields == targets._fields
    rows, seq = batch.input_ids.shape
    # uniform_layer_map(2, 4) = (0, 0), (1, 2), (2, 4): three hidden states, two attention layers (2 and 4).
    np.testing.assert_array_equal(targets.hidden_states, t.hidden_states[:, [0, 2, 4]])
    np.testing.assert_array_equal(targets.attention_scores, t.attention_scores[:, [1, 3]])
    np.testing.assert_array_equal(targets.last_attention_scores, t.attention_scores[:, 3:])
    np.testing.assert_array_equal(targets.last_values, t.values[:, 3:])
    assert targets.last_values.shape == (rows, 1, seq, 32)
    np.testing.assert_array_equal(targets.logits, t.logits)
    plain = teacher_targets(t, LossConfig())
    assert plain.hidden_states is plain.attention_scores is plain.last_values is None
