"""The interface every distillation loss term implements (Equinox's abstract/final pattern).

A term says, in its one class: its name (the config ``type``, the ``loss_<name>`` metrics key, the model card's
word through ``title``), what it needs the models to return (``outputs``, the ``output_*`` flags), what it keeps
of the teacher (``keep``: exactly what the teacher-output cache stores for it), what it checks about the two
models (``bind``), and its loss (``__call__``, a ``WeightedSum``). The objective, the cache, the config and the
model card derive everything else from these; ``terms/__init__.py`` is the registry of the concrete terms.

Terms are static: their weights and settings are Python values that the jitted step specialises on, so a
weight of 0 is never traced and the plain recipe's step stays the program it was (docs/design.md says why).
"""

import abc
from collections.abc import Callable, Mapping
from typing import ClassVar

import equinox as eqx
from jaxtyping import Array, Float

from ..batch import Batch
from ..errors import ConfigError
from ..models import AbstractSequenceClassifier, ClassifierOutput
from .losses import WeightedSum

# ``W_h``: the student's hidden states mapped to the teacher's width (the identity when the widths are equal).
Projection = Callable[[Float[Array, "*batch s_hidden"]], Float[Array, "*batch t_hidden"]]
Kept = dict[str, Float[Array, "batch ..."]]


class AbstractTerm(eqx.Module):
    """One loss term of a distillation objective, over a padded batch (its reduction spans the rows, so a term
    takes the batched outputs that ``train.forward`` returns)."""

    # The config `type`; the metrics key is `loss_<name>`.
    name: eqx.AbstractClassVar[str]
    # The model card's words for it ("attention-score MSE").
    title: eqx.AbstractClassVar[str]
    # The model flags (`output_hidden_states`, ...) it needs, for the student and the teacher alike.
    outputs: ClassVar[tuple[str, ...]] = ()
    reads_teacher: ClassVar[bool] = True
    # Whether it compares student and teacher hidden states, through the learned W_h when their widths differ.
    projects_student: ClassVar[bool] = False
    # TinyBERT's second stage trains the prediction layer's terms alone.
    prediction_layer: ClassVar[bool] = False
    # Whether it is computed on a transfer set's variants too (Batch.labelled 0), not only on the labelled rows:
    # a term that reads the labels cannot be, and one whose teacher targets are per token would multiply the
    # teacher-output cache by the pool's size, so only the per-example ones are (KL's logits, PKD's [CLS]).
    on_variants: ClassVar[bool] = False
    # The flat config keys that spell this term in the original experiment's style, mapped to its fields; the
    # first is its weight (`alpha_kl: weight`). Empty for a term only a `loss:` list can name.
    shorthand: ClassVar[Mapping[str, str]] = {}

    weight: eqx.AbstractVar[float]

    def __check_init__(self):
        if not self.weight >= 0:
            raise ConfigError(f"{self.name}: weight={self.weight!r} is invalid; expected a float >= 0")

    @property
    def metric(self) -> str:
        """Its key in the step's metrics and metrics.jsonl."""
        return f"loss_{self.name}"

    def bind(
        self, student: AbstractSequenceClassifier, teacher: AbstractSequenceClassifier
    ) -> "AbstractTerm":
        """This term with its model-dependent settings resolved (``uniform`` layer maps, head counts), after
        checking that the two models can be compared this way; raises ``ConfigError`` otherwise."""
        del student, teacher
        return self

    def keep(self, teacher: ClassifierOutput) -> Kept:
        """What the term reads of the teacher's batched outputs, rows first; the cache stores exactly this."""
        del teacher
        return {}

    @abc.abstractmethod
    def __call__(
        self, student: ClassifierOutput, teacher: Kept, batch: Batch, project: Projection
    ) -> WeightedSum:
        """The term's sums over the batch.

        Arguments:
            student: the student's batched outputs, with the stacks the objective's flags asked for.
            teacher: what ``keep`` returned for these rows (live, gradients stopped, or from the cache).
            batch: labels, attention mask and row weights.
            project: ``W_h``, for the terms that compare hidden states.
        """

    def describe(self) -> str:
        """The model card's words for this term: its title and weight, then its settings."""
        return f"{self.title} {self.weight}"

    @classmethod
    def from_shorthand(cls, flat: Mapping[str, object]) -> "AbstractTerm | None":
        """The term that the flat config keys spell, or ``None`` when its weight is 0 (or it has no shorthand);
        a ``None`` value leaves the field at its default."""
        if not cls.shorthand:
            return None
        weight_key = next(iter(cls.shorthand))
        if not flat[weight_key] > 0:
            return None
        return cls(**{field: flat[key] for key, field in cls.shorthand.items() if flat[key] is not None})
