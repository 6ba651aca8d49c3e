"""Distillation losses against independent torch references, plus padding, sharding, stability and shape
checks."""

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
import torch
from jax.sharding import AxisType, PartitionSpec as P

from distilbert_eqx.losses import (
    cosine_loss,
    distillation_loss,
    hard_loss,
    soft_loss,
    softmax_with_temperature,
)

# float32 against a float64 reference. Losses here are O(1), where float32 resolves about 1e-7; larger losses
# or higher temperatures (T**2 scales the rounding) cost precision, equally so in torch's own float32 result.
TOL = 1e-6
BATCH, SEQ, HIDDEN, CLASSES = 8, 12, 32, 2
KEYS = ("student_logits", "teacher_logits", "student_hidden", "teacher_hidden", "labels", "attention_mask")


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
    assert got.dtype == jnp.float32
    assert abs(float(got) - expected) <= TOL


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_soft_loss_matches_torch(seed, temperature):
    x = _inputs(seed)
    expected = _torch_kl(x["student_logits"], x["teacher_logits"], temperature)
    got = soft_loss(_j(x["student_logits"]), _j(x["teacher_logits"]), _ones(), temperature)
    assert got.dtype == jnp.float32
    assert abs(float(got) - expected) <= TOL


@pytest.mark.parametrize("seed", range(3))
def test_soft_loss_matches_torch_many_classes(seed):
    x = _inputs(seed, classes=5)
    expected = _torch_kl(x["student_logits"], x["teacher_logits"], 2.0)
    got = soft_loss(_j(x["student_logits"]), _j(x["teacher_logits"]), _ones(), 2.0)
    assert abs(float(got) - expected) <= TOL


@pytest.mark.parametrize("seed", range(3))
def test_cosine_loss_matches_torch_on_masked_tokens(seed):
    x = _inputs(seed)
    expected = _torch_cosine(x["student_hidden"], x["teacher_hidden"], x["attention_mask"])
    got = cosine_loss(_j(x["student_hidden"]), _j(x["teacher_hidden"]), _j(x["attention_mask"]), _ones())
    assert got.dtype == jnp.float32
    assert abs(float(got) - expected) <= TOL


def _torch_cosine_per_row(s: np.ndarray, t: np.ndarray, mask: np.ndarray, tokens_per_example: float) -> float:
    per_token = torch.nn.CosineEmbeddingLoss(reduction="none")(
        _t(s).flatten(0, 1), _t(t).flatten(0, 1), torch.ones(s.shape[0] * s.shape[1], dtype=torch.float64)
    ).reshape(mask.shape)
    return (per_token * torch.tensor(mask)).sum(dim=1).div(tokens_per_example).mean().item()


@pytest.mark.parametrize("seed", range(3))
# Near the mean length (6.5 here), so that the loss is O(1), where TOL holds (see TOL).
@pytest.mark.parametrize("tokens_per_example", [4.0, 12.0])
def test_cosine_loss_with_tokens_per_example_matches_torch_row_sums(seed, tokens_per_example):
    x = _inputs(seed)
    expected = _torch_cosine_per_row(x["student_hidden"], x["teacher_hidden"], x["attention_mask"],
                                     tokens_per_example)
    got = cosine_loss(_j(x["student_hidden"]), _j(x["teacher_hidden"]), _j(x["attention_mask"]), _ones(),
                      tokens_per_example=tokens_per_example)
    assert got.dtype == jnp.float32
    assert abs(float(got) - expected) <= TOL


