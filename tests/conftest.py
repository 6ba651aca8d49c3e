"""Test-wide settings: 8 CPU devices for mesh tests, strict dtype and rank promotion."""

import jax

# Must run before any JAX backend is initialised; the mesh tests need several CPU devices.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
