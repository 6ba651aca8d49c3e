"""The hashed dropout mask against what dropout must be: kept with probability 1 - p, scaled by 1 / (1 - p),
a function of the key, uncorrelated across keys and positions; switched off like ``eqx.nn.Dropout``."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distilbert_eqx.models.dropout import Dropout, hashed_bits

N = 1_000_000


def test_kept_fraction_and_scale():
    x = jnp.ones(N)
    for p in (0.1, 0.2, 0.5):
        out = np.asarray(Dropout(p)(x, key=jax.random.key(0)))
        kept = out != 0
        # Binomial(N, 1 - p): 5 standard deviations.
        assert abs(kept.mean() - (1 - p)) <= 5 * np.sqrt(p * (1 - p) / N), p
        np.testing.assert_allclose(out[kept], 1 / (1 - p), rtol=1e-6)
    assert np.asarray(Dropout(0.1)(x.astype(jnp.bfloat16), key=jax.random.key(0))).dtype == jnp.bfloat16


def test_bits_are_uniform_and_uncorrelated_across_keys_and_positions():
    keys = jax.random.split(jax.random.key(1), 2)
    a, b = (np.asarray(hashed_bits(k, (N,))).astype(np.float64) / 2**32 for k in keys)
    for u in (a, b):
        counts = np.histogram(u, bins=16, range=(0, 1))[0]
        expected = N / 16
        assert ((counts - expected) ** 2 / expected).sum() < 60  # chi-square, 15 dof: p < 1e-6 above 60
    bound = 5 / np.sqrt(N)
    assert abs(np.corrcoef(a, b)[0, 1]) < bound  # two keys
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < bound  # neighbouring positions
    # Every bit is fair.
    bits = np.asarray(hashed_bits(keys[0], (N,)))
    ones = ((bits[:, None] >> np.arange(32, dtype=np.uint32)) & 1).mean(axis=0)
    assert np.all(np.abs(ones - 0.5) < 5 * 0.5 / np.sqrt(N))


def test_the_mask_is_a_function_of_key_and_shape_also_under_vmap_and_jit():
    x = jnp.ones((4, 6, 6))
    keys = jax.random.split(jax.random.key(2), 4)
    layer = Dropout(0.3)
    rows = [np.asarray(layer(x[i], key=keys[i])) for i in range(4)]
    batched = np.asarray(eqx.filter_jit(jax.vmap(lambda xi, k: layer(xi, key=k)))(x, keys))
    np.testing.assert_array_equal(batched, np.stack(rows))
    assert not np.array_equal(rows[0] != 0, rows[1] != 0)


def test_switched_off_as_eqx_dropout_is():
    x = jnp.arange(1.0, 9.0)
    assert eqx.nn.inference_mode(Dropout(0.5)).inference
    np.testing.assert_array_equal(eqx.nn.inference_mode(Dropout(0.5))(x), x)
    np.testing.assert_array_equal(Dropout(0.0)(x), x)
    np.testing.assert_array_equal(Dropout(0.5)(x, inference=True), x)
    with pytest.raises(RuntimeError, match="requires a key"):
        Dropout(0.5)(x)


def test_gradient_is_the_mask_over_the_keep_probability():
    x = jnp.linspace(1.0, 2.0, 1000)
    key = jax.random.key(3)
    layer = Dropout(0.25)
    grad = np.asarray(jax.grad(lambda x: layer(x, key=key).sum())(x))
    kept = np.asarray(layer(x, key=key)) != 0
    np.testing.assert_allclose(grad, np.where(kept, 1 / 0.75, 0.0), rtol=1e-6)
