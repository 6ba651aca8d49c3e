"""Distillation losses against independent torch references, plus padding, sharding, stability and shape
checks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
import torch
from jax.sharding import AxisType, PartitionSpec as P

from distilbert_eqx.batch import Batch
from distilbert_eqx.distill import Objective, WeightedSum
from distilbert_eqx.distill.terms import CE, KL, Cos
from distilbert_eqx.distill.terms.ce import hard_loss
from distilbert_eqx.distill.terms.cos import cosine_loss
from distilbert_eqx.distill.terms.kl import soft_loss, softmax_with_temperature
from distilbert_eqx.errors import ConfigError
from distilbert_eqx.models import ClassifierOutput
from helpers import max_diff

# float32 against a float64 reference. Losses here are O(1), where float32 resolves about 1e-7; larger losses
# or higher temperatures (T**2 scales the rounding) cost precision, equally so in torch's own float32 result.
TOL = 1e-6
BATCH, SEQ, HIDDEN, CLASSES = 8, 12, 32, 2
KEYS = ("student_logits", "teacher_logits", "student_hidden", "teacher_hidden", "labels", "attention_mask")
ALPHAS = {"alpha_ce": 1.0, "alpha_kl": 0.45, "alpha_cos": 0.1}
# Two rows per device: with the last 3 of the 8 rows padding, device 3 holds padding rows only.
MESH_DEVICES = 4


def _inputs(seed: int, classes: int = CLASSES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, SEQ + 1, size=BATCH)
    student_hidden = rng.normal(size=(BATCH, SEQ, HIDDEN))
    # A random multiple of the student's state plus noise: cosines spread over (-1, 1), not just near 0.
    scale = 2 * rng.normal(size=(BATCH, SEQ, 1))
    teacher_hidden = scale * student_hidden + rng.normal(size=(BATCH, SEQ, HIDDEN))
    return {
        "student_logits": (2 * rng.normal(size=(BATCH, classes))).astype(np.float32),
        "teacher_logits": (2 * rng.normal(size=(BATCH, classes))).astype(np.float32),
        "student_hidden": student_hidden.astype(np.float32),
        "teacher_hidden": teacher_hidden.astype(np.float32),
        "labels": rng.integers(0, classes, size=BATCH).astype(np.int32),
        "attention_mask": np.arange(SEQ)[None, :] < lengths[:, None],
    }


def _j(x: np.ndarray) -> jax.Array:
    return jnp.asarray(x)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _objective(*, temperature: float, alpha_ce: float, alpha_kl: float, alpha_cos: float) -> Objective:
    """The original three terms with these weights (a term of weight 0 is dropped)."""
    return Objective([CE(alpha_ce), KL(alpha_kl, temperature=temperature), Cos(alpha_cos)])


def _outputs(logits: jax.Array, hidden: jax.Array | None) -> ClassifierOutput:
    """Batched model outputs holding these arrays, built row by row as the models return them (the output's
    annotations are per example); without ``hidden`` the output has no last hidden state at all."""
    if hidden is None:
        out = jax.vmap(lambda row: ClassifierOutput(row, jnp.zeros((1, 1), row.dtype)))(logits)
        return eqx.tree_at(lambda o: o.last_hidden_state, out, None)
    return jax.vmap(ClassifierOutput)(logits, hidden)


def _terms(
    objective: Objective, s_logits, t_logits, s_hidden, t_hidden, labels, mask, weights
) -> dict[str, WeightedSum]:
    """``objective``'s sums from raw arrays, as the step computes them from the two models' outputs: what the
    terms keep of the teacher, then each term on the student."""
    ids = jnp.zeros(mask.shape, jnp.int32)
    batch = Batch(ids, mask, ids, labels, weights)
    teacher = objective.teacher_targets(_outputs(t_logits, t_hidden)) if objective.needs_teacher else None
    return objective(_outputs(s_logits, s_hidden), teacher, None, batch)


def _total_loss(*inputs: jax.Array | None, **weights: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``objective.total(objective(...))`` on one device for the three original terms, from the arrays
    ``student_logits, teacher_logits, student_hidden, teacher_hidden, labels, attention_mask, weights``."""
    objective = _objective(**weights)
    return objective.total(_terms(objective, *inputs))


def _torch_ce(logits: np.ndarray, labels: np.ndarray) -> float:
    return torch.nn.CrossEntropyLoss()(_t(logits), torch.tensor(labels, dtype=torch.long)).item()


def _ones() -> jax.Array:
    return jnp.ones(BATCH, jnp.float32)


