"""The frozen teacher's outputs over a training split, computed once and read back every step and epoch.

In inference mode the teacher is deterministic, so every epoch would recompute the same `TeacherTargets`. The
cache holds them for every example, ragged (real tokens only): per field one flat array whose rows are the
examples (logits), their tokens (hidden states, values) or their token pairs (attention scores), with per-example
row offsets. `TeacherCache.gather` pads one batch's rows back to the batch's shape, and the train step takes them
in place of the teacher's forward (``Batch.teacher``).

On disk (``save`` / ``load``) a cache is a folder of ``.npy`` files, read memory-mapped, named by a key: a sha256
of the teacher's weights and config, the tokenized split (so the tokenizer, ``max_length`` and the data file's
contents all enter), the stored fields, the matched layers and the storage dtype. Another key is another folder,
never a silent reuse; a folder is written under a temporary name and renamed when complete, so a crash leaves
nothing that a later run reads.
"""

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Int64
from tqdm import tqdm

from .checkpoint import temp_sibling
from .data import Batch, TokenizedSplit, _batch_indices, _make_batch
from .errors import UserError
from .models import AbstractSequenceClassifier
from .objective import LossConfig, TeacherTargets, teacher_targets
from .train import forward

FORMAT_VERSION = 1
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(jnp.bfloat16)}
# The axes of one example's targets that run over its tokens: none (logits), one (hidden states, values) or two
# (attention scores: query and key). An example of n tokens stores n ** len(axes) rows: itself, each token, or
# each (query, key) pair.
SEQ_AXES = {
    "logits": (),
    "last_hidden_state": (0,),
    "hidden_states": (1,),
    "attention_scores": (2, 3),
    "last_attention_scores": (2, 3),
    "last_values": (1,),
}


class TeacherCacheError(UserError):
    """A cache cannot be built or read as asked; the message says why and what to change."""


def _rows_per_example(name: str, lengths: Int64[np.ndarray, " examples"]) -> Int64[np.ndarray, " examples"]:
    return lengths ** len(SEQ_AXES[name])


def _to_rows(name: str, target: np.ndarray, n: int) -> np.ndarray:
    """One example's padded target of field ``name`` -> its ``n ** k`` stored rows (real tokens only)."""
    k = len(SEQ_AXES[name])
    moved = np.moveaxis(target, SEQ_AXES[name], tuple(range(k)))
    return moved[(slice(0, n),) * k].reshape(n**k, *moved.shape[k:])


def _from_rows(name: str, rows: np.ndarray, n: int, seq: int) -> np.ndarray:
    """The inverse of `_to_rows`: the example's target, float32, zero-padded to ``seq`` tokens."""
    k = len(SEQ_AXES[name])
    padded = np.zeros((seq,) * k + rows.shape[1:], np.float32)
    padded[(slice(0, n),) * k] = rows.reshape((n,) * k + rows.shape[1:])
    return np.moveaxis(padded, tuple(range(k)), SEQ_AXES[name])


def row_shapes(teacher: AbstractSequenceClassifier, losses: LossConfig) -> dict[str, tuple[int, ...]]:
    """Each stored field's row shape (what one example, token or token pair holds)."""
    hidden, heads = teacher.hidden_size, teacher.num_heads
    pairs = sum(1 for _, t in losses.layer_map if t > 0)
    shapes = {
        "logits": (teacher.config.num_labels,),
        "last_hidden_state": (hidden,),
        "hidden_states": (len(losses.layer_map), hidden),
        "attention_scores": (pairs, heads),
        "last_attention_scores": (1, heads),
        "last_values": (1, hidden),
    }
    return {name: shapes[name] for name in losses.teacher_fields}


def field_bytes(
    teacher: AbstractSequenceClassifier, losses: LossConfig, lengths: Int64[np.ndarray, " examples"], dtype: str
) -> dict[str, int]:
    """The bytes each stored field takes for examples of these token ``lengths``, before building anything."""
    itemsize = DTYPES[dtype].itemsize
    return {
        name: int(_rows_per_example(name, lengths).sum()) * int(np.prod(shape)) * itemsize
        for name, shape in row_shapes(teacher, losses).items()
    }


