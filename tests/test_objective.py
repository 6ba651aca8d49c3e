"""The objective in the train step: which stacks the models return, the learned width projection (trained,
checkpointed, never saved with the student), random-init students, the two-stage loss configs."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
import transformers

import distilbert_eqx as de
from distilbert_eqx.checkpoint import CheckpointManager
from distilbert_eqx.distill import Objective
from distilbert_eqx.distill.layer_map import uniform_layer_map
from distilbert_eqx.distill.objective import project
from distilbert_eqx.distill.terms import CE, KL, AttentionKL, AttentionScores, Cos, Hidden, ValueRelation
from distilbert_eqx.errors import ConfigError
from distilbert_eqx.init import random_student
from distilbert_eqx.models.layers import linear
from distilbert_eqx.train import forward, init_state, make_optimizer, train_step
from helpers import flat_weights, original_objective, random_batch, tiny_bert_config, tiny_teacher

# Every term on, resolved for a 2-layer student of a 4-layer teacher (the map and head count written out).
EVERY_TERM = Objective(
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


def _batch(seed: int, **kwargs):
    """A random padded batch as device arrays (outside jit the losses' annotations want jax arrays)."""
    return jax.tree.map(jnp.asarray, random_batch(seed, **kwargs))


def _narrow_student(width: int = 16, layers: int = 2) -> de.DistilBertForSequenceClassification:
    student = random_student(
        tiny_bert_config(num_hidden_layers=4),
        num_layers=layers,
        hidden_size=width,
        num_heads=4,
        intermediate_size=24,
        num_labels=2,
        key=jax.random.key(3),
    )
    return eqx.nn.inference_mode(student)


def test_plain_recipe_asks_the_models_for_no_stacks():
    """The original recipe's step calls both models exactly as before the layer losses: no stack is built."""
    assert original_objective().outputs() == {}
    out = forward(tiny_teacher(), _batch(0), key=None, **original_objective().outputs())
    assert out.hidden_states is None and out.attention_scores is None and out.values is None
    assert EVERY_TERM.outputs() == {
        "output_hidden_states": True,
        "output_attention_scores": True,
        "output_values": True,
    }


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


# What the terms check when built (settings alone), when bound to a narrow 2-layer student of a 4-layer teacher
# (settings against the models), and what the objective checks of its terms.
@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda s, t: Hidden(1.0, layer_map=()).bind(s, t), "layer map is empty"),
        (lambda s, t: AttentionScores(1.0, layer_map=((0, 0),)).bind(s, t), "pairs no layers"),
        (lambda s, t: ValueRelation(1.0, relation_heads=0), "relation_heads=0 is invalid"),
        (
            lambda s, t: ValueRelation(1.0, relation_heads=3).bind(s, t),
            "relation_heads=3 does not divide the student's hidden size 16",
        ),
        (lambda s, t: Objective([CE(0.0), KL(0.0), Cos(0.0)]), "at least one loss weight"),
        (lambda s, t: Hidden(-1.0), r"hidden: weight=-1.0 is invalid; expected a float >= 0"),
        (lambda s, t: KL(0.5, temperature=0.0), "temperature must be positive"),
        (lambda s, t: Objective([CE(1.0), KL(0.5), CE(0.5)]), r"the loss lists \['ce'\] more than once"),
    ],
)
def test_loss_config_errors_name_the_problem(build, message):
    teacher = tiny_teacher(num_hidden_layers=4)
    with pytest.raises(ConfigError, match=message):
        build(_narrow_student(), teacher)


def test_unknown_hidden_distance_is_rejected():
    """Outside the tests the term's own check says ``hidden_loss='l1' is invalid`` (and config.py refuses the word
    before); under this suite's jaxtyping hook the ``Literal`` annotation of ``distance`` refuses it first."""
    with pytest.raises((ConfigError, jaxtyping.TypeCheckError), match="'l1'"):
        Hidden(1.0, distance="l1")


def test_stages_split_the_terms():
    first, second = EVERY_TERM.stage(prediction_layer=False), EVERY_TERM.stage(prediction_layer=True)
    assert set(first.weights) == {
        "loss_cos",
        "loss_hidden",
        "loss_attention_scores",
        "loss_attention_kl",
        "loss_value_relation",
    }
    assert set(second.weights) == {"loss_ce", "loss_kl"}
    assert "output_hidden_states" not in second.outputs()


def test_every_term_is_computed_and_finite_for_a_narrow_student():
    teacher = tiny_teacher(num_hidden_layers=4)
    student = _narrow_student()
    batch = _batch(1, real_rows=6)
    projection = linear(16, 32, 0.02, key=jax.random.key(4))
    s = forward(student, batch, key=None, **EVERY_TERM.outputs())
    t = forward(teacher, batch, key=None, **EVERY_TERM.outputs())
    terms = EVERY_TERM(s, EVERY_TERM.teacher_targets(t), projection, batch)
    assert set(terms) == set(EVERY_TERM.weights)
    for name, sums in terms.items():
        assert np.isfinite(float(sums.mean())) and float(sums.mean()) > 0, name