def _torch_kl(s: np.ndarray, t: np.ndarray, temperature: float) -> float:
    log_q = torch.log_softmax(_t(s) / temperature, dim=-1)
    p = torch.softmax(_t(t) / temperature, dim=-1)
    return torch.nn.KLDivLoss(reduction="batchmean")(log_q, p).item() * temperature**2


def _torch_cosine(s: np.ndarray, t: np.ndarray, mask: np.ndarray) -> float:
    selected_s, selected_t = _t(s)[torch.tensor(mask)], _t(t)[torch.tensor(mask)]
    target = torch.ones(selected_s.shape[0], dtype=torch.float64)
    return torch.nn.CosineEmbeddingLoss()(selected_s, selected_t, target).item()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("classes", [2, 5])
def test_hard_loss_matches_torch(seed, classes):
    x = _inputs(seed, classes)
    expected = _torch_ce(x["student_logits"], x["labels"])
    got = hard_loss(_j(x["student_logits"]), _j(x["labels"]), _ones())
    assert got.total.dtype == got.weight.dtype == jnp.float32
    assert abs(float(got.mean()) - expected) <= TOL


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_soft_loss_matches_torch(seed, temperature):
    x = _inputs(seed)
    expected = _torch_kl(x["student_logits"], x["teacher_logits"], temperature)
    got = soft_loss(_j(x["student_logits"]), _j(x["teacher_logits"]), _ones(), temperature)
    assert got.total.dtype == got.weight.dtype == jnp.float32
    assert abs(float(got.mean()) - expected) <= TOL


@pytest.mark.parametrize("seed", range(3))
def test_soft_loss_matches_torch_many_classes(seed):
    x = _inputs(seed, classes=5)
    expected = _torch_kl(x["student_logits"], x["teacher_logits"], 2.0)
    got = soft_loss(_j(x["student_logits"]), _j(x["teacher_logits"]), _ones(), 2.0)
    assert abs(float(got.mean()) - expected) <= TOL


@pytest.mark.parametrize("seed", range(3))
def test_cosine_loss_matches_torch_on_masked_tokens(seed):
    x = _inputs(seed)
    expected = _torch_cosine(x["student_hidden"], x["teacher_hidden"], x["attention_mask"])
    got = cosine_loss(_j(x["student_hidden"]), _j(x["teacher_hidden"]), _j(x["attention_mask"]), _ones())
    assert got.total.dtype == got.weight.dtype == jnp.float32
    assert abs(float(got.mean()) - expected) <= TOL


@pytest.mark.parametrize(
    ("temperature", "expected", "atol"),
    [(1.0, [0.9997, 0.0003], 1e-3), (2.0, [0.982, 0.018], 1e-3), (5.0, [0.83, 0.17], 5e-3)],
)
def test_softmax_with_temperature_worked_example(temperature, expected, atol):
    probs = softmax_with_temperature(jnp.array([10.0, 2.0]), temperature)
    np.testing.assert_allclose(np.asarray(probs), expected, atol=atol)


def test_softmax_with_temperature_is_float32_for_bfloat16():
    probs = softmax_with_temperature(jnp.array([[10.0, 2.0]], jnp.bfloat16), 2.0)
    assert probs.dtype == jnp.float32


def test_kl_is_zero_for_identical_logits():
    x = _inputs(0, classes=5)
    for temperature in (1.0, 2.0, 5.0):
        loss = soft_loss(_j(x["teacher_logits"]), _j(x["teacher_logits"]), _ones(), temperature)
        assert abs(float(loss.mean())) <= TOL


def test_cosine_loss_ignores_padded_positions():
    x = _inputs(0)
    mask = x["attention_mask"]
    args = (_j(mask), _ones())
    base = cosine_loss(_j(x["student_hidden"]), _j(x["teacher_hidden"]), *args)
    rng = np.random.default_rng(1)
    garbage = 100 * rng.normal(size=x["student_hidden"].shape).astype(np.float32)
    student = np.where(mask[..., None], x["student_hidden"], garbage)
    teacher = np.where(mask[..., None], x["teacher_hidden"], np.float32(np.nan))
    assert float(cosine_loss(_j(student), _j(teacher), *args).mean()) == float(base.mean())


