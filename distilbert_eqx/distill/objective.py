"""The training objective: a tuple of loss terms, and everything derived from it.

The models' ``output_*`` flags, what is kept of the teacher (and so what the teacher-output cache stores), the
metrics keys, the two stages of a TinyBERT run and the model card's recipe all come from the terms themselves;
nothing here lists them. ``Objective`` is a static argument of the jitted step: its weights are Python floats,
a term with weight 0 is dropped before tracing, and the models return no stack that no term reads.
"""

from collections.abc import Mapping, Sequence

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..batch import Batch, TeacherTargets
from ..errors import ConfigError
from ..models import AbstractSequenceClassifier, ClassifierOutput
from ..models.layers import dense
from .losses import Scalar, WeightedSum, weighted_total
from .term import AbstractTerm
from .terms import TERMS


def project(
    projection: eqx.nn.Linear | None, states: Float[Array, "*batch s_hidden"]
) -> Float[Array, "*batch t_hidden"]:
    """The student's hidden states mapped to the teacher's width by the learned ``W_h`` (identity when ``None``)."""
    if projection is None:
        return states
    flat = states.reshape(-1, states.shape[-1])
    return dense(projection, flat.astype(jnp.float32)).reshape(*states.shape[:-1], -1)


class Objective(eqx.Module):
    """The weighted sum of its terms' means. Terms of weight 0 are dropped; each name appears once."""

    terms: tuple[AbstractTerm, ...] = eqx.field(static=True)

    def __init__(self, terms: Sequence[AbstractTerm]):
        names = [term.name for term in terms]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ConfigError(f"the loss lists {repeated} more than once; each term may appear once")
        if not any(term.weight > 0 for term in terms):
            raise ConfigError(
                f"at least one loss weight must be positive, got { ({t.name: t.weight for t in terms}) }"
            )
        self.terms = tuple(term for term in terms if term.weight > 0)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(term.name for term in self.terms)

    @property
    def weights(self) -> dict[str, float]:
        """Each term's weight, keyed by its metrics name."""
        return {term.metric: term.weight for term in self.terms}

    @property
    def needs_teacher(self) -> bool:
        return any(term.reads_teacher for term in self.terms)

    @property
    def projects_student(self) -> bool:
        """Whether a term compares student and teacher hidden states (and so needs equal widths or ``W_h``)."""
        return any(term.projects_student for term in self.terms)

    def outputs(self) -> dict[str, bool]:
        """The ``output_*`` flags both models are called with: a stack is returned only when a term reads it."""
        return {flag: True for term in self.terms for flag in term.outputs}

    def bind(self, student: AbstractSequenceClassifier, teacher: AbstractSequenceClassifier) -> "Objective":
        """Every term checked against and resolved for the two models (see ``AbstractTerm.bind``)."""
        return Objective([term.bind(student, teacher) for term in self.terms])

    def teacher_targets(self, teacher: ClassifierOutput) -> TeacherTargets:
        """What the terms keep of the teacher's batched outputs, keyed by term name (see ``batch.TeacherTargets``)."""
        return {term.name: term.keep(teacher) for term in self.terms if term.reads_teacher}

    def __call__(
        self,
        student: ClassifierOutput,
        teacher: TeacherTargets | None,
        projection: eqx.nn.Linear | None,
        batch: Batch,
    ) -> dict[str, WeightedSum]:
        """Each term's ``WeightedSum``, keyed by its metrics name.

        Arguments:
            student: the student's batched outputs, with the stacks ``outputs()`` asks for.
            teacher: what the terms keep of the teacher (`teacher_targets`, gradients already stopped, or the
                cache's), or ``None`` when no term reads the teacher.
            projection: ``W_h`` from the student's width to the teacher's, or ``None`` when the widths are equal.
            batch: the labels, attention mask and row weights.
        """
        if self.needs_teacher and teacher is None:
            raise ValueError(f"the terms {self.names} need the teacher's outputs, but none were given")
        missing = [term.name for term in self.terms if term.reads_teacher and term.name not in teacher]
        if missing:
            raise ValueError(
                f"the teacher targets hold {sorted(teacher)} but not what {missing} keep: they were made for "
                "another objective (a teacher-output cache must be built with the run's terms)"
            )

        def projected(states):
            return project(projection, states)

        # On a transfer set, a term that skips the variants sees them (and padding) as weight-0 rows.
        labelled = batch if batch.labelled is None else batch._replace(weights=batch.weights * batch.labelled)
        return {
            term.metric: term(
                student,
                teacher[term.name] if term.reads_teacher else {},
                batch if term.on_variants else labelled,
                projected,
            )
            for term in self.terms
        }

    def total(self, sums: Mapping[str, WeightedSum]) -> tuple[Scalar, dict[str, Scalar]]:
        """``sum(weight * mean)`` over the (device-summed) terms, and each term's mean."""
        return weighted_total(sums, self.weights)

    def stage(self, prediction_layer: bool) -> "Objective":
        """TinyBERT's stages: the prediction layer's terms alone (``True``), or every other term (``False``)."""
        return Objective([term for term in self.terms if term.prediction_layer == prediction_layer])

    def describe(self) -> str:
        """The model card's words for the loss: every term with its weight and settings."""
        return " + ".join(term.describe() for term in self.terms)


def shorthand_terms(flat: Mapping[str, object]) -> tuple[AbstractTerm, ...]:
    """The terms that the original experiment's flat keys spell (``alpha_ce``, ``alpha_kl`` with
    ``temperature``, ``alpha_cos``, the ``alpha_*`` layer losses with their settings), in registry order."""
    terms = (term.from_shorthand(flat) for term in TERMS.values())
    return tuple(term for term in terms if term is not None)


def shorthand_keys() -> tuple[str, ...]:
    """Every flat config key that spells a term (``alpha_kl``, ``temperature``, ``layer_map``, ...)."""
    return tuple(dict.fromkeys(key for term in TERMS.values() for key in term.shorthand))
