"""Dropout whose mask is a counter-based hash of the key, not ``jax.random``'s threefry: fast to compile.

``eqx.nn.Dropout`` draws its mask with ``jax.random.bernoulli``. XLA:CPU compiles a threefry mask of one shape in
1-2 s, and a train step has one mask shape per dropout site (embeddings and feed-forward, attention
probabilities, the head), so dropout was the larger part of compiling each step (docs/performance.md). Here
each element's 32 random bits are ``lowbias32`` (Chris Wellons' integer hash) of its index, mixed twice with the
key's two 32-bit words: a few multiplies and shifts that compile in milliseconds. The keys stay JAX keys,
split as before (one per row, per layer, per site), so a mask depends only on its key and shape, as with
``jax.random``. The hash is not a cryptographic generator; for dropout masks what matters is that the kept
fraction is ``1 - p`` and that masks of different keys and positions are uncorrelated, which the tests check.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray, UInt32


def _lowbias32(x: UInt32[Array, "*shape"]) -> UInt32[Array, "*shape"]:
    """A 32-bit integer hash with low bias (Wellons, hash-prospector): every input bit flips each output bit
    with probability close to 1/2."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def hashed_bits(key: PRNGKeyArray, shape: tuple[int, ...]) -> UInt32[Array, "*shape"]:
    """32 pseudo-random bits per element of ``shape``, a function of ``key`` and the element's position."""
    words = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
    size = math.prod(shape)
    if size >= 2**32:
        raise ValueError(f"a mask of {size} elements is larger than the hash's 32-bit counter")
    counter = jax.lax.iota(jnp.uint32, size).reshape(shape)
    return _lowbias32(_lowbias32(counter ^ words[0]) + words[-1])


class Dropout(eqx.Module):
    """Inverted dropout with ``eqx.nn.Dropout``'s fields and behaviour (``eqx.nn.inference_mode`` switches it off;
    ``p = 0`` is the identity), the mask from ``hashed_bits``: an entry is kept when its bits are at least
    ``round(p * 2^32)``, so with probability ``1 - p`` to within ``2^-32``, and kept entries are scaled by
    ``1 / (1 - p)``."""

    p: float = 0.5
    inference: bool = False

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None, inference: bool | None = None) -> Array:
        inference = self.inference if inference is None else inference
        if isinstance(self.p, (int, float)) and self.p == 0:
            inference = True
        if inference:
            return x
        if key is None:
            raise RuntimeError("Dropout requires a key when running in non-deterministic mode.")
        threshold = jnp.uint32(min(round(self.p * 2**32), 2**32 - 1))
        keep = hashed_bits(key, x.shape) >= threshold
        return jnp.where(keep, x / (1 - jax.lax.stop_gradient(self.p)), 0).astype(x.dtype)
