import jax
import jax.numpy as jnp

from distilbert_eqx.compilations import Compilations


def test_counts_each_new_program_by_function_while_open():
    def double(x):
        return 2 * x

    step = jax.jit(double)
    with Compilations() as compiled:
        step(jnp.ones(3))
        step(jnp.ones(3))  # the same shape: no new program
        step(jnp.ones(4))
    step(jnp.ones(5))  # after closing: not counted
    assert compiled.programs["jit(double)"][0] == 2
    assert compiled.count >= 2  # jnp.ones compiles programs of its own
    assert compiled.compile_seconds > 0 and compiled.trace_seconds > 0
    assert compiled.summary().startswith(f"compiled {compiled.count} programs in ")
    assert "jit(double) x2" in compiled.summary(top=len(compiled.programs))
