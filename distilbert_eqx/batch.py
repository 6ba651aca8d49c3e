"""The step's input: one padded batch, and what the loss terms keep of the teacher for it.

A leaf of the package: the loader builds batches, the teacher-output cache fills in their targets, the objective
and the steps read them, and none of those modules needs another to name the type.
"""

from typing import NamedTuple

import numpy as np
from jaxtyping import Array, Bool, Float, Float32, Int32

# What the objective's terms keep of the teacher for a batch: per term (its name), per kept field, an array with
# the batch rows first. Computed from the teacher's forward (`Objective.teacher_targets`) or read from the
# teacher-output cache; the terms cannot tell which.
TeacherTargets = dict[str, dict[str, Float[Array, "batch ..."] | Float[np.ndarray, "batch ..."]]]


class PackedRows(NamedTuple):
    """The sentences of a batch packed several to a row (``packing.py``), as the models read them.

    ``segment_ids`` is ``k >= 1`` on the tokens of a row's ``k``-th sentence and 0 on padding, ``position_ids``
    restart at 0 at each sentence, and ``sentence_tokens[r, s]`` lists the row positions of the tokens of the
    sentence in slot ``s`` of row ``r``: the batch's sentence ``r * slots + s``.
    """

    input_ids: Int32[np.ndarray, "rows length"]
    token_type_ids: Int32[np.ndarray, "rows length"]
    segment_ids: Int32[np.ndarray, "rows length"]
    position_ids: Int32[np.ndarray, "rows length"]
    sentence_tokens: Int32[np.ndarray, "rows slots seq"]


class Batch(NamedTuple):
    """One padded batch. Rows with ``weights == 0`` are dummies that fill the last batch of a split; their
    attention mask keeps only the first token so that no softmax sees an all-masked row.

    ``teacher`` holds the rows' cached teacher targets (padded like the batch) when the run has a teacher-output
    cache, else ``None`` (no leaves: the step's program is unchanged). ``labelled`` is 1 for the rows whose label
    is real and 0 for a transfer set's variants (and padding) when the run trains on one, else ``None``: the
    label terms, and the terms that skip variants, weigh the rows by it.

    ``packed`` holds the same sentences packed several to a row when the run packs them; the models then run on
    the packed rows and give one output per sentence, in the rows of the fields above, which stay what the
    loss terms and the teacher-output cache read. ``None``: the models run on the rows above.
    """

    input_ids: Int32[np.ndarray, "batch seq"]
    attention_mask: Bool[np.ndarray, "batch seq"]
    token_type_ids: Int32[np.ndarray, "batch seq"]
    labels: Int32[np.ndarray, " batch"]
    weights: Float32[np.ndarray, " batch"]
    teacher: TeacherTargets | None = None
    labelled: Float32[np.ndarray, " batch"] | None = None
    packed: PackedRows | None = None

    @property
    def model_rows(self) -> int:
        """How many rows the models run on (one dropout key each): the packed rows, or the batch's."""
        return (self.input_ids if self.packed is None else self.packed.input_ids).shape[0]
