"""A transfer set for distillation: ``copies`` word-level variants of every train example, made once, on disk.

Per example and variant, each word independently becomes ``[MASK]`` with probability ``mask_prob`` (Tang et
al. 2019), else, if eligible (``words.py``), one of its ``neighbours`` replacement candidates, chosen uniformly,
with probability ``replace_prob`` (TinyBERT's ``p``; a single uniform draw decides, so the two are exclusive
and ``mask_prob + replace_prob <= 1``); then, with probability ``ngram_prob``, only one random n-gram of words
is kept, ``n`` uniform in ``1..max_ngram`` (Tang), or the whole example if it is shorter. A masked word of
several pieces becomes one ``[MASK]``; a replacement is one whole-word token. Variants therefore never grow
and need no new truncation. Where the candidates come from is the ``candidates`` family (``CANDIDATES``):
the teacher's embedding neighbours, or a masked LM's predictions in context.

Everything is done on token ids, vectorised over chunks of examples; the random draws of example ``i`` come
from ``numpy.random.default_rng([seed, i])`` with shapes that depend only on the example, so a pool does not
depend on chunking. A variant equal to its source, to an earlier variant or to any train example (compared as
token-id sequences) is dropped; so each example has at most ``copies`` variants, and TinyBERT's N counts
attempts the same way.

On disk a pool is a folder of ``.npy`` files named by a sha256 of what it depends on: the train sentences
and labels, the tokenizer (its full serialisation and ``max_length``), the teacher's word-embedding table, the
settings (a masked LM's files too) and the seed. It is written under a temporary name and renamed when
complete, and read back memory-mapped by every run that asks for the same key. Dev and test text never enter:
the entry point takes the train split only.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from jaxtyping import Float, Int32, Int64
from tqdm import tqdm

from ...checkpoint import atomic_replace_dir, temp_sibling
from ...data import SentenceTokenizer, TextSplit, TokenizedSplit, tokenize_split
from ...errors import UserError
from ...hf import load_config
from ...models import AbstractSequenceClassifier
from . import mlm
from .neighbours import vocabulary_neighbours, word_candidates
from .words import STOP_WORDS, Vocabulary, Words, split_words, vocabulary

FORMAT_VERSION = 1
# Examples per vectorised chunk (and per progress-bar step).
CHUNK = 2048
_ARRAYS = ("token_ids", "token_type_ids", "offsets", "labels", "sources")


class AugmentError(UserError):
    """Augmentation cannot run as asked; the message says what to change."""


Candidates = tuple[Int64[np.ndarray, " words"], Int32[np.ndarray, "rows k"]]


def _neighbour_candidates(split, words, vocab, neighbours: Candidates, settings, log) -> Candidates:
    return neighbours


# Where replacement candidates come from. Each takes the split, its words, the vocabulary, the embedding
# neighbours (every source falls back on them, as TinyBERT falls back on GloVe), the settings and a log, and
# returns each word's candidate row (-1: not eligible) and the rows.
CANDIDATES: dict[str, Callable[..., Candidates]] = {
    "neighbours": _neighbour_candidates,
    "mlm": mlm.masked_lm_candidates,
}


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
    """How a pool is made (see the module docstring).

    ``copies``: variants tried per example (N). ``replace_prob``, ``neighbours``: TinyBERT's ``p`` and ``M``.
    ``mask_prob``, ``ngram_prob``, ``max_ngram``: Tang et al.'s masking and n-gram sampling (0 switches a
    method off). ``candidates``: a name in ``CANDIDATES``; ``"mlm"`` reads the ``BertForMaskedLM`` checkpoint
    folder ``masked_lm`` and runs ``mlm_batch_size`` masked sentences per forward (batching does not enter
    the key: it changes nothing but speed).
    """

    copies: int = 20
    replace_prob: float = 0.4
    neighbours: int = 15
    mask_prob: float = 0.1
    ngram_prob: float = 0.25
    max_ngram: int = 5
    candidates: str = "neighbours"
    masked_lm: str | None = None
    mlm_batch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("replace_prob", "mask_prob", "ngram_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise AugmentError(f"{name}={getattr(self, name)}; expected a probability in [0, 1]")
        if self.replace_prob + self.mask_prob > 1.0:
            raise AugmentError(
                f"replace_prob + mask_prob = {self.replace_prob + self.mask_prob}; one draw decides between "
                "them, so their sum must be at most 1"
            )
        for name in ("copies", "neighbours", "max_ngram", "mlm_batch_size"):
            if getattr(self, name) < 1:
                raise AugmentError(f"{name}={getattr(self, name)}; expected an int >= 1")
        if self.candidates not in CANDIDATES:
            raise AugmentError(f"candidates={self.candidates!r}; expected one of {sorted(CANDIDATES)}")
        if (self.candidates == "mlm") != (self.masked_lm is not None):
            raise AugmentError(
                "candidates='mlm' needs masked_lm (a BertForMaskedLM checkpoint folder), and only it reads one"
            )


class AugmentedPool(NamedTuple):
    """The variants as a tokenised split (labels are their sources' labels, token types 0) and, per variant,
    the index of its source example in the train split."""

    split: TokenizedSplit
    sources: Int64[np.ndarray, " variants"]


class Summary(NamedTuple):
    """What a pool's making did: variants kept of those tried, words replaced and masked in the kept ones."""

    variants: int
    tried: int
    replaced: int
    masked: int
    seconds: float


def _sha(digest, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype}{array.shape}".encode())
    digest.update(array.tobytes())


def pool_key(
    train: TextSplit,
    tokenizer: SentenceTokenizer,
    table: Float[np.ndarray, "vocab dim"],
    settings: AugmentSettings,
    seed: int,
) -> str:
    """A sha256 of everything a pool depends on (see the module docstring)."""
    digest = hashlib.sha256()
    described = {
        k: v for k, v in dataclasses.asdict(settings).items() if k not in ("masked_lm", "mlm_batch_size")
    }
    description = {
        "format": FORMAT_VERSION,
        "settings": described,
        "seed": seed,
        "max_length": tokenizer.max_length,
        "stop_words": sorted(STOP_WORDS),
    }
    digest.update(json.dumps(description, sort_keys=True).encode())
    digest.update(tokenizer.backend.to_str().encode())
    digest.update(json.dumps(train.sentences).encode())
    _sha(digest, train.labels)
    _sha(digest, table)
    if settings.masked_lm is not None:
        folder, _ = load_config(settings.masked_lm)
        for name in sorted(p.name for p in folder.iterdir() if p.suffix in (".json", ".safetensors", ".bin")):
            digest.update(name.encode())
            digest.update((folder / name).read_bytes())
    return digest.hexdigest()


def neighbours_key(tokenizer: SentenceTokenizer, table: np.ndarray, k: int) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": FORMAT_VERSION, "k": k, "stop_words": sorted(STOP_WORDS)}).encode())
    digest.update(tokenizer.backend.to_str().encode())
    _sha(digest, table)
    return digest.hexdigest()


def cached_vocabulary_neighbours(
    table: Float[np.ndarray, "vocab dim"],
    vocab: Vocabulary,
    tokenizer: SentenceTokenizer,
    k: int,
    folder: Path | None,
    log: Callable[[str], None],
) -> Int32[np.ndarray, "vocab k"]:
    """`vocabulary_neighbours`, kept in ``folder/neighbours-<key>.npy`` (shared by every pool of that teacher,
    tokenizer and ``k``, whatever its seed or probabilities)."""
    path = None if folder is None else folder / f"neighbours-{neighbours_key(tokenizer, table, k)}.npy"
    if path is not None and path.is_file():
        return np.load(path)
    started = time.perf_counter()
    found = vocabulary_neighbours(table, vocab, k)
    log(
        f"augment: {int(vocab.replaceable.sum())} whole-word entries, {k} neighbours each, in "
        f"{time.perf_counter() - started:.1f} s on {jax.devices()[0].platform}"
    )
    if path is not None:
        folder.mkdir(parents=True, exist_ok=True)
        partial = temp_sibling(path)
        try:
            with open(partial, "wb") as f:
                np.save(f, found)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return found


def _draws(seed: int, example: int, n_words: int, settings: AugmentSettings):
    """Example ``example``'s random numbers: shapes depend only on the example, so chunking changes nothing."""
    rng = np.random.default_rng([seed, example])
    copies = settings.copies
    return (
        rng.random((copies, n_words)),
        rng.integers(0, settings.neighbours, (copies, n_words)),
        rng.random(copies),
        rng.integers(1, settings.max_ngram + 1, copies),
        rng.random(copies),
    )


class _Chunk(NamedTuple):
    token_ids: Int32[np.ndarray, " tokens"]
    lengths: Int64[np.ndarray, " variants"]
    sources: Int64[np.ndarray, " variants"]
    replaced: Int64[np.ndarray, " variants"]
    masked: Int64[np.ndarray, " variants"]


def _chunk_variants(
    split: TokenizedSplit,
    words: Words,
    candidates: Candidates,
    vocab: Vocabulary,
    settings: AugmentSettings,
    seed: int,
    examples: range,
) -> _Chunk:
    """Every variant of ``examples``, in order (example, then variant), before deduplication."""
    row, table = candidates
    copies = settings.copies
    counts = np.diff(words.offsets)[examples.start : examples.stop]
    draws = [_draws(seed, i, int(counts[j]), settings) for j, i in enumerate(examples)]
    # One entry per (example, variant, word), in that order.
    u = np.concatenate([d[0].ravel() for d in draws])
    pick = np.concatenate([d[1].ravel() for d in draws])
    ngram_u, ngram_n, ngram_start_u = (np.concatenate([d[k] for d in draws]) for k in (2, 3, 4))
    n_variants = len(examples) * copies
    variant = np.repeat(np.arange(n_variants), np.repeat(counts, copies))
    word_in_example = np.arange(len(u)) - np.repeat(
        np.concatenate([[0], np.cumsum(np.repeat(counts, copies))[:-1]]), np.repeat(counts, copies)
    )
    word = words.offsets[examples.start + variant // copies] + word_in_example

    # n-gram sampling, per variant: keep words [start, start + n) of the example's words.
    n_words = np.repeat(counts, copies)
    n = np.minimum(ngram_n, n_words)
    start = np.floor(ngram_start_u * (n_words - n + 1)).astype(np.int64)
    sampled = ngram_u < settings.ngram_prob
    kept = ~sampled[variant] | (
        (word_in_example >= start[variant]) & (word_in_example < (start + n)[variant])
    )

    masked = kept & (u < settings.mask_prob)
    word_row = row[word]
    replaced = kept & ~masked & (u < settings.mask_prob + settings.replace_prob) & (word_row >= 0)
    new_token = np.where(replaced, table[np.maximum(word_row, 0), pick], vocab.mask_id).astype(np.int32)
    length = np.where(kept, np.where(masked | replaced, 1, words.pieces[word]), 0)

    # Lay the variants out flat: [CLS], the words' tokens, [SEP].
    variant_length = np.bincount(variant, weights=length, minlength=n_variants).astype(np.int64) + 2
    variant_start = np.concatenate([[0], np.cumsum(variant_length)[:-1]])
    before = np.cumsum(length) - length
    position = 1 + before + 2 * variant
    entry = np.repeat(np.arange(len(length)), length)
    within = np.arange(len(entry)) - np.repeat(before, length)
    out = np.empty(int(variant_length.sum()), np.int32)
    out[variant_start] = vocab.cls_id
    out[variant_start + variant_length - 1] = vocab.sep_id
    copied = (masked | replaced)[entry]
    out[position[entry] + within] = np.where(
        copied, new_token[entry], split.token_ids[words.starts[word[entry]] + within]
    )
    return _Chunk(
        out,
        variant_length,
        np.repeat(np.arange(examples.start, examples.stop), copies),
        np.bincount(variant, weights=replaced, minlength=n_variants).astype(np.int64),
        np.bincount(variant, weights=masked, minlength=n_variants).astype(np.int64),
    )


def make_pool(
    split: TokenizedSplit,
    words: Words,
    candidates: Candidates,
    vocab: Vocabulary,
    settings: AugmentSettings,
    seed: int,
    *,
    progress: bool = True,
) -> tuple[AugmentedPool, Summary]:
    """The deduplicated variants of every example of ``split`` (see the module docstring), in memory."""
    started = time.perf_counter()
    seen = {
        split.token_ids[a:b].tobytes()
        for a, b in zip(split.offsets[:-1].tolist(), split.offsets[1:].tolist())
    }
    pieces, lengths, sources = [], [], []
    replaced = masked = tried = 0
    chunks = [range(i, min(i + CHUNK, len(split))) for i in range(0, len(split), CHUNK)]
    for examples in tqdm(chunks, desc="augment", unit="chunk", dynamic_ncols=True, disable=not progress):
        chunk = _chunk_variants(split, words, candidates, vocab, settings, seed, examples)
        ends = np.cumsum(chunk.lengths).tolist()
        keep = np.zeros(len(chunk.lengths), np.bool_)
        for v, (a, b) in enumerate(zip([0, *ends[:-1]], ends)):
            sequence = chunk.token_ids[a:b].tobytes()
            if sequence not in seen:
                seen.add(sequence)
                keep[v] = True
        tried += len(keep)
        pieces.append(chunk.token_ids[np.repeat(keep, chunk.lengths)])
        lengths.append(chunk.lengths[keep])
        sources.append(chunk.sources[keep])
        replaced += int(chunk.replaced[keep].sum())
        masked += int(chunk.masked[keep].sum())
    token_ids = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    lengths_all = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    source = np.concatenate(sources) if sources else np.zeros(0, np.int64)
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths_all)])
    variants = TokenizedSplit(
        "augmented", split.labels[source], offsets, token_ids, np.zeros_like(token_ids), split.pad_id
    )
    summary = Summary(len(source), tried, replaced, masked, time.perf_counter() - started)
    return AugmentedPool(variants, source), summary