def test_padding_rows_do_not_change_any_loss():
    x = _inputs(0)
    rng = np.random.default_rng(1)
    pad = 3

    def padded(a: np.ndarray, fill: np.ndarray) -> jax.Array:
        return _j(np.concatenate([a, fill]))

    def garbage(a: np.ndarray) -> np.ndarray:
        return (50 * rng.normal(size=(pad, *a.shape[1:]))).astype(np.float32)

    weights = jnp.concatenate([_ones(), jnp.zeros(pad, jnp.float32)])
    mask = padded(x["attention_mask"], np.ones((pad, SEQ), bool))
    labels = padded(x["labels"], np.ones(pad, np.int32))
    s_logits, t_logits = (padded(x[k], garbage(x[k])) for k in ("student_logits", "teacher_logits"))
    s_hidden, t_hidden = (padded(x[k], garbage(x[k])) for k in ("student_hidden", "teacher_hidden"))

    pairs = [
        (hard_loss(s_logits, labels, weights), hard_loss(_j(x["student_logits"]), _j(x["labels"]), _ones())),
        (
            soft_loss(s_logits, t_logits, weights, 2.0),
            soft_loss(_j(x["student_logits"]), _j(x["teacher_logits"]), _ones(), 2.0),
        ),
        (
            cosine_loss(s_hidden, t_hidden, mask, weights),
            cosine_loss(_j(x["student_hidden"]), _j(x["teacher_hidden"]), _j(x["attention_mask"]), _ones()),
        ),
    ]
    for with_padding, without in pairs:
        assert abs(float(with_padding.mean()) - float(without.mean())) <= 1e-7


def test_all_padding_batch_gives_zero_loss_and_finite_grads():
    x = _inputs(0)
    zeros = jnp.zeros(BATCH, jnp.float32)

    def total(s_logits, s_hidden):
        loss, _ = _total_loss(
            s_logits,
            _j(x["teacher_logits"]),
            s_hidden,
            _j(x["teacher_hidden"]),
            _j(x["labels"]),
            _j(x["attention_mask"]),
            zeros,
            temperature=2.0,
            alpha_ce=1.0,
            alpha_kl=0.45,
            alpha_cos=0.1,
        )
        return loss

    value_and_grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))
    loss, grads = value_and_grads(_j(x["student_logits"]), _j(x["student_hidden"]))
    assert float(loss) == 0.0
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_bfloat16_inputs_give_float32_losses():
    x = _inputs(0)
    bf16 = {k: _j(v).astype(jnp.bfloat16) for k, v in x.items() if v.dtype == np.float32}
    total, parts = _total_loss(
        bf16["student_logits"],
        bf16["teacher_logits"],
        bf16["student_hidden"],
        bf16["teacher_hidden"],
        _j(x["labels"]),
        _j(x["attention_mask"]),
        _ones().astype(jnp.bfloat16),
        temperature=2.0,
        alpha_ce=1.0,
        alpha_kl=0.45,
        alpha_cos=0.1,
    )
    assert total.dtype == jnp.float32
    assert all(v.dtype == jnp.float32 for v in parts.values())


def _distill(x: dict[str, np.ndarray], **kwargs):
    return _total_loss(
        _j(x["student_logits"]),
        _j(x["teacher_logits"]),
        _j(x["student_hidden"]),
        _j(x["teacher_hidden"]),
        _j(x["labels"]),
        _j(x["attention_mask"]),
        _ones(),
        **kwargs,
    )


def test_objective_total_combines_the_parts():
    x = _inputs(0)
    total, parts = _distill(x, temperature=2.0, alpha_ce=1.0, alpha_kl=0.45, alpha_cos=0.1)
    assert set(parts) == {"loss_ce", "loss_kl", "loss_cos"}
    ce = hard_loss(_j(x["student_logits"]), _j(x["labels"]), _ones()).mean()
    kl = soft_loss(_j(x["student_logits"]), _j(x["teacher_logits"]), _ones(), 2.0).mean()
    cos = cosine_loss(_j(x["student_hidden"]), _j(x["teacher_hidden"]), _j(x["attention_mask"]), _ones())
    cos = cos.mean()
    assert float(parts["loss_ce"]) == float(ce)
    assert float(parts["loss_kl"]) == float(kl)
    assert float(parts["loss_cos"]) == float(cos)
    assert abs(float(total) - float(1.0 * ce + 0.45 * kl + 0.1 * cos)) <= TOL


def test_classic_distillation_needs_no_hidden_states():
    x = _inputs(0)
    alpha = 0.7
    total, parts = _total_loss(
        _j(x["student_logits"]),
        _j(x["teacher_logits"]),
        None,
        None,
        _j(x["labels"]),
        _j(x["attention_mask"]),
        _ones(),
        temperature=2.0,
        alpha_ce=1 - alpha,
        alpha_kl=alpha,
        alpha_cos=0.0,
    )
    assert set(parts) == {"loss_ce", "loss_kl"}
    expected = alpha * _torch_kl(x["student_logits"], x["teacher_logits"], 2.0) + (1 - alpha) * _torch_ce(
        x["student_logits"], x["labels"]
    )
    assert abs(float(total) - expected) <= TOL


