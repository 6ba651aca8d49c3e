"""SST-2 on the host: loading (local GLUE TSV or the hub), tokenisation, and length-bucketed batching.

Everything here is numpy. Each split is tokenised once into ragged arrays; batches are padded to the smallest
length bucket that fits their longest example and always have exactly ``batch_size`` rows (dummy rows with
weight 0 fill the last one), so the jitted step sees a small fixed set of shapes and evaluation drops nothing.
Batch order depends only on ``(seed, epoch)``, so a run can resume mid-epoch by skipping ``start`` batches.
"""

import bisect
import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import tokenizers
from jaxtyping import Bool, Int32, Int64

from . import hub
from .batch import Batch
from .errors import UserError, decode_utf8

SPLIT_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
_HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
_HEADER = ["sentence", "label"]
# group_by_length sorts within chunks of this many batches: long enough to group similar lengths, short enough
# that batch contents still change from epoch to epoch (the Hugging Face "megabatch" idea). Smaller chunks give
# less uniform batches and more padding; docs/studies/batching.md found no accuracy effect of either.
GROUP_CHUNK_BATCHES = 100
# The shortest default length bucket: shorter buckets would save little and add compilations.
SMALLEST_BUCKET = 8
# SST-2's classes, in label order: what a saved classifier's config.json calls them.
LABEL_NAMES = ("negative", "positive")


class DataError(UserError):
    """The data is missing or malformed; the message names the file (and line) or split."""


@dataclasses.dataclass(frozen=True, eq=False)
class TextSplit:
    """One split as text: ``sentences[i]`` has label ``labels[i]`` (0 negative, 1 positive)."""

    name: str
    sentences: tuple[str, ...]
    labels: Int32[np.ndarray, " examples"]


@dataclasses.dataclass(frozen=True, eq=False)
class TokenizedSplit:
    """One tokenised split, stored ragged: example ``i`` is ``token_ids[offsets[i]:offsets[i + 1]]``.

    Token ids include ``[CLS]``/``[SEP]`` and are truncated to the tokenizer's ``max_length``, never padded;
    ``pad_id`` is the tokenizer's padding id, used when batching. ``labelled`` marks the examples whose label is
    real in a split joined with a transfer set (:func:`with_transfer_set`); ``None``: every label is real.
    """

    name: str
    labels: Int32[np.ndarray, " examples"]
    offsets: Int64[np.ndarray, " examples+1"]
    token_ids: Int32[np.ndarray, " tokens"]
    token_type_ids: Int32[np.ndarray, " tokens"]
    pad_id: int
    labelled: Bool[np.ndarray, " examples"] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> Int64[np.ndarray, " examples"]:
        """Tokens per example, ``(examples,)``."""
        return np.diff(self.offsets)

    def take(self, n: int) -> "TokenizedSplit":
        """The first ``n`` examples, in dataset order (for tests and smoke runs)."""
        if not 1 <= n <= len(self):
            raise DataError(f"cannot take {n} examples from split {self.name!r}, which has {len(self)}")
        end = int(self.offsets[n])
        return dataclasses.replace(
            self,
            labels=self.labels[:n],
            offsets=self.offsets[: n + 1],
            token_ids=self.token_ids[:end],
            token_type_ids=self.token_type_ids[:end],
            labelled=None if self.labelled is None else self.labelled[:n],
        )


