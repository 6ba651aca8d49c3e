"""Patient knowledge distillation (Sun et al. 2019, BERT-PKD): the student's L2-normalised [CLS] states of
intermediate layers against the teacher's."""

import dataclasses
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ...batch import Batch
from ...errors import ConfigError
from ...models import AbstractSequenceClassifier, ClassifierOutput
from ..layer_map import LayerMapSetting, describe_layer_map, resolve_layer_map, resolved
from ..losses import WeightedSum, weighted_sum
from ..term import AbstractTerm, Kept, Projection

# torch.nn.functional.normalize's floor on the norm.
_NORM_EPS = 1e-12


def _normalised(states: Float[Array, "*rows hidden"]) -> Float[Array, "*rows hidden"]:
    states = states.astype(jnp.float32)
    return states / jnp.maximum(jnp.linalg.norm(states, axis=-1, keepdims=True), _NORM_EPS)


class PKD(AbstractTerm):
    """``weight * MSE(h_S / |h_S|, h_T / |h_T|)`` of the first token's ([CLS]) states of the mapped layers.

    ``layer_map: uniform`` is PKD-Skip: the uniform map's intermediate pairs, without the embeddings and the last
    layer (whose output the logit terms already cover); explicit pairs are taken as given. A narrower student
    goes through ``W_h`` before normalising. Reduction: the mean over real rows, matched layers and hidden units,
    as the authors' code (``F.mse_loss`` of the normalised states); the paper's eq. 5 writes a sum over layers of
    squared L2 distances, so its weight ``beta`` (searched over 10, 100, 500, 1000; the default here is 100)
    applies to this mean.
    """

    name: ClassVar[str] = "pkd"
    title: ClassVar[str] = "PKD [CLS] MSE"
    outputs: ClassVar[tuple[str, ...]] = ("output_hidden_states",)
    projects_student: ClassVar[bool] = True
    on_variants: ClassVar[bool] = True

    weight: float = eqx.field(static=True, default=100.0)
    layer_map: LayerMapSetting = eqx.field(static=True, default="uniform")

    def bind(self, student: AbstractSequenceClassifier, teacher: AbstractSequenceClassifier) -> "PKD":
        pairs = resolve_layer_map(self.layer_map, student.num_layers, teacher.num_layers)
        if self.layer_map == "uniform":
            pairs = tuple((s, t) for s, t in pairs if 0 < s < student.num_layers)
        if not pairs:
            raise ConfigError(
                f"pkd: a {student.num_layers}-layer student has no intermediate layer to match; give layer_map pairs"
            )
        return dataclasses.replace(self, layer_map=pairs)

    def keep(self, teacher: ClassifierOutput) -> Kept:
        pairs = resolved(self.layer_map, self.name)
        return {"cls_states": teacher.hidden_states[:, jnp.array([t for _, t in pairs]), 0]}

    def __call__(
        self, student: ClassifierOutput, teacher: Kept, batch: Batch, project: Projection
    ) -> WeightedSum:
        pairs = resolved(self.layer_map, self.name)
        states = project(student.hidden_states[:, jnp.array([s for s, _ in pairs]), 0])
        diff = _normalised(states) - _normalised(teacher["cls_states"])
        per_pair = jnp.mean(diff * diff, axis=-1)
        return weighted_sum(per_pair, jnp.broadcast_to(batch.weights[:, None], per_pair.shape))

    def describe(self) -> str:
        return f"{self.title} {self.weight} (layers {describe_layer_map(self.layer_map)})"