def test_objective_total_jits():
    x = _inputs(0)

    @jax.jit
    def step(s_logits, t_logits, s_hidden, t_hidden, labels, mask, weights):
        kw = {"temperature": 2.0, "alpha_ce": 1.0, "alpha_kl": 0.45, "alpha_cos": 0.1}
        return _total_loss(s_logits, t_logits, s_hidden, t_hidden, labels, mask, weights, **kw)

    total, _ = step(*(_j(x[k]) for k in KEYS), _ones())
    eager, _ = _distill(x, temperature=2.0, alpha_ce=1.0, alpha_kl=0.45, alpha_cos=0.1)
    assert abs(float(total) - float(eager)) <= TOL


def test_mismatched_hidden_sizes_raise_a_clear_error():
    x = _inputs(0)
    teacher = np.zeros((BATCH, SEQ, 48), np.float32)
    with pytest.raises(ValueError, match=r"student hidden size 32 and teacher hidden size 48"):
        cosine_loss(_j(x["student_hidden"]), _j(teacher), _j(x["attention_mask"]), _ones())


def test_wrong_rank_input_is_caught_by_jaxtyping():
    x = _inputs(0)
    with pytest.raises(jaxtyping.TypeCheckError):
        hard_loss(_j(x["student_logits"])[0], _j(x["labels"]), _ones())
    with pytest.raises(jaxtyping.TypeCheckError):
        cosine_loss(_j(x["student_hidden"])[0], _j(x["teacher_hidden"])[0], _j(x["attention_mask"]), _ones())


def test_mismatched_batch_is_caught_by_jaxtyping():
    x = _inputs(0)
    with pytest.raises(jaxtyping.TypeCheckError):
        soft_loss(_j(x["student_logits"]), _j(x["teacher_logits"])[:-1], _ones(), 2.0)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_non_positive_temperature_is_rejected(temperature):
    x = _inputs(0)
    with pytest.raises(ValueError, match="temperature must be positive"):
        soft_loss(_j(x["student_logits"]), _j(x["teacher_logits"]), _ones(), temperature)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_non_positive_temperature_is_rejected_by_the_term(temperature):
    with pytest.raises(ConfigError, match="temperature must be positive"):
        KL(0.5, temperature=temperature)


@pytest.mark.parametrize(
    ("alphas", "message"),
    [
        ({"alpha_ce": 0.0, "alpha_kl": 0.0, "alpha_cos": 0.0}, "at least one loss weight must be positive"),
        (
            {"alpha_ce": -1.0, "alpha_kl": 1.0, "alpha_cos": 0.0},
            r"ce: weight=-1.0 is invalid; expected a float >= 0",
        ),
    ],
)
def test_bad_loss_weights_are_rejected(alphas, message):
    with pytest.raises(ConfigError, match=message):
        _distill(_inputs(0), temperature=2.0, **alphas)


def test_missing_inputs_for_a_weighted_term_are_rejected():
    """A term that reads the teacher gets no teacher outputs, or targets kept for other terms: an error, never
    a loss computed without them."""
    x = _inputs(0)
    ids = jnp.zeros((BATCH, SEQ), jnp.int32)
    batch = Batch(ids, _j(x["attention_mask"]), ids, _j(x["labels"]), _ones())
    student = _outputs(_j(x["student_logits"]), _j(x["student_hidden"]))
    teacher = _outputs(_j(x["teacher_logits"]), _j(x["teacher_hidden"]))
    with_kl = _objective(temperature=2.0, alpha_ce=1.0, alpha_kl=0.5, alpha_cos=0.0)
    with pytest.raises(ValueError, match=r"the terms \('ce', 'kl'\) need the teacher's outputs"):
        with_kl(student, None, None, batch)
    with_cos = _objective(temperature=2.0, alpha_ce=1.0, alpha_kl=0.5, alpha_cos=0.1)
    with pytest.raises(ValueError, match=r"hold \['kl'\] but not what \['cos'\] keep"):
        with_cos(student, with_kl.teacher_targets(teacher), None, batch)


def _mesh() -> jax.sharding.Mesh:
    return jax.make_mesh(
        (MESH_DEVICES,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:MESH_DEVICES]
    )


def _padded_weights(real_rows: int) -> jax.Array:
    return jnp.asarray(np.arange(BATCH) < real_rows, jnp.float32)


