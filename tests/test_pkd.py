"""BERT-PKD's patient loss against its formula written in PyTorch (Sun et al. 2019 and the authors' code):
``F.mse_loss(F.normalize(h_S W_h), F.normalize(h_T))`` over the real rows' [CLS] states of the mapped layers."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distilbert_eqx.distill.layer_map import uniform_layer_map
from distilbert_eqx.distill.objective import project
from distilbert_eqx.distill.terms import PKD
from distilbert_eqx.errors import ConfigError
from distilbert_eqx.models import ClassifierOutput
from distilbert_eqx.models.layers import linear
from helpers import random_batch, tiny_student, tiny_teacher

BATCH, REAL_ROWS, SEQ, S_HIDDEN, T_HIDDEN = 6, 4, 5, 16, 32
PAIRS = ((1, 2), (2, 4))  # student states 1 and 2 against teacher states 2 and 4


def _outputs(hidden_states):
    """Batched model outputs holding ``hidden_states`` (the term reads nothing else)."""
    logits = jnp.zeros((hidden_states.shape[0], 2))
    return jax.vmap(lambda l, h: ClassifierOutput(l, h[-1], hidden_states=h))(logits, hidden_states)


def test_pkd_value_and_gradients_equal_the_pytorch_formula():
    rng = np.random.default_rng(0)
    student_states = rng.normal(size=(BATCH, 3, SEQ, S_HIDDEN)).astype(np.float32)
    teacher_states = rng.normal(size=(BATCH, 5, SEQ, T_HIDDEN)).astype(np.float32)
    projection = linear(S_HIDDEN, T_HIDDEN, 0.2, key=jax.random.key(1))
    batch = jax.tree.map(jnp.asarray, random_batch(2, batch=BATCH, seq=SEQ, real_rows=REAL_ROWS))
    term = PKD(weight=1.0, layer_map=PAIRS)
    kept = term.keep(_outputs(jnp.asarray(teacher_states)))

    def ours(states, weight):
        proj = eqx.tree_at(lambda m: m.weight, projection, weight)
        return term(_outputs(states), kept, batch, lambda x: project(proj, x)).mean()

    value, (grad_states, grad_weight) = jax.value_and_grad(ours, argnums=(0, 1))(
        jnp.asarray(student_states), projection.weight
    )

    s = torch.tensor(student_states, requires_grad=True)
    w = torch.tensor(np.asarray(projection.weight), requires_grad=True)
    b = torch.tensor(np.asarray(projection.bias))
    t = torch.tensor(teacher_states)
    s_cls = s[:REAL_ROWS, [p for p, _ in PAIRS], 0] @ w.T + b
    t_cls = t[:REAL_ROWS, [q for _, q in PAIRS], 0]
    reference = F.mse_loss(F.normalize(s_cls, p=2, dim=-1), F.normalize(t_cls, p=2, dim=-1))
    reference.backward()

    np.testing.assert_allclose(float(value), reference.item(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(grad_states), s.grad.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(grad_weight), w.grad.numpy(), rtol=1e-4, atol=1e-7)
    assert float(value) > 1e-3  # the states differ: the comparison above is not of two zeros


def test_pkd_skip_pairs_the_intermediate_layers_and_needs_one():
    teacher = tiny_teacher(num_hidden_layers=4)
    bound = PKD().bind(tiny_student(teacher, layers=(0, 1, 2)), teacher)
    assert uniform_layer_map(3, 4) == ((0, 0), (1, 1), (2, 2), (3, 4))
    assert bound.layer_map == ((1, 1), (2, 2))
    assert bound.weight == 100.0
    with pytest.raises(ConfigError, match="no intermediate layer"):
        PKD().bind(tiny_student(teacher, layers=(0,)), teacher)