def with_transfer_set(train: TokenizedSplit, variants: TokenizedSplit) -> TokenizedSplit:
    """``train`` followed by a transfer set's ``variants``, one split, with ``labelled`` marking the originals:
    the variants' labels are not real (the teacher labels them), and batches weigh label terms by ``labelled``."""
    if train.pad_id != variants.pad_id:
        raise DataError(f"the transfer set pads with {variants.pad_id}, the train split with {train.pad_id}")
    labelled = np.concatenate(
        [
            np.ones(len(train), np.bool_) if train.labelled is None else train.labelled,
            np.zeros(len(variants), np.bool_),
        ]
    )
    return TokenizedSplit(
        name=train.name,
        labels=np.concatenate([train.labels, variants.labels]).astype(np.int32),
        offsets=np.concatenate([train.offsets, variants.offsets[1:] + train.offsets[-1]]).astype(np.int64),
        token_ids=np.concatenate([train.token_ids, variants.token_ids]).astype(np.int32),
        token_type_ids=np.concatenate([train.token_type_ids, variants.token_type_ids]).astype(np.int32),
        pad_id=train.pad_id,
        labelled=labelled,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class SentenceTokenizer:
    """A fast tokenizer set to truncate to ``max_length`` and never pad, plus the pad id for batching."""

    backend: tokenizers.Tokenizer
    pad_id: int
    max_length: int


class PaddingStats(NamedTuple):
    """How much of a stream of batches is padding.

    ``mean_true_length``: tokens per real example; ``mean_padded_length``: padded sequence length per batch;
    ``token_efficiency``: real tokens / all token positions (dummy rows included); ``bucket_counts``: batches
    per padded length.
    """

    num_batches: int
    num_examples: int
    mean_true_length: float
    mean_padded_length: float
    token_efficiency: float
    bucket_counts: dict[int, int]


def read_glue_tsv(path: str | Path, name: str) -> TextSplit:
    """Read a GLUE SST-2 TSV file (header ``sentence<TAB>label``, labels 0/1) as split ``name``.

    Raises ``DataError`` naming the file and line for a missing or empty file, a wrong header, a wrong column
    count, a label outside {0, 1}, an empty sentence or a byte that is not UTF-8.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise DataError(f"{path} not found; expected a GLUE TSV with header 'sentence<TAB>label'") from e
    text = decode_utf8(data, str(path), DataError)
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if not lines:
        raise DataError(f"{path} is empty; expected the header 'sentence<TAB>label' and at least one row")
    header = lines[0].rstrip("\r").split("\t")
    if header != _HEADER:
        unlabelled = " (this is GLUE's unlabelled test file)" if header == ["index", "sentence"] else ""
        raise DataError(f"{path}:1: header is {header!r}; expected 'sentence<TAB>label'{unlabelled}")
    sentences, labels = [], []
    # Split on tabs rather than use the csv module: GLUE sentences contain literal quote characters.
    for line_number, line in enumerate(lines[1:], start=2):
        fields = line.rstrip("\r").split("\t")
        if len(fields) != 2:
            raise DataError(
                f"{path}:{line_number}: expected 2 tab-separated columns (sentence, label), found "
                f"{len(fields)}: {line[:80]!r}"
            )
        sentence, label = fields
        if label.strip() not in ("0", "1"):
            raise DataError(f"{path}:{line_number}: label {label!r} is not 0 or 1")
        # An empty sentence would train on [CLS] [SEP] alone with a label it cannot support.
        if not sentence.strip():
            raise DataError(f"{path}:{line_number}: the sentence is empty")
        sentences.append(sentence)
        labels.append(int(label))
    if not sentences:
        raise DataError(f"{path}: split {name!r} is empty (a header but no rows)")
    return TextSplit(name, tuple(sentences), np.asarray(labels, np.int32))


def _load_hub_split(dataset_id: str, split: str) -> TextSplit:
    """Load a split from the Hugging Face hub: ``"glue/sst2"`` -> ``load_dataset("glue", "sst2")``."""
    # Imported here: a slow import that only the hub path needs.
    import datasets

    path, _, config_name = dataset_id.rpartition("/")
    hub_split = _HUB_SPLITS[split]

    def unavailable(why: str) -> DataError:
        return DataError(
            f"data_dir is null, so SST-2 comes from the hub ({dataset_id!r}), which cannot be reached "
            f"({why}): set data_dir to a folder of GLUE SST-2 TSVs (train.tsv, dev.tsv, test.tsv)"
        )

    why = hub.unreachable()
    if why is not None and not hub.offline():
        raise unavailable(why)
    try:
        rows = datasets.load_dataset(path, config_name, split=hub_split)
    except Exception as e:  # offline, `datasets` reads its cache; a miss has no common error class
        if why is None:
            raise
        raise unavailable(f"{why}, and it is not in the cache") from e
    sentences = tuple(rows["sentence"])
    labels = np.asarray(list(rows["label"]), np.int64)
    where = f"hub dataset {dataset_id!r} split {hub_split!r}"
    if len(labels) == 0:
        raise DataError(f"{where} is empty")
    if np.all(labels == -1):
        raise DataError(
            f"{where} is unlabelled (every label is -1), so it cannot be evaluated; use 'dev', or set data_dir "
            "to a folder whose test.tsv has labels"
        )
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if len(bad):
        raise DataError(f"{where} row {bad[0]}: label {labels[bad[0]]} is not 0 or 1")
    return TextSplit(split, sentences, labels.astype(np.int32))


def load_text_split(split: str, *, data_dir: str | Path | None, dataset_id: str = "glue/sst2") -> TextSplit:
    """Load split ``"train"``, ``"dev"`` or ``"test"`` from a local GLUE folder, or from the hub when
    ``data_dir`` is None (``dev`` is the hub's ``validation``; the hub's ``test`` is unlabelled and refused)."""
    if split not in SPLIT_FILES:
        raise DataError(f"unknown split {split!r}; expected one of {tuple(SPLIT_FILES)}")
    if data_dir is None:
        return _load_hub_split(dataset_id, split)
    folder = Path(data_dir)
    expected = ", ".join(SPLIT_FILES.values())
    if not folder.is_dir():
        raise DataError(
            f"data_dir {str(folder)!r} is not a folder; expected a GLUE SST-2 folder with {expected}"
        )
    path = folder / SPLIT_FILES[split]
    if not path.is_file():
        raise DataError(f"{path} not found; data_dir {str(folder)!r} should hold {expected}")
    return read_glue_tsv(path, split)


def load_tokenizer(name_or_path: str, max_length: int) -> SentenceTokenizer:
    """Load a fast tokenizer from a local folder or hub id, with truncation to ``max_length`` and padding off.

    Padding is switched off explicitly because some ``tokenizer.json`` files (the MiniLM one among them) pad
    every encoding to a fixed length; batching pads to length buckets instead.
    """
    # Imported here: transformers takes seconds to import and only tokenisation needs it.
    import transformers

    why = hub.unreachable() if hub.is_hub_id(name_or_path) else None
    try:
        wrapper = transformers.AutoTokenizer.from_pretrained(
            name_or_path, use_fast=True, local_files_only=why is not None
        )
    except OSError as e:
        if why is not None:
            raise DataError(
                f"tokenizer_name={name_or_path!r} is neither a local folder nor in the hub cache, and the "
                f"hub cannot be reached ({why}): set tokenizer_name to a local folder holding tokenizer.json"
            ) from e
        # One line: the scripts print a user error as one line, and transformers' messages run to several.
        reason = " ".join(str(e).split())
        raise DataError(
            f"cannot load tokenizer {name_or_path!r}: {reason} (without hub access, set tokenizer_name to a "
            "local folder holding tokenizer.json)"
        ) from e
    if wrapper.pad_token_id is None:
        raise DataError(f"tokenizer {name_or_path!r} has no pad token")
    backend = wrapper.backend_tokenizer
    backend.no_padding()
    backend.enable_truncation(max_length)
    return SentenceTokenizer(backend, int(wrapper.pad_token_id), max_length)


def tokenize_split(split: TextSplit, tokenizer: SentenceTokenizer) -> TokenizedSplit:
    """Tokenise every sentence of ``split`` in one batch call, with special tokens, truncated, unpadded."""
    encodings = tokenizer.backend.encode_batch(list(split.sentences))
    lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, count=len(encodings))
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)])
    total = int(offsets[-1])
    token_ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), np.int32, count=total)
    type_ids = np.fromiter(
        itertools.chain.from_iterable(e.type_ids for e in encodings), np.int32, count=total
    )
    return TokenizedSplit(split.name, split.labels, offsets, token_ids, type_ids, tokenizer.pad_id)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket in ascending ``buckets`` that holds ``length`` tokens."""
    i = bisect.bisect_left(buckets, length)
    if i == len(buckets):
        raise DataError(
            f"an example of {length} tokens does not fit the largest length bucket {buckets[-1]}; the last bucket "
            "must equal the tokenizer's max_length"
        )
    return buckets[i]


def num_batches(split: TokenizedSplit, batch_size: int) -> int:
    """Batches per pass over ``split``; the last may be partial (padded with dummy rows)."""
    return -(-len(split) // batch_size)


def batch_indices(order: Int64[np.ndarray, " examples"], batch_size: int) -> list[np.ndarray]:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected an int >= 1")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def default_length_buckets(max_length: int) -> tuple[int, ...]:
    """Every ``2^k`` and ``3 * 2^k`` from 8 below ``max_length``, then ``max_length``.

    ``max_length=128`` gives ``(8, 12, 16, 24, 32, 48, 64, 96, 128)``. Consecutive buckets differ by at most
    1.5x, so a batch carries at most 50% padding beyond its longest example, at the price of one compilation
    per bucket used.
    """
    buckets = []
    power = SMALLEST_BUCKET
    while power < max_length:
        buckets += [length for length in (power, 3 * power // 2) if length < max_length]
        power *= 2
    return (*buckets, max_length)


def _train_order(
    lengths: Int64[np.ndarray, " examples"], batch_size: int, seed: int, epoch: int, group_by_length: bool
) -> list[np.ndarray]:
    """Example indices of each batch of one training epoch; a partial batch, if any, is always last."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not group_by_length:
        return batch_indices(order, batch_size)
    chunk = GROUP_CHUNK_BATCHES * batch_size
    chunks = [order[i : i + chunk] for i in range(0, len(order), chunk)]
    by_length = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
    batches = batch_indices(by_length, batch_size)
    full = len(order) // batch_size
    # Shuffle batches so the epoch does not run in chunk-sized waves of short then long sequences.
    return [batches[i] for i in rng.permutation(full)] + batches[full:]


def make_batch(
    split: TokenizedSplit, indices: Int64[np.ndarray, " rows"], batch_size: int, buckets: Sequence[int]
) -> Batch:
    """Pad the examples at ``indices`` to their bucket, and the batch to ``batch_size`` rows with dummies."""
    starts = split.offsets[indices]
    lengths = split.offsets[indices + 1] - starts
    seq = bucket_length(int(lengths.max()), buckets)
    rows = len(indices)
    real = np.arange(seq) < lengths[:, None]
    source = (starts[:, None] + np.arange(seq))[real]
    input_ids = np.full((batch_size, seq), split.pad_id, np.int32)
    token_type_ids = np.zeros((batch_size, seq), np.int32)
    attention_mask = np.zeros((batch_size, seq), np.bool_)
    input_ids[:rows][real] = split.token_ids[source]
    token_type_ids[:rows][real] = split.token_type_ids[source]
    attention_mask[:rows] = real
    attention_mask[rows:, 0] = True
    labels = np.zeros(batch_size, np.int32)
    labels[:rows] = split.labels[indices]
    weights = np.zeros(batch_size, np.float32)
    weights[:rows] = 1.0
    labelled = None
    if split.labelled is not None:
        labelled = np.zeros(batch_size, np.float32)
        labelled[:rows] = split.labelled[indices]
    return Batch(input_ids, attention_mask, token_type_ids, labels, weights, labelled=labelled)


# A batch and the split indices of its real rows: what a transform of the stream (the teacher-output cache)
# needs to find the rows' own data.
IndexedBatch = tuple[Int64[np.ndarray, " rows"], Batch]


def indexed_train_batches(
    split: TokenizedSplit,
    batch_size: int,
    buckets: Sequence[int],
    *,
    seed: int,
    epoch: int,
    group_by_length: bool = False,
    start: int = 0,
) -> Iterator[IndexedBatch]:
    """Batches of one training epoch, each with the split indices of its rows, in a shuffled order fixed by
    ``(seed, epoch)``, skipping the first ``start`` (for exact resume). Every example appears exactly once; each
    batch is ``(batch_size, bucket)``.

    ``group_by_length`` sorts by length within chunks of ``GROUP_CHUNK_BATCHES`` batches (of the shuffled
    examples) before shuffling the batches, so most batches land in a short bucket.
    """
    batches = _train_order(split.lengths, batch_size, seed, epoch, group_by_length)
    if not 0 <= start <= len(batches):
        raise ValueError(f"start={start}; expected 0 <= start <= {len(batches)} (batches in this epoch)")
    return ((indices, make_batch(split, indices, batch_size, buckets)) for indices in batches[start:])


def indexed_epoch_batches(
    split: TokenizedSplit,
    batch_size: int,
    buckets: Sequence[int],
    *,
    seed: int,
    group_by_length: bool,
    start_step: int = 0,
) -> Iterator[IndexedBatch]:
    """Training batches (with their indices) from ``start_step`` on, epoch after epoch, without end: what a run
    of any length (``max_steps``, several epochs, a resumed run) draws from."""
    epoch, position = divmod(start_step, num_batches(split, batch_size))
    while True:
        yield from indexed_train_batches(
            split,
            batch_size,
            buckets,
            seed=seed,
            epoch=epoch,
            group_by_length=group_by_length,
            start=position,
        )
        epoch, position = epoch + 1, 0


def train_batches(
    split: TokenizedSplit, batch_size: int, buckets: Sequence[int], **order: Any
) -> Iterator[Batch]:
    """:func:`indexed_train_batches` without the indices."""
    return (batch for _, batch in indexed_train_batches(split, batch_size, buckets, **order))


def epoch_batches(
    split: TokenizedSplit, batch_size: int, buckets: Sequence[int], **order: Any
) -> Iterator[Batch]:
    """:func:`indexed_epoch_batches` without the indices."""
    return (batch for _, batch in indexed_epoch_batches(split, batch_size, buckets, **order))


def eval_batches(split: TokenizedSplit, batch_size: int, buckets: Sequence[int]) -> Iterator[Batch]:
    """Batches in dataset order, each ``(batch_size, bucket)``; the last is filled with weight-0 dummy rows."""
    batches = batch_indices(np.arange(len(split)), batch_size)
    return (make_batch(split, indices, batch_size, buckets) for indices in batches)


def padding_stats(batches: Iterable[Batch]) -> PaddingStats:
    """Measure padding over ``batches`` (e.g. one epoch of :func:`train_batches`)."""
    num_examples, true_tokens, positions = 0, 0, 0
    seq_lengths: list[int] = []
    for batch in batches:
        real_rows = batch.weights > 0
        num_examples += int(real_rows.sum())
        true_tokens += int(batch.attention_mask[real_rows].sum())
        positions += batch.input_ids.size
        seq_lengths.append(batch.input_ids.shape[1])
    if not seq_lengths:
        raise ValueError("padding_stats needs at least one batch")
    lengths, counts = np.unique(seq_lengths, return_counts=True)
    return PaddingStats(
        num_batches=len(seq_lengths),
        num_examples=num_examples,
        mean_true_length=true_tokens / num_examples,
        mean_padded_length=float(np.mean(seq_lengths)),
        token_efficiency=true_tokens / positions,
        bucket_counts={int(length): int(count) for length, count in zip(lengths, counts)},
    )


def slice_for_process(batch: Batch, process_id: int, num_processes: int) -> Batch:
    """Rows ``process_id * B / n : (process_id + 1) * B / n`` of a global batch of ``B`` rows, for one of
    ``n = num_processes`` hosts; every host builds the same global batch and keeps its own slice. A packed batch's
    rows are sliced alike, and its sentences, row-major, with them."""
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id}; expected 0 <= process_id < {num_processes}")
    for rows in {len(batch.labels), batch.model_rows}:
        if rows % num_processes:
            raise ValueError(
                f"batch of {rows} rows cannot be split evenly across num_processes={num_processes}"
            )

    def own_rows(field: np.ndarray) -> np.ndarray:
        per_process = len(field) // num_processes
        return field[process_id * per_process : (process_id + 1) * per_process]

    return jax.tree.map(own_rows, batch)