@pytest.mark.parametrize("real_rows", [BATCH, BATCH - 3, 1])
def test_summed_terms_on_a_mesh_equal_the_global_batch_loss(real_rows):
    """The step body's recipe, on 4 devices of 2 rows each: ``psum`` of every device's ``objective(...)``
    sums, then ``objective.total``, gives the single-device ``objective.total(objective(...))`` of the whole
    batch, its parts and its gradient. With 5 real rows the last device holds padding only, with 1 real row
    the last three do.

    Under ``check_vma=True``, ``out_specs=P()`` accepts only values that cannot differ between devices, so
    every device has this loss."""
    x = _inputs(0)
    mesh = _mesh()

    def sharded(s_logits, s_hidden, t_logits, t_hidden, labels, mask, weights):
        def local(s_logits, s_hidden, t_logits, t_hidden, labels, mask, weights):
            objective = _objective(temperature=2.0, **ALPHAS)
            terms = _terms(objective, s_logits, t_logits, s_hidden, t_hidden, labels, mask, weights)
            return objective.total(jax.lax.psum(terms, "data"))

        spec = P("data")
        return jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 7, out_specs=P(), check_vma=True)(
            s_logits, s_hidden, t_logits, t_hidden, labels, mask, weights
        )

    def single(s_logits, s_hidden, t_logits, t_hidden, labels, mask, weights):
        return _total_loss(
            s_logits, t_logits, s_hidden, t_hidden, labels, mask, weights, temperature=2.0, **ALPHAS
        )

    args = tuple(_j(x[k]) for k in ("student_logits", "student_hidden", "teacher_logits", "teacher_hidden"))
    args += (_j(x["labels"]), _j(x["attention_mask"]), _padded_weights(real_rows))
    (loss, parts), grads = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1), has_aux=True))(*args)
    expected = jax.value_and_grad(single, argnums=(0, 1), has_aux=True)(*args)
    (expected_loss, expected_parts), expected_grads = expected
    assert abs(float(loss) - float(expected_loss)) <= TOL
    assert set(parts) == set(expected_parts) == {"loss_ce", "loss_kl", "loss_cos"}
    for name in parts:
        assert abs(float(parts[name]) - float(expected_parts[name])) <= TOL
    for g, expected in zip(grads, expected_grads):
        assert max_diff(g, expected) <= TOL


# Every cross-device primitive a loss could use to normalise over the global batch.
COLLECTIVES = ("psum", "pmean", "pmax", "pmin", "all_gather", "all_to_all", "ppermute", "reduce_scatter")


def _each_loss(s_logits, t_logits, s_hidden, t_hidden, labels, mask, weights) -> dict[str, jax.Array]:
    return {
        "hard": hard_loss(s_logits, labels, weights).mean(),
        "soft": soft_loss(s_logits, t_logits, weights, 2.0).mean(),
        "cosine": cosine_loss(s_hidden, t_hidden, mask, weights).mean(),
        "distillation": _total_loss(
            s_logits, t_logits, s_hidden, t_hidden, labels, mask, weights, temperature=2.0, **ALPHAS
        )[0],
    }


def test_losses_do_no_collectives_so_each_device_gets_its_local_mean():
    """Inside ``shard_map`` without a ``psum``, every loss gives each device the mean over its own 2 rows (0
    on the device of padding rows only), and the traced program holds no collective: summing across devices
    is left to the step body."""
    x = _inputs(0)
    args = tuple(_j(x[k]) for k in KEYS) + (_padded_weights(BATCH - 3),)
    per_device = jax.jit(
        jax.shard_map(
            lambda *a: {name: loss[None] for name, loss in _each_loss(*a).items()},
            mesh=_mesh(),
            in_specs=(P("data"),) * 7,
            out_specs=P("data"),
            check_vma=True,
        )
    )
    program = str(jax.make_jaxpr(per_device)(*args))
    assert "shard_map" in program and not [c for c in COLLECTIVES if c in program], program

    got = per_device(*args)
    one_device = jax.jit(_each_loss)
    local = [one_device(*(a[rows] for a in args)) for rows in np.split(np.arange(BATCH), MESH_DEVICES)]
    whole_batch = one_device(*args)
    for name in got:
        local_means = np.array([float(means[name]) for means in local])
        assert local_means[-1] == 0.0, name
        assert np.max(np.abs(np.asarray(got[name]) - local_means)) <= TOL, name
        # So that this test can tell local means from the global one.
        assert np.max(np.abs(local_means - float(whole_batch[name]))) > 100 * TOL, name
