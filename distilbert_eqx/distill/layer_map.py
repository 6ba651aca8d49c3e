"""Which student hidden state is matched to which teacher hidden state.

Indices follow ``transformers``' ``hidden_states``: 0 is the embedding output and ``i`` the output of layer
``i``. The attention losses use the pairs whose student index is at least 1, matching layer ``s``'s attention
with layer ``t``'s (the attention *inside* the layer whose output is state ``s``).
"""

from collections.abc import Sequence
from typing import Literal

from ..errors import ConfigError

LayerMap = tuple[tuple[int, int], ...]
# What a term's `layer_map` field holds before it is bound to two models: explicit pairs, or "uniform".
LayerMapSetting = LayerMap | Literal["uniform"]


class LayerMapError(ConfigError):
    """A layer map names a state a model does not have, repeats a pair, or is empty."""


def uniform_layer_map(student_layers: int, teacher_layers: int) -> LayerMap:
    """TinyBERT's uniform map ``m -> m * N / M`` for ``m = 0..M``, embeddings included.

    A 3-layer student of a 6-layer teacher gets ``(0, 0), (1, 2), (2, 4), (3, 6)``. When ``M`` does not divide
    ``N`` the teacher index is rounded down (``floor(m * N / M)``), so the embeddings still meet the embeddings
    and the last layer the last layer: 4 of 6 gives teacher states 0, 1, 3, 4, 6.
    """
    if student_layers < 1 or teacher_layers < 1:
        raise LayerMapError(
            f"a layer map needs at least one layer on each side, got a {student_layers}-layer student and a "
            f"{teacher_layers}-layer teacher"
        )
    if student_layers > teacher_layers:
        raise LayerMapError(
            f"the uniform map needs a student no deeper than its teacher, got a {student_layers}-layer student "
            f"and a {teacher_layers}-layer teacher; give the pairs explicitly"
        )
    return tuple((m, m * teacher_layers // student_layers) for m in range(student_layers + 1))


def check_layer_map(pairs: Sequence[object], student_layers: int, teacher_layers: int) -> LayerMap:
    """Validate explicit ``(student, teacher)`` pairs against the models' depths and return them as a tuple.

    Raises:
        LayerMapError: no pairs, a pair that is not two ints, an index outside ``0..layers``, or a student
            state matched twice (each student state has one target; a teacher state may serve several).
    """
    if len(pairs) == 0:
        raise LayerMapError("the layer map is empty; give at least one (student, teacher) pair")
    checked = []
    for pair in pairs:
        # Anything may come from a user; only [int, int] is a pair.
        if not (
            isinstance(pair, Sequence)
            and len(pair) == 2
            and all(isinstance(i, int) and not isinstance(i, bool) for i in pair)
        ):
            raise LayerMapError(f"layer map entry {pair!r} is not a pair of ints [student, teacher]")
        s, t = pair
        if not 0 <= s <= student_layers:
            raise LayerMapError(
                f"layer map pair {[s, t]}: student state {s} is out of range; the student has {student_layers} "
                f"layers, so its states are 0 (embeddings) to {student_layers}"
            )
        if not 0 <= t <= teacher_layers:
            raise LayerMapError(
                f"layer map pair {[s, t]}: teacher state {t} is out of range; the teacher has {teacher_layers} "
                f"layers, so its states are 0 (embeddings) to {teacher_layers}"
            )
        if any(s == previous for previous, _ in checked):
            raise LayerMapError(f"layer map pair {[s, t]}: student state {s} is matched twice in {pairs!r}")
        checked.append((s, t))
    return tuple(checked)


def attention_pairs(layer_map: LayerMap) -> LayerMap:
    """The pairs of layers (not states) whose attentions the attention losses match: student index >= 1,
    as 0-based layer indices into the models' ``attention_scores``."""
    return tuple((s - 1, t - 1) for s, t in layer_map if s >= 1 and t >= 1)


def resolve_layer_map(setting: LayerMapSetting, student_layers: int, teacher_layers: int) -> LayerMap:
    """``uniform`` as :func:`uniform_layer_map` for these depths, or explicit pairs checked against them."""
    try:
        if setting == "uniform":
            return uniform_layer_map(student_layers, teacher_layers)
        return check_layer_map(setting, student_layers, teacher_layers)
    except LayerMapError as e:
        raise LayerMapError(f"layer_map: {e}") from e


def resolved(setting: LayerMapSetting, term: str) -> LayerMap:
    """The pairs of a bound term; ``uniform`` is only known once the term is bound to two models."""
    if setting == "uniform":
        raise ValueError(
            f"the {term} term's layer map is still 'uniform': bind the term to the two models first"
        )
    return setting


def describe_layer_map(setting: LayerMapSetting) -> str:
    """A map as the model card and config.json write it: ``uniform`` or ``[[s, t], ...]``."""
    return setting if isinstance(setting, str) else str([list(pair) for pair in setting])
