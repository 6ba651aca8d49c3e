"""Test-wide settings: 8 CPU devices for mesh tests, strict dtype and rank promotion."""

import os

# Must be set before XLA starts. The suite compiles some 600 small programs and runs each a few times; LLVM's
# optimisation passes are about half of each compile and buy nothing at these sizes. Runs and benchmarks keep
# XLA's default; a user's own XLA_FLAGS are kept.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import jax
import pytest

# Must run before any JAX backend is initialised; the mesh tests need several CPU devices.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

from distilbert_eqx import host_memory

# A run started inside this process (experiment.distill/finetune, as the script tests do) would change glibc's
# allocator process-wide for every later test, mid-process and after XLA's threads exist: a state no real run
# is in (a run applies it before XLA starts). tests/test_host_memory.py checks the call in processes of its own.
host_memory.retain_freed_memory = lambda: False


@pytest.fixture(autouse=True, scope="module")
def _compiled_programs_per_module():
    """Drop each module's compiled programs when it ends: a whole-suite process otherwise keeps every program
    of some 600 tests, and one late compile crashed XLA (SIGSEGV) there, never in a process of its own."""
    yield
    jax.clear_caches()