def test_cosine_loss_with_tokens_per_example_does_not_depend_on_the_batching():
    """Eight examples in two batches of four, batched by length or alternately: with ``tokens_per_example``
    the two batches' losses add up to the same total either way; the token average does not."""
    x = _inputs(0)
    lengths = x["attention_mask"].sum(axis=1)
    by_length = np.argsort(lengths, kind="stable")
    batchings = {"grouped": [by_length[:4], by_length[4:]], "mixed": [by_length[::2], by_length[1::2]]}
    assert lengths[by_length[:4]].sum() < lengths[by_length[4:]].sum(), "the inputs need lengths that differ"

    def total(rows_per_batch, tokens_per_example):
        four = jnp.ones(4, jnp.float32)
        return sum(
            float(cosine_loss(_j(x["student_hidden"][rows]), _j(x["teacher_hidden"][rows]),
                              _j(x["attention_mask"][rows]), four, tokens_per_example=tokens_per_example))
            for rows in rows_per_batch
        )

    fixed = {name: total(rows, 6.5) for name, rows in batchings.items()}
    assert abs(fixed["grouped"] - fixed["mixed"]) <= TOL
    averaged = {name: total(rows, None) for name, rows in batchings.items()}
    assert abs(averaged["grouped"] - averaged["mixed"]) > 100 * TOL


@pytest.mark.parametrize("tokens_per_example", [0.0, -2.0])
def test_non_positive_tokens_per_example_is_rejected(tokens_per_example):
    x = _inputs(0)
    with pytest.raises(ValueError, match=f"tokens_per_example must be positive or None, got {tokens_per_example}"):
        cosine_loss(_j(x["student_hidden"]), _j(x["teacher_hidden"]), _j(x["attention_mask"]), _ones(),
                    tokens_per_example=tokens_per_example)


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
        assert abs(float(loss)) <= TOL


def test_cosine_loss_ignores_padded_positions():
    x = _inputs(0)
    mask = x["attention_mask"]
    args = (_j(mask), _ones())
    base = cosine_loss(_j(x["student_hidden"]), _j(x["teacher_hidden"]), *args)
    rng = np.random.default_rng(1)
    garbage = 100 * rng.normal(size=x["student_hidden"].shape).astype(np.float32)
    student = np.where(mask[..., None], x["student_hidden"], garbage)
    teacher = np.where(mask[..., None], x["teacher_hidden"], np.float32(np.nan))
    assert float(cosine_loss(_j(student), _j(teacher), *args)) == float(base)


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
        (
            cosine_loss(s_hidden, t_hidden, mask, weights, tokens_per_example=6.5),
            cosine_loss(_j(x["student_hidden"]), _j(x["teacher_hidden"]), _j(x["attention_mask"]), _ones(),
                        tokens_per_example=6.5),
        ),
    ]
    for with_padding, without in pairs:
        assert abs(float(with_padding) - float(without)) <= 1e-7


