"""The frozen teacher's outputs over a training split, computed once and read back every step and epoch.

In inference mode the teacher is deterministic, so every epoch would recompute the same targets. The cache holds
what each term of the objective keeps of the teacher (``AbstractTerm.keep``) for every example, ragged (real
tokens only): per kept field one flat array whose rows are the examples (logits), their tokens (hidden states,
values) or their token pairs (attention scores), with per-example row offsets. Which axes of a field run over
tokens, and what one row holds, is read off the terms with ``jax.eval_shape`` at two lengths: no table here
names a term. `TeacherCache.attach` is a transform on the batch stream: it pads each batch's rows back to the
batch's shape as ``Batch.teacher``, which the train step takes in place of the teacher's forward. On a split
joined with a transfer set, a term that skips the variants (``AbstractTerm.on_variants`` false) has only the
labelled examples stored; the variants' rows of its fields are zeros that weigh 0.

On disk (``save`` / ``load``) a cache is a folder of ``.npy`` files, read memory-mapped, named by a key: a sha256
of the teacher's weights and config, the tokenized split (so the tokenizer, ``max_length`` and the data file's
contents all enter), the terms' settings (their layer maps, not their weights) and the storage dtype. Another
key is another folder, never a silent reuse; a folder is written under a temporary name and renamed when
complete, so a crash leaves nothing that a later run reads.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Bool, Int64
from tqdm import tqdm

from ..batch import Batch, TeacherTargets
from ..checkpoint import temp_sibling
from ..data import IndexedBatch, TokenizedSplit, batch_indices, make_batch
from ..errors import UserError
from ..models import AbstractSequenceClassifier
from ..packing import PackingSettings, make_packed_batch, pack_rows
from ..train import forward
from .objective import Objective

FORMAT_VERSION = 2
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(jnp.bfloat16)}
# Two sequence lengths at which the kept targets' shapes are evaluated: the axes that differ are token axes.
_PROBE_LENGTHS = (5, 7)


class TeacherCacheError(UserError):
    """A cache cannot be built or read as asked; the message says why and what to change."""


class Field(NamedTuple):
    """One kept target of one term, as stored: the axes of an example's target that run over its tokens, the
    shape of one stored row (the target with those axes taken out), and whether a transfer set's variants are
    stored too (``AbstractTerm.on_variants``) or only the labelled examples."""

    token_axes: tuple[int, ...]
    row_shape: tuple[int, ...]
    on_variants: bool = True


def _key(term: str, field: str) -> str:
    return f"{term}.{field}"


def _split_key(key: str) -> tuple[str, str]:
    term, _, field = key.partition(".")
    return term, field


def fields(teacher: AbstractSequenceClassifier, objective: Objective) -> dict[str, Field]:
    """Every stored field (``"<term>.<field>"``) and its layout, from the terms' ``keep`` under ``eval_shape``."""

    def shapes(seq: int) -> dict[str, dict[str, jax.ShapeDtypeStruct]]:
        ids = jax.ShapeDtypeStruct((1, seq), jnp.int32)
        batch = Batch(
            ids,
            jax.ShapeDtypeStruct((1, seq), jnp.bool_),
            ids,
            jax.ShapeDtypeStruct((1,), jnp.int32),
            jax.ShapeDtypeStruct((1,), jnp.float32),
        )
        return eqx.filter_eval_shape(_kept, teacher, batch, objective)

    short, long = (shapes(seq) for seq in _PROBE_LENGTHS)
    terms = {term.name: term for term in objective.terms}
    layout = {}
    for term, kept in short.items():
        for field, value in kept.items():
            example, other = value.shape[1:], long[term][field].shape[1:]
            axes = tuple(i for i, (a, b) in enumerate(zip(example, other)) if a != b)
            if any(example[i] != _PROBE_LENGTHS[0] for i in axes):
                raise ValueError(
                    f"term {term!r} keeps {field!r} with an axis that grows with the length but is not "
                    f"a token axis: shapes {example} and {other}"
                )
            row_shape = tuple(d for i, d in enumerate(example) if i not in axes)
            layout[_key(term, field)] = Field(axes, row_shape, terms[term].on_variants)
    return layout


def _rows_per_example(
    field: Field, lengths: Int64[np.ndarray, " examples"], labelled: Bool[np.ndarray, " examples"] | None
) -> Int64[np.ndarray, " examples"]:
    rows = lengths ** len(field.token_axes)
    return rows if field.on_variants or labelled is None else rows * labelled