@pytest.mark.parametrize(
    ("losses", "message"),
    [
        (
            Objective([CE(1.0), KL(0.45), Hidden(1.0, layer_map=uniform_layer_map(2, 4))]),
            "student width 16 and teacher width 32.*hidden_projection",
        ),
        (original_objective(), "student hidden size 16 and teacher hidden size 32.*hidden_projection"),
    ],
)
def test_hidden_losses_across_widths_without_a_projection_are_a_clear_error(losses, message):
    teacher = tiny_teacher(num_hidden_layers=4)
    batch = _batch(1)
    s = forward(_narrow_student(), batch, key=None, **losses.outputs())
    t = forward(teacher, batch, key=None, **losses.outputs())
    with pytest.raises(ValueError, match=message):
        losses(s, losses.teacher_targets(t), None, batch)


def test_projection_maps_every_position():
    projection = linear(16, 32, 0.02, key=jax.random.key(4))
    x = jax.random.normal(jax.random.key(5), (2, 3, 5, 16))
    y = project(projection, x)
    assert y.shape == (2, 3, 5, 32)
    np.testing.assert_allclose(
        y[1, 2, 4], projection.weight @ x[1, 2, 4] + projection.bias, rtol=1e-6, atol=1e-6
    )
    assert project(None, x) is x


def test_random_student_has_the_asked_shape_and_transformers_init():
    student = _narrow_student(width=16, layers=3)
    c = student.config
    assert (c.n_layers, c.dim, c.n_heads, c.hidden_dim, c.vocab_size) == (3, 16, 4, 24, 100)
    assert student.num_layers == 3 and student.hidden_size == 16 and student.num_heads == 4
    weight = student.encoder.layers[0].attention.query_proj.weight
    assert 0.015 < float(jnp.std(weight)) < 0.025
    with pytest.raises(ValueError, match="hidden size 18 is not divisible by its 4 heads"):
        random_student(
            tiny_bert_config(),
            num_layers=1,
            hidden_size=18,
            num_heads=4,
            intermediate_size=8,
            num_labels=2,
            key=jax.random.key(0),
        )


@pytest.mark.slow
def test_projection_is_trained_checkpointed_and_left_out_of_the_saved_student(tmp_path):
    teacher = tiny_teacher(num_hidden_layers=4)
    optimizer, _ = make_optimizer(1e-2, 0.01, 0.0, 10)
    projection = linear(16, 32, 0.02, key=jax.random.key(4))
    state = init_state(_narrow_student(), optimizer, key=jax.random.key(2), projection=projection)
    before_student, before_projection = flat_weights(state.student), flat_weights(state.projection)
    for step in range(2):
        state, metrics = train_step(teacher, state, random_batch(step), optimizer, EVERY_TERM)
        assert set(metrics.terms) == set(EVERY_TERM.weights)
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


def _kept(objective: Objective, teacher_out: de.ClassifierOutput) -> dict[str, tuple[str, ...]]:
    """The fields each term keeps of the teacher, by term name."""
    return {term: tuple(fields) for term, fields in objective.teacher_targets(teacher_out).items()}


def test_teacher_targets_hold_exactly_what_the_terms_read():
    teacher = tiny_teacher(num_hidden_layers=4)
    batch = _batch(1)
    t = forward(teacher, batch, key=None, **EVERY_TERM.outputs())
    ce_only = Objective([CE(1.0)])
    assert not ce_only.needs_teacher and _kept(ce_only, t) == {}
    assert _kept(original_objective(), t) == {"kl": ("logits",), "cos": ("last_hidden_state",)}
    assert _kept(Objective([CE(1.0), KL(0.45)]), t) == {"kl": ("logits",)}
    targets = EVERY_TERM.teacher_targets(t)
    assert _kept(EVERY_TERM, t) == {
        "kl": ("logits",),
        "cos": ("last_hidden_state",),
        "hidden": ("hidden_states",),
        "attention_scores": ("attention_scores",),
        "attention_kl": ("last_attention_scores",),
        "value_relation": ("last_values",),
    }
    rows, seq = batch.input_ids.shape
    # uniform_layer_map(2, 4) = (0, 0), (1, 2), (2, 4): three hidden states, two attention layers (2 and 4).
    np.testing.assert_array_equal(targets["hidden"]["hidden_states"], t.hidden_states[:, [0, 2, 4]])
    np.testing.assert_array_equal(
        targets["attention_scores"]["attention_scores"], t.attention_scores[:, [1, 3]]
    )
    np.testing.assert_array_equal(targets["attention_kl"]["last_attention_scores"], t.attention_scores[:, 3:])
    np.testing.assert_array_equal(targets["value_relation"]["last_values"], t.values[:, 3:])
    assert targets["value_relation"]["last_values"].shape == (rows, 1, seq, 32)
    np.testing.assert_array_equal(targets["kl"]["logits"], t.logits)
    np.testing.assert_array_equal(targets["cos"]["last_hidden_state"], t.last_hidden_state)