def test_all_padding_batch_gives_zero_loss_and_finite_grads():
    x = _inputs(0)
    zeros = jnp.zeros(BATCH, jnp.float32)

    def total(s_logits, s_hidden):
        loss, _ = distillation_loss(
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

    loss, grads = jax.value_and_grad(total, argnums=(0, 1))(_j(x["student_logits"]), _j(x["student_hidden"]))
    assert float(loss) == 0.0
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_bfloat16_inputs_give_float32_losses():
    x = _inputs(0)
    bf16 = {k: _j(v).astype(jnp.bfloat16) for k, v in x.items() if v.dtype == np.float32}
    total, parts = distillation_loss(
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
    return distillation_loss(
        _j(x["student_logits"]),
        _j(x["teacher_logits"]),
        _j(x["student_hidden"]),
        _j(x["teacher_hidden"]),
        _j(x["labels"]),
        _j(x["attention_mask"]),
        _ones(),
        **kwargs,
    )


def test_distillation_loss_combines_the_parts():
    x = _inputs(0)
    total, parts = _distill(x, temperature=2.0, alpha_ce=1.0, alpha_kl=0.45, alpha_cos=0.1)
    assert set(parts) == {"loss_ce", "loss_kl", "loss_cos"}
    ce = hard_loss(_j(x["student_logits"]), _j(x["labels"]), _ones())
    kl = soft_loss(_j(x["student_logits"]), _j(x["teacher_logits"]), _ones(), 2.0)
    cos = cosine_loss(_j(x["student_hidden"]), _j(x["teacher_hidden"]), _j(x["attention_mask"]), _ones())
    assert float(parts["loss_ce"]) == float(ce)
    assert float(parts["loss_kl"]) == float(kl)
    assert float(parts["loss_cos"]) == float(cos)
    assert abs(float(total) - float(1.0 * ce + 0.45 * kl + 0.1 * cos)) <= TOL


def test_classic_distillation_loss_needs_no_hidden_states():
    x = _inputs(0)
    alpha = 0.7
    total, parts = distillation_loss(
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


def test_distillation_loss_jits():
    x = _inputs(0)

    @jax.jit
    def step(s_logits, t_logits, s_hidden, t_hidden, labels, mask, weights):
        kw = {"temperature": 2.0, "alpha_ce": 1.0, "alpha_kl": 0.45, "alpha_cos": 0.1}
        return distillation_loss(s_logits, t_logits, s_hidden, t_hidden, labels, mask, weights, **kw)

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


@pytest.mark.parametrize(
    ("alphas", "message"),
    [
        ({"alpha_ce": 0.0, "alpha_kl": 0.0, "alpha_cos": 0.0}, "at least one loss weight must be positive"),
        ({"alpha_ce": -1.0, "alpha_kl": 1.0, "alpha_cos": 0.0}, "non-negative"),
    ],
)
def test_bad_loss_weights_are_rejected(alphas, message):
    with pytest.raises(ValueError, match=message):
        _distill(_inputs(0), temperature=2.0, **alphas)


def test_missing_inputs_for_a_weighted_term_are_rejected():
    x = _inputs(0)
    common = (_j(x["labels"]), _j(x["attention_mask"]), _ones())
    kw = {"temperature": 2.0, "alpha_ce": 1.0, "alpha_kl": 0.5}
    s_logits, t_logits = _j(x["student_logits"]), _j(x["teacher_logits"])
    with pytest.raises(ValueError, match="alpha_kl > 0 needs teacher_logits"):
        distillation_loss(s_logits, None, None, None, *common, alpha_cos=0.0, **kw)
    with pytest.raises(ValueError, match="alpha_cos > 0 needs"):
        distillation_loss(s_logits, t_logits, None, None, *common, alpha_cos=0.1, **kw)


@pytest.mark.parametrize("cosine_tokens_per_example", [None, 6.5])
def test_sharded_losses_equal_the_global_batch_loss(cosine_tokens_per_example):
    """One row per device, the last three rows padding (so three devices hold padding only): with
    ``axis_name`` the loss and its gradient are those of the whole batch, on every device."""
    x = _inputs(0)
    weights = jnp.asarray(np.arange(BATCH) < BATCH - 3, jnp.float32)
    kw = {"temperature": 2.0, "alpha_ce": 1.0, "alpha_kl": 0.45, "alpha_cos": 0.1,
          "cosine_tokens_per_example": cosine_tokens_per_example}
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))

    def sharded(s_logits, s_hidden, *rest):
        def local(s_logits, s_hidden, t_logits, t_hidden, labels, mask, weights):
            total, _ = distillation_loss(
                s_logits, t_logits, s_hidden, t_hidden, labels, mask, weights, axis_name="data", **kw
            )
            return total

        spec = P("data")
        return jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 7, out_specs=P(), check_vma=True)(
            s_logits, s_hidden, *rest
        )

    def single(s_logits, s_hidden, t_logits, t_hidden, labels, mask, weights):
        total, _ = distillation_loss(s_logits, t_logits, s_hidden, t_hidden, labels, mask, weights, **kw)
        return total

    args = tuple(_j(x[k]) for k in ("student_logits", "student_hidden", "teacher_logits", "teacher_hidden"))
    args += (_j(x["labels"]), _j(x["attention_mask"]), weights)
    loss, grads = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(*args)
    expected_loss, expected_grads = jax.value_and_grad(single, argnums=(0, 1))(*args)
    assert abs(float(loss) - float(expected_loss)) <= TOL
    for g, expected in zip(grads, expected_grads):
        assert float(jnp.max(jnp.abs(g - expected))) <= TOL