def _to_rows(field: Field, target: np.ndarray, n: int) -> np.ndarray:
    """One example's padded target -> its ``n ** k`` stored rows (real tokens only)."""
    k = len(field.token_axes)
    moved = np.moveaxis(target, field.token_axes, tuple(range(k)))
    return moved[(slice(0, n),) * k].reshape(n**k, *moved.shape[k:])


def _gather_rows(
    field: Field,
    array: np.ndarray,
    offsets: Int64[np.ndarray, " offsets"],
    lengths: Int64[np.ndarray, " examples"],
    indices: Int64[np.ndarray, " rows"],
    rows: Int64[np.ndarray, " rows"],
    batch_size: int,
    seq: int,
) -> np.ndarray:
    """The inverse of `_to_rows` for a whole batch in one gather: the examples' targets in the storage dtype, at
    batch rows ``rows``, zero-padded to ``seq`` tokens and ``batch_size`` rows (all zeros for a variant the field
    does not store).

    Example ``i`` stores ``n ** k`` rows in C order over its ``k`` token axes, so local row ``j`` is the
    position whose base-``n`` digits are ``j``'s."""
    k = len(field.token_axes)
    starts = offsets[indices]
    counts = offsets[indices + 1] - starts
    row = np.repeat(rows, counts)
    local = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    source = np.repeat(starts, counts) + local
    width = np.repeat(lengths[indices], counts)
    digits = []
    for _ in range(k):
        digits.append(local % width)
        local = local // width
    padded = np.zeros((batch_size, *(seq,) * k, *field.row_shape), array.dtype)
    padded[(row, *reversed(digits))] = array[source]
    return np.moveaxis(padded, tuple(range(1, k + 1)), tuple(axis + 1 for axis in field.token_axes))


def field_bytes(
    teacher: AbstractSequenceClassifier,
    objective: Objective,
    lengths: Int64[np.ndarray, " examples"],
    dtype: str,
    labelled: Bool[np.ndarray, " examples"] | None = None,
) -> dict[str, int]:
    """The bytes each stored field takes for examples of these token ``lengths`` (``labelled``: of a split
    joined with a transfer set), before building anything."""
    return _layout_bytes(fields(teacher, objective), lengths, dtype, labelled)


def _layout_bytes(
    layout: Mapping[str, Field],
    lengths: Int64[np.ndarray, " examples"],
    dtype: str,
    labelled: Bool[np.ndarray, " examples"] | None,
) -> dict[str, int]:
    itemsize = DTYPES[dtype].itemsize
    return {
        name: int(_rows_per_example(field, lengths, labelled).sum())
        * int(np.prod(field.row_shape))
        * itemsize
        for name, field in layout.items()
    }


def _settings(objective: Objective) -> dict[str, dict[str, object]]:
    """What the kept values may depend on: every term's settings but its weight."""
    return {
        term.name: {f.name: getattr(term, f.name) for f in dataclasses.fields(term) if f.name != "weight"}
        for term in objective.terms
        if term.reads_teacher
    }


def cache_key(
    teacher: AbstractSequenceClassifier, split: TokenizedSplit, objective: Objective, dtype: str
) -> str:
    """A sha256 of everything the stored values depend on (see the module docstring)."""
    digest = hashlib.sha256()
    description = {
        "format": FORMAT_VERSION,
        "terms": _settings(objective),
        "dtype": dtype,
        "teacher_config": repr(teacher.config),
        "compute_dtype": str(teacher.compute_dtype),
    }
    digest.update(json.dumps(description, sort_keys=True).encode())
    for leaf in jax.tree.leaves(eqx.filter(teacher, eqx.is_array)):
        array = np.asarray(leaf)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    for array in (split.token_ids, split.token_type_ids, split.offsets):
        digest.update(np.ascontiguousarray(array).tobytes())
    if split.labelled is not None:
        digest.update(np.ascontiguousarray(split.labelled).tobytes())
    return digest.hexdigest()