def save_pool(pool: AugmentedPool, folder: Path, meta: dict) -> None:
    """Write ``pool`` to ``folder`` atomically: a temporary sibling, fsynced, then renamed into place."""
    partial = temp_sibling(folder)
    partial.mkdir(parents=True)
    try:
        arrays = {
            "token_ids": pool.split.token_ids,
            "token_type_ids": pool.split.token_type_ids,
            "offsets": pool.split.offsets,
            "labels": pool.split.labels,
            "sources": pool.sources,
        }
        for name in _ARRAYS:
            np.save(partial / f"{name}.npy", arrays[name])
        (partial / "meta.json").write_text(json.dumps(meta | {"pad_id": pool.split.pad_id}))
        atomic_replace_dir(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def load_pool(folder: Path) -> AugmentedPool:
    """A saved pool, its arrays memory-mapped (read-only)."""
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
    split = TokenizedSplit(
        "augmented",
        arrays["labels"],
        arrays["offsets"],
        arrays["token_ids"],
        arrays["token_type_ids"],
        int(meta["pad_id"]),
    )
    return AugmentedPool(split, arrays["sources"])


def pool_text(pool: AugmentedPool, tokenizer: SentenceTokenizer, indices: Iterable[int]) -> list[str]:
    """The variants at ``indices`` as text (decoded on demand: a whole pool's text is not stored)."""
    split = pool.split
    rows = [split.token_ids[split.offsets[i] : split.offsets[i + 1]].tolist() for i in indices]
    return tokenizer.backend.decode_batch(rows, skip_special_tokens=False)


def augmented_pool(
    train: TextSplit,
    tokenizer: SentenceTokenizer,
    teacher: AbstractSequenceClassifier,
    settings: AugmentSettings,
    folder: str | Path | None,
    seed: int,
    log: Callable[[str], None] = print,
) -> AugmentedPool:
    """The augmented transfer set of the train split: read from ``folder/<key>`` if there, else made and saved.

    Arguments:
        train: the train split as text (``data.load_text_split("train", ...)``); a split of any other name
            is refused, so dev and test inputs never enter a transfer set.
        tokenizer: the run's tokenizer (``data.load_tokenizer``); it must be the teacher's WordPiece vocabulary.
        teacher: its input word-embedding table gives the neighbours (and enters the key).
        settings: the methods and their probabilities.
        folder: where pools (``folder/<sha256>/``) and vocabulary neighbour tables are kept; None: in memory.
        seed: the draws' seed; the pool is a function of (key, seed) only.
        log: receives a one-line summary (and where the pool was read or written).

    Returns:
        ``AugmentedPool(split, sources)``: the deduplicated variants as a ``TokenizedSplit`` (ragged
        ``[CLS] ... [SEP]`` ids, token types 0, each variant labelled with its source's label; on disk reads,
        memory-mapped) and ``sources[j]``, the index in ``train`` of variant ``j``'s source example. The
        original examples are not in it: train on ``train`` and the pool together as the recipe wants. Text
        for inspection: ``pool_text``.
    """
    if train.name != "train":
        raise AugmentError(
            f"augmentation takes the train split only, not {train.name!r}: a transfer set made from dev or test "
            "inputs would let the student see the sentences it is evaluated on"
        )
    table = np.asarray(jax.device_get(teacher.encoder.embeddings.word.weight), np.float32)
    key = pool_key(train, tokenizer, table, settings, seed)
    target = None if folder is None else Path(folder) / key
    if target is not None and target.is_dir():
        pool = load_pool(target)
        log(f"augment: read {len(pool.sources)} variants from {target}")
        return pool
    started = time.perf_counter()
    split = tokenize_split(train, tokenizer)
    vocab = vocabulary(tokenizer)
    if len(vocab) != len(table):
        raise AugmentError(
            f"the tokenizer has {len(vocab)} entries but the teacher's embedding table {len(table)} rows: "
            "augmentation needs the teacher's own tokenizer"
        )
    words = split_words(split, vocab)
    base = Path(folder) if folder is not None else None
    vocab_table = cached_vocabulary_neighbours(table, vocab, tokenizer, settings.neighbours, base, log)
    neighbours = word_candidates(split, words, table, vocab, vocab_table)
    candidates = CANDIDATES[settings.candidates](split, words, vocab, neighbours, settings, log)
    pool, summary = make_pool(split, words, candidates, vocab, settings, seed)
    seconds = time.perf_counter() - started
    log(
        f"augment: kept {summary.variants} of {summary.tried} variants ({summary.variants / len(split):.1f} per "
        f"example), {summary.replaced} words replaced, {summary.masked} masked, in {seconds:.1f} s"
    )
    if target is not None:
        meta = {
            "key": key,
            "seed": seed,
            "settings": dataclasses.asdict(settings),
            "summary": summary._asdict(),
        }
        save_pool(pool, target, meta)
        log(f"augment: saved {target}")
    return pool
