"""The suite compiles with quick settings (``conftest.QUICK_COMPILES``); runs compile with XLA's defaults. Three
train steps computed under each, in fresh processes, agree: what the suite proves holds for the programs runs
compile."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import QUICK_COMPILES
from helpers import REPO

# Three steps of the original recipe's terms with the student's dropout on (hashed masks); the loss of each step
# and every parameter after them, flattened, to the file in argv[1]. Plain SGD: AdamW's update g / sqrt(v) turns
# float rounding in a near-zero gradient into a whole step of either sign, which would hide what is compared.
_STEPS = """
import sys
import equinox as eqx, jax, numpy as np, optax
sys.path.insert(0, sys.argv[2])
import distilbert_eqx as de
from helpers import original_objective, random_batch, tiny_student, tiny_teacher
teacher = tiny_teacher()
student = tiny_student(teacher, dropout=True)
objective = original_objective().bind(student, teacher)
optimizer = optax.sgd(0.5)
state = de.init_state(student, optimizer, key=jax.random.key(0))
losses = []
for seed in range(3):
    state, metrics = de.train_step(teacher, state, random_batch(seed), optimizer, objective)
    losses.append(float(metrics.loss))
leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(eqx.filter(state.student, eqx.is_array))]
np.save(sys.argv[1], np.concatenate([np.array(losses), *leaves]))
"""


def _steps(out, xla_flags: str) -> np.ndarray:
    env = {**os.environ, "XLA_FLAGS": xla_flags}
    subprocess.run(
        [sys.executable, "-c", _STEPS, str(out), str(REPO / "tests")], check=True, env=env, cwd=REPO
    )
    return np.load(out)


@pytest.mark.slow
def test_three_steps_under_the_quick_settings_equal_xla_defaults(tmp_path):
    users = os.environ["XLA_FLAGS"].replace(QUICK_COMPILES, "").strip()
    assert QUICK_COMPILES in os.environ["XLA_FLAGS"] and QUICK_COMPILES not in users
    default = _steps(tmp_path / "default.npy", users)
    quick = _steps(tmp_path / "quick.npy", f"{QUICK_COMPILES} {users}")
    assert default.size > 1000 and np.isfinite(default).all()
    np.testing.assert_allclose(quick[:3], default[:3], rtol=1e-6)
    np.testing.assert_allclose(quick, default, rtol=1e-5, atol=1e-6)