class TeacherCache:
    """What the terms keep of the teacher for every example of a split: per stored field (``"<term>.<field>"``)
    a flat ``(rows, *row_shape)`` array, its layout, and per-example row offsets ``(examples + 1,)``."""

    def __init__(
        self,
        lengths: np.ndarray,
        arrays: Mapping[str, np.ndarray],
        layout: Mapping[str, Field],
        key: str = "",
        labelled: np.ndarray | None = None,
    ) -> None:
        self.lengths = np.asarray(lengths, np.int64)
        self.labelled = None if labelled is None else np.asarray(labelled, np.bool_)
        self.arrays = dict(arrays)
        self.layout = dict(layout)
        self.key = key
        self.offsets = {
            name: np.concatenate(
                [[0], np.cumsum(_rows_per_example(self.layout[name], self.lengths, self.labelled))]
            )
            for name in self.arrays
        }
        for name, array in self.arrays.items():
            if len(array) != self.offsets[name][-1]:
                raise TeacherCacheError(
                    f"cached field {name!r} has {len(array)} rows; expected {self.offsets[name][-1]} for these "
                    "examples: the cache is damaged, delete it"
                )

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.arrays)

    @property
    def nbytes(self) -> dict[str, int]:
        return {name: int(array.nbytes) for name, array in self.arrays.items()}

    def gather(
        self,
        indices: Int64[np.ndarray, " rows"],
        batch_size: int,
        seq: int,
        rows: Int64[np.ndarray, " rows"] | None = None,
    ) -> TeacherTargets:
        """The targets of the examples at ``indices`` in the storage dtype (the terms compute in float32 on the
        device, so a bfloat16 cache also sends half the bytes), at batch rows ``rows`` (default the leading
        ones), padded to ``(batch_size, ..., seq, ...)`` like their batch (zeros at padded positions and dummy
        rows, which no loss reads). One vectorised gather per field."""
        indices = np.asarray(indices)
        rows = np.arange(len(indices)) if rows is None else np.asarray(rows)
        if len(rows) != len(indices):
            raise ValueError(f"{len(indices)} examples for {len(rows)} batch rows")
        out: TeacherTargets = {}
        for name, array in self.arrays.items():
            padded = _gather_rows(
                self.layout[name], array, self.offsets[name], self.lengths, indices, rows, batch_size, seq
            )
            term, kept = _split_key(name)
            out.setdefault(term, {})[kept] = padded
        return out

    def attach(self, batches: Iterable[IndexedBatch]) -> Iterator[Batch]:
        """The batch stream with each batch's cached targets as ``Batch.teacher``. The indices name the real
        rows (weight 1) in order: a batch's leading rows, or a packed batch's filled slots."""
        for indices, batch in batches:
            real = np.flatnonzero(batch.weights > 0)
            targets = self.gather(indices, len(batch.labels), batch.input_ids.shape[1], rows=real)
            yield batch._replace(teacher=targets)

    def save(self, folder: Path) -> None:
        """Write to ``folder`` atomically: a temporary sibling, fsynced, then renamed."""
        partial = temp_sibling(folder)
        partial.mkdir(parents=True)
        try:
            for name, array in self.arrays.items():
                # bfloat16 is stored as its raw 16 bits (np.load cannot name the dtype).
                raw = array.view(np.uint16) if array.dtype == DTYPES["bfloat16"] else array
                with open(partial / f"{name}.npy", "wb") as f:
                    np.save(f, raw)
                    f.flush()
                    os.fsync(f.fileno())
            np.save(partial / "lengths.npy", self.lengths)
            if self.labelled is not None:
                np.save(partial / "labelled.npy", self.labelled)
            meta = {
                "key": self.key,
                "fields": {name: self.layout[name]._asdict() for name in self.arrays},
                "dtypes": {name: str(array.dtype) for name, array in self.arrays.items()},
            }
            (partial / "meta.json").write_text(json.dumps(meta))
            os.replace(partial, folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path) -> "TeacherCache":
        """A saved cache, its arrays memory-mapped (read-only)."""
        meta = json.loads((folder / "meta.json").read_text())
        arrays, layout = {}, {}
        for name, field in meta["fields"].items():
            array = np.load(folder / f"{name}.npy", mmap_mode="r")
            if meta["dtypes"][name] == "bfloat16":
                array = array.view(DTYPES["bfloat16"])
            arrays[name] = array
            layout[name] = Field(tuple(field["token_axes"]), tuple(field["row_shape"]), field["on_variants"])
        labelled = np.load(folder / "labelled.npy") if (folder / "labelled.npy").exists() else None
        return cls(np.load(folder / "lengths.npy"), arrays, layout, meta["key"], labelled)


def _kept(teacher: AbstractSequenceClassifier, batch: Batch, objective: Objective) -> TeacherTargets:
    return objective.teacher_targets(forward(teacher, batch, key=None, **objective.outputs()))


_targets = eqx.filter_jit(_kept)


def _length_sorted_batches(
    split: TokenizedSplit, batch_size: int, buckets: tuple[int, ...]
) -> tuple[int, Iterator[IndexedBatch]]:
    chunks = batch_indices(np.argsort(split.lengths, kind="stable"), batch_size)
    return len(chunks), ((indices, make_batch(split, indices, batch_size, buckets)) for indices in chunks)


