"""Packing: several sentences to a row, so that a step computes real tokens instead of padding.

Length buckets pad each sentence to its batch's bucket (SST-2: about 80% of the computed tokens real) and compile
one program per bucket met. Packed, the sentences of an epoch are laid into rows of ``length`` tokens by
best-fit decreasing bin packing (a row holds at most ``slots`` sentences), the rows are shuffled and taken
``rows`` at a time: every step has the same shape, so one program, and nearly every token is real. A step then
holds as many sentences as fit rather than a fixed count (fairseq's ``--max-tokens`` batching). The models see to
it that a sentence attends only within itself, at positions restarting at its first token (``classify_packed``),
so its outputs are those of the sentence alone.

Everything here is numpy, and an epoch's steps depend only on ``(seed, epoch)``, as in ``data.py``.
"""

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
from jaxtyping import Int64

from .batch import Batch, PackedRows
from .data import DataError, IndexedBatch, TokenizedSplit, make_batch
from .errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PackingSettings:
    """A packed run's step: ``rows`` rows of ``length`` tokens (``None`` in a config: the longest example
    rounded up to a multiple of 8), each holding at most ``slots`` sentences. The loss terms see the step's
    sentences as ``rows * slots`` one-to-a-row rows, most of them real."""

    rows: int = 8
    length: int | None = None
    slots: int = 16

    def __post_init__(self) -> None:
        for name in ("rows", "length", "slots"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value}; expected an int >= 1")


def pack_rows(
    lengths: Int64[np.ndarray, " examples"], order: Int64[np.ndarray, " examples"], length: int, slots: int
) -> list[list[int]]:
    """The examples of each row, packed by best-fit decreasing: longest first (ties in ``order``'s order), each
    into the open row with the least room that still holds it, else a new row; a row closes at ``slots``
    sentences.

    Returns one list of example indices per row, in the order the rows were opened.
    """
    _refuse_longer_than_a_row(lengths, order, length)
    rows: list[list[int]] = []
    # open_rows[room]: the open rows with `room` tokens free; `has_room` has bit `room` set when any are.
    open_rows: list[list[int]] = [[] for _ in range(length + 1)]
    has_room = 0
    for i in order[np.argsort(-lengths[order], kind="stable")]:
        need = int(lengths[i])
        fits = has_room >> need
        if fits:
            room = need + (fits & -fits).bit_length() - 1
            row = open_rows[room].pop()
            if not open_rows[room]:
                has_room &= ~(1 << room)
        else:
            room, row = length, len(rows)
            rows.append([])
        rows[row].append(int(i))
        room -= need
        if len(rows[row]) < slots and room > 0:
            open_rows[room].append(row)
            has_room |= 1 << room
    return rows


def _refuse_longer_than_a_row(
    lengths: Int64[np.ndarray, " examples"], order: Int64[np.ndarray, " examples"], length: int
) -> None:
    too_long = order[lengths[order] > length]
    if len(too_long):
        raise DataError(
            f"example {too_long[0]} has {int(lengths[too_long[0]])} tokens, more than the packed row length "
            f"{length}: set packing's length to at least the longest example, or leave it null for that"
        )


def rows_in_order(lengths: Int64[np.ndarray, " examples"], length: int, slots: int) -> list[list[int]]:
    """The examples packed in their order (next fit): a row takes the next example while it has room and a free
    slot, so reading the rows one after another reads the split in order (evaluation's logits stay in order)."""
    _refuse_longer_than_a_row(lengths, np.arange(len(lengths)), length)
    rows: list[list[int]] = [[]]
    room = length
    for i, need in enumerate(lengths.tolist()):
        if need > room or len(rows[-1]) == slots:
            rows.append([])
            room = length
        rows[-1].append(i)
        room -= need
    return rows


def packed_eval_batches(split: TokenizedSplit, shape: PackingSettings, seq: int) -> Iterator[Batch]:
    """Packed batches of ``split`` in order (``rows_in_order``), for evaluation: its real rows (weight 1) list
    the examples in order, and every batch has one shape. ``seq``: the split's longest example."""
    rows = rows_in_order(split.lengths, shape.length, shape.slots)
    for i in range(0, len(rows), shape.rows):
        yield make_packed_batch(split, rows[i : i + shape.rows], shape, seq)