def cache_key(teacher: AbstractSequenceClassifier, split: TokenizedSplit, losses: LossConfig, dtype: str) -> str:
    """A sha256 of everything the stored values depend on (see the module docstring)."""
    digest = hashlib.sha256()
    description = {
        "format": FORMAT_VERSION,
        "fields": losses.teacher_fields,
        "layer_map": [list(p) for p in losses.layer_map],
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
    return digest.hexdigest()


class TeacherCache:
    """The stored `TeacherTargets` of every example of a split: per field a flat ``(rows, *row_shape)`` array and
    per-example row offsets ``(examples + 1,)``."""

    def __init__(self, lengths: np.ndarray, arrays: Mapping[str, np.ndarray], key: str = "") -> None:
        self.lengths = np.asarray(lengths, np.int64)
        self.arrays = dict(arrays)
        self.key = key
        self.offsets = {
            name: np.concatenate([[0], np.cumsum(_rows_per_example(name, self.lengths))])
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

    def gather(self, indices: Int64[np.ndarray, " rows"], batch_size: int, seq: int) -> TeacherTargets:
        """The float32 targets of the examples at ``indices``, padded to ``(batch_size, ..., seq, ...)`` like
        their batch (zeros at padded positions and dummy rows, which no loss reads)."""
        out = {}
        for name, array in self.arrays.items():
            offsets = self.offsets[name]
            examples = [
                _from_rows(name, array[offsets[i] : offsets[i + 1]], int(self.lengths[i]), seq) for i in indices
            ]
            padded = np.zeros((batch_size, *examples[0].shape), np.float32)
            padded[: len(examples)] = examples
            out[name] = padded
        return TeacherTargets(**out)

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
            meta = {"key": self.key, "fields": list(self.arrays), "dtypes": {n: str(a.dtype) for n, a in
                                                                             self.arrays.items()}}
            (partial / "meta.json").write_text(json.dumps(meta))
            os.replace(partial, folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path) -> "TeacherCache":
        """A saved cache, its arrays memory-mapped (read-only)."""
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {}
        for name in meta["fields"]:
            array = np.load(folder / f"{name}.npy", mmap_mode="r")
            if meta["dtypes"][name] == "bfloat16":
                array = array.view(DTYPES["bfloat16"])
            arrays[name] = array
        return cls(np.load(folder / "lengths.npy"), arrays, meta["key"])


@eqx.filter_jit
def _targets(teacher: AbstractSequenceClassifier, batch: Batch, losses: LossConfig) -> TeacherTargets:
    return teacher_targets(forward(teacher, batch, key=None, **losses.outputs()), losses)


def _length_sorted_batches(
    split: TokenizedSplit, batch_size: int, buckets: tuple[int, ...]
) -> Iterator[tuple[np.ndarray, Batch]]:
    order = np.argsort(split.lengths, kind="stable")
    for indices in _batch_indices(order, batch_size):
        yield indices, _make_batch(split, indices, batch_size, buckets)


def _gib(n: int) -> str:
    return f"{n / 2**30:.3f} GiB" if n >= 2**27 else f"{n / 2**20:.2f} MiB"


def teacher_cache(
    teacher: AbstractSequenceClassifier,
    split: TokenizedSplit,
    losses: LossConfig,
    *,
    batch_size: int,
    buckets: tuple[int, ...],
    dtype: str = "float32",
    folder: str | Path | None = None,
    max_bytes: int | None = None,
    place=lambda batch: batch,
    log=print,
) -> TeacherCache:
    """The split's cache: read from ``folder/<key>`` when it is there, else computed by one inference pass of
    ``teacher`` (in inference mode) and saved there (``folder=None`` keeps it in memory only). ``place`` puts a
    batch on the run's devices (``Steps.place``), so the pass is data-parallel where the run is. Prints each field's size first, and refuses a cache
    larger than ``max_bytes``."""
    if dtype not in DTYPES:
        raise TeacherCacheError(f"teacher cache dtype={dtype!r}; expected one of {', '.join(DTYPES)}")
    if not losses.needs_teacher:
        raise TeacherCacheError(f"the loss terms {losses.terms} read nothing of the teacher; there is nothing to cache")
    sizes = field_bytes(teacher, losses, split.lengths, dtype)
    total = sum(sizes.values())
    log(f"teacher cache ({dtype}, {len(split)} examples): "
        + ", ".join(f"{name} {_gib(n)}" for name, n in sizes.items()) + f"; total {_gib(total)}")
    if max_bytes is not None and total > max_bytes:
        raise TeacherCacheError(
            f"the teacher cache would take {_gib(total)} ({', '.join(f'{k} {_gib(v)}' for k, v in sizes.items())}), "
            f"over the limit of {_gib(max_bytes)}: raise teacher_cache_max_gb, store bfloat16 "
            "(teacher_cache_dtype), or turn the cache off"
        )
    key = cache_key(teacher, split, losses, dtype)
    target = None if folder is None else Path(folder) / key
    if target is not None and target.is_dir():
        log(f"teacher cache: reading {target}")
        return TeacherCache.load(target)
    # One inference pass in length-sorted batches, each padded to its bucket, on the run's devices (``place``).
    arrays = {
        name: np.zeros((int(_rows_per_example(name, split.lengths).sum()), *shape), DTYPES[dtype])
        for name, shape in row_shapes(teacher, losses).items()
    }
    cache = TeacherCache(split.lengths, arrays, key)
    started = time.perf_counter()
    # The pass costs about the teacher's share of one epoch (minutes on a CPU), so it shows progress.
    batches = tqdm(_length_sorted_batches(split, batch_size, buckets), total=-(-len(split) // batch_size),
                   dynamic_ncols=True, desc="teacher cache")
    for indices, batch in batches:
        targets = jax.device_get(_targets(teacher, place(batch), losses))
        for name, store in arrays.items():
            offsets, value = cache.offsets[name], np.asarray(getattr(targets, name))
            for row, i in enumerate(indices):
                store[offsets[i] : offsets[i + 1]] = _to_rows(name, value[row], int(cache.lengths[i]))
    seconds = time.perf_counter() - started
    log(f"teacher cache: computed in {seconds:.1f} s ({len(split) / seconds:.1f} examples/s, compiling included)")
    if target is not None:
        cache.save(target)
        log(f"teacher cache: saved {target}")
    return cache