def _packed_batches(split: TokenizedSplit, shape: PackingSettings) -> tuple[int, Iterator[IndexedBatch]]:
    """The split packed by best-fit decreasing (about 99% real tokens), ``shape.rows`` rows a batch: one shape,
    so one program, whatever the lengths."""
    packed = pack_rows(split.lengths, np.arange(len(split)), shape.length, shape.slots)
    steps = [packed[start : start + shape.rows] for start in range(0, len(packed), shape.rows)]
    seq = int(split.lengths.max())
    return len(steps), (
        (np.asarray([i for row in step for i in row], np.int64), make_packed_batch(split, step, shape, seq))
        for step in steps
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.3f} GiB" if n >= 2**27 else f"{n / 2**20:.2f} MiB"


def teacher_cache(
    teacher: AbstractSequenceClassifier,
    split: TokenizedSplit,
    objective: Objective,
    *,
    batch_size: int,
    buckets: tuple[int, ...],
    dtype: str = "float32",
    folder: str | Path | None = None,
    max_bytes: int | None = None,
    place=lambda batch: batch,
    log=print,
    packing: PackingSettings | None = None,
) -> TeacherCache:
    """The split's cache: read from ``folder/<key>`` when it is there, else computed by one inference pass of
    ``teacher`` (in inference mode) and saved there (``folder=None`` keeps it in memory only). ``objective``
    must be bound to the models (``Objective.bind``). ``place`` puts a batch on the run's devices
    (``Steps.place``), so the pass is data-parallel where the run is. The pass runs in length-sorted batches of
    ``batch_size`` padded to ``buckets``, or, given ``packing``, in packed rows of that shape (one program; its
    rows a multiple of the devices). Prints each field's size first, and refuses a cache larger than
    ``max_bytes``."""
    if dtype not in DTYPES:
        raise TeacherCacheError(f"teacher cache dtype={dtype!r}; expected one of {', '.join(DTYPES)}")
    if not objective.needs_teacher:
        raise TeacherCacheError(
            f"the loss terms {objective.names} read nothing of the teacher; there is nothing to cache"
        )
    layout = fields(teacher, objective)
    sizes = _layout_bytes(layout, split.lengths, dtype, split.labelled)
    total = sum(sizes.values())
    log(
        f"teacher cache ({dtype}, {len(split)} examples): "
        + ", ".join(f"{name} {_gib(n)}" for name, n in sizes.items())
        + f"; total {_gib(total)}"
    )
    if max_bytes is not None and total > max_bytes:
        raise TeacherCacheError(
            f"the teacher cache would take {_gib(total)} ({', '.join(f'{k} {_gib(v)}' for k, v in sizes.items())}), "
            f"over the limit of {_gib(max_bytes)}: raise teacher_cache_max_gb, store bfloat16 "
            "(teacher_cache_dtype), or turn the cache off"
        )
    key = cache_key(teacher, split, objective, dtype)
    target = None if folder is None else Path(folder) / key
    if target is not None and target.is_dir():
        log(f"teacher cache: reading {target}")
        return TeacherCache.load(target)
    # One inference pass on the run's devices (``place``): in length-sorted batches, each padded to its bucket,
    # or in packed rows of one shape.
    arrays = {
        name: np.zeros(
            (int(_rows_per_example(field, split.lengths, split.labelled).sum()), *field.row_shape),
            DTYPES[dtype],
        )
        for name, field in layout.items()
    }
    cache = TeacherCache(split.lengths, arrays, layout, key, split.labelled)
    started = time.perf_counter()
    # The pass costs about the teacher's share of one epoch (minutes on a CPU), so it shows progress.
    count, batches = (
        _length_sorted_batches(split, batch_size, buckets)
        if packing is None
        else _packed_batches(split, packing)
    )
    for indices, batch in tqdm(batches, total=count, dynamic_ncols=True, desc="teacher cache"):
        targets = jax.device_get(_targets(teacher, place(batch), objective))
        # The examples' outputs are at the batch's real rows, in order (as ``attach`` reads them back).
        rows = np.flatnonzero(batch.weights > 0)
        for name, store in arrays.items():
            term, kept = _split_key(name)
            field, offsets, value = layout[name], cache.offsets[name], np.asarray(targets[term][kept])
            for row, i in zip(rows.tolist(), indices.tolist()):
                if offsets[i + 1] > offsets[i]:
                    store[offsets[i] : offsets[i + 1]] = _to_rows(field, value[row], int(cache.lengths[i]))
    seconds = time.perf_counter() - started
    log(
        f"teacher cache: computed in {seconds:.1f} s ({len(split) / seconds:.1f} examples/s, compiling included)"
    )
    if target is not None:
        cache.save(target)
        log(f"teacher cache: saved {target}")
    return cache
