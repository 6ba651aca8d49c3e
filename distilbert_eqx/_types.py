"""Shape and dtype aliases used across the package.

Per-example functions use ``seq`` (tokens), ``hidden`` (model width) and ``classes``; batched functions add a
leading ``batch``. Keep the strings here so a renamed axis changes in one place.
"""

from typing import Literal

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

ComputeDtype = Literal["float32", "bfloat16"]

TokenIds = Int[Array, " seq"]
TokenMask = Bool[Array, " seq"]
# Which keys each query may attend to: what a packed row (several sentences) attends with.
PairMask = Bool[Array, "seq seq"]
Hidden = Float[Array, "seq hidden"]
HiddenStack = Float[Array, "layers_plus_one seq hidden"]
AttentionScores = Float[Array, "heads seq seq"]
ScoreStack = Float[Array, "layers heads seq seq"]
ValueStack = Float[Array, "layers seq hidden"]
Logits = Float[Array, " classes"]

BatchTokenIds = Int[Array, "batch seq"]
BatchTokenMask = Bool[Array, "batch seq"]
BatchLogits = Float[Array, "batch classes"]
BatchLabels = Int[Array, " batch"]
BatchWeights = Float[Array, " batch"]

Key = PRNGKeyArray


def to_jnp_dtype(dtype: ComputeDtype) -> jnp.dtype:
    """Map a compute-dtype name to the jnp dtype."""
    return {"float32": jnp.dtype(jnp.float32), "bfloat16": jnp.dtype(jnp.bfloat16)}[dtype]