def packed_steps(
    lengths: Int64[np.ndarray, " examples"], shape: PackingSettings, *, seed: int, epoch: int
) -> list[list[list[int]]]:
    """The steps of one training epoch: each a list of at most ``shape.rows`` rows of example indices. Every
    example appears exactly once; rows are shuffled across steps; only the last step may have fewer rows."""
    rng = np.random.default_rng([seed, epoch])
    packed = pack_rows(lengths, rng.permutation(len(lengths)), shape.length, shape.slots)
    shuffled = [packed[i] for i in rng.permutation(len(packed))]
    return [shuffled[i : i + shape.rows] for i in range(0, len(shuffled), shape.rows)]


def steps_per_epoch(lengths: Int64[np.ndarray, " examples"], shape: PackingSettings) -> int:
    """Steps in every epoch: best-fit decreasing sees only the sorted lengths, so the number of rows (not which
    example goes where) is the same whatever the seed and epoch."""
    return len(packed_steps(lengths, shape, seed=0, epoch=0))


def indexed_packed_batches(
    split: TokenizedSplit, shape: PackingSettings, seq: int, *, seed: int, start_step: int = 0
) -> Iterator[IndexedBatch]:
    """Packed training batches from ``start_step`` on, epoch after epoch, without end (``data``'s
    ``indexed_epoch_batches`` for a packed run), each with the split indices of its real sentences in row
    order: the rows whose ``weights`` are 1."""
    epoch, position = divmod(start_step, steps_per_epoch(split.lengths, shape))
    while True:
        for step in packed_steps(split.lengths, shape, seed=seed, epoch=epoch)[position:]:
            batch = make_packed_batch(split, step, shape, seq)
            yield np.asarray([i for row in step for i in row], np.int64), batch
        epoch, position = epoch + 1, 0


def make_packed_batch(
    split: TokenizedSplit, step: Sequence[Sequence[int]], shape: PackingSettings, seq: int
) -> Batch:
    """One step's batch: its sentences one to a row, ``(rows * slots, seq)``, sentence ``r * slots + s`` the
    ``s``-th of packed row ``r`` (empty slots and rows are weight-0 dummies), with ``packed`` holding the rows.

    ``seq`` is the width of the one-to-a-row view: the split's longest example, so that the shape never changes.
    """
    rows, length, slots = shape.rows, shape.length, shape.slots
    if len(step) > rows:
        raise ValueError(f"a step of {len(step)} rows does not fit rows={rows}")
    slot_of = np.full(rows * slots, -1, np.int64)
    for r, row in enumerate(step):
        if len(row) > slots:
            raise ValueError(f"row {r} holds {len(row)} sentences; slots={slots}")
        slot_of[r * slots : r * slots + len(row)] = row
    filled = slot_of >= 0
    sentences = make_batch(split, slot_of[filled], int(filled.sum()), [seq])
    batch = _spread(sentences, filled, rows * slots, split.pad_id)

    input_ids = np.full((rows, length), split.pad_id, np.int32)
    token_type_ids = np.zeros((rows, length), np.int32)
    segment_ids = np.zeros((rows, length), np.int32)
    position_ids = np.zeros((rows, length), np.int32)
    sentence_tokens = np.zeros((rows, slots, seq), np.int32)
    for r, row in enumerate(step):
        at = 0
        for s, i in enumerate(row):
            start, end = int(split.offsets[i]), int(split.offsets[i + 1])
            n = end - start
            input_ids[r, at : at + n] = split.token_ids[start:end]
            token_type_ids[r, at : at + n] = split.token_type_ids[start:end]
            segment_ids[r, at : at + n] = s + 1
            position_ids[r, at : at + n] = np.arange(n)
            sentence_tokens[r, s] = np.minimum(at + np.arange(seq), length - 1)
            at += n
    packed = PackedRows(input_ids, token_type_ids, segment_ids, position_ids, sentence_tokens)
    return batch._replace(packed=packed)


def _spread(sentences: Batch, filled: np.ndarray, size: int, pad_id: int) -> Batch:
    """``sentences`` (one row per filled slot) spread over ``size`` rows, the unfilled ones weight-0 dummies
    that attend to their first token only (as ``data.make_batch`` pads)."""

    def spread(field: np.ndarray | None, fill) -> np.ndarray | None:
        if field is None:
            return None
        out = np.full((size, *field.shape[1:]), fill, field.dtype)
        out[filled] = field
        return out

    batch = Batch(
        spread(sentences.input_ids, pad_id),
        spread(sentences.attention_mask, False),
        spread(sentences.token_type_ids, 0),
        spread(sentences.labels, 0),
        spread(sentences.weights, 0.0),
        labelled=spread(sentences.labelled, 0.0),
    )
    batch.attention_mask[~filled, 0] = True
    return batch
