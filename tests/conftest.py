"""Test-wide settings: 8 CPU devices for mesh tests, strict dtype and rank promotion, quick compiles."""

import os

# Must be set before XLA starts. The suite compiles some 1,600 small programs and runs each a few times: compile
# time is most of its time. At these sizes LLVM's optimisation passes (O0 skips them) and XLA:CPU's MLIR fusion
# emitters (the older emitters compile in less than half the time) buy nothing. Runs and benchmarks keep XLA's
# defaults; a user's own XLA_FLAGS come after these and win.
QUICK_COMPILES = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = f"{QUICK_COMPILES} {os.environ.get('XLA_FLAGS', '')}".strip()

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


# Each compiled CPU program maps memory regions of its own, and Linux refuses a process more than
# vm.max_map_count of them (65,530 by default): a whole-suite process that kept every program crashed (SIGSEGV)
# in a late compile (tests/test_experiments.py alone maps some 33,000). Dropping every program once a test
# leaves more than this keeps far from the limit, while later tests reuse what earlier ones compiled (the same
# tiny shapes recur): the fast tier never reaches it.
MAPPED_REGIONS_BEFORE_CLEARING = 20_000


def _mapped_regions() -> int | None:
    try:
        with open("/proc/self/maps") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return None


@pytest.fixture(autouse=True)
def _compiled_programs_below_the_map_limit():
    """After each test, drop every compiled program if the process maps many regions (or cannot tell)."""
    yield
    regions = _mapped_regions()
    if regions is None or regions > MAPPED_REGIONS_BEFORE_CLEARING:
        jax.clear_caches()
