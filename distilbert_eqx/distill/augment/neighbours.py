"""Replacement candidates from the teacher's own input word embeddings: TinyBERT's GloVe path.

TinyBERT replaces a word that is several wordpieces by one of its ``M`` nearest GloVe words. No GloVe (and
often no masked-LM head) is available offline, so the vectors here are the teacher's input word-embedding
table: a word's vector is its row (the mean of its pieces' rows for a word of several pieces), and its
candidates are the ``M`` whole-word vocabulary entries nearest by cosine, itself excluded. The table's
neighbours are computed once for the whole vocabulary, as a batched matrix product and ``jax.lax.top_k`` on the
default device.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, Int32, Int64

from ...data import TokenizedSplit
from .words import Vocabulary, Words

# Queries per top-k call: a (1024, candidates) score matrix is 90 MB for the 22k whole-word entries of
# bert-base-uncased, small enough for any device and large enough to keep the matrix unit busy.
QUERY_BATCH = 1024


@functools.partial(jax.jit, static_argnames="k")
def _top_k(
    queries: Float[jax.Array, "batch dim"],
    keys: Float[jax.Array, "keys dim"],
    itself: Int32[jax.Array, " batch"],
    k: int,
) -> Int32[jax.Array, "batch k"]:
    scores = queries @ keys.T
    scores = jnp.where(jnp.arange(keys.shape[0])[None, :] == itself[:, None], -jnp.inf, scores)
    return jax.lax.top_k(scores, k)[1]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest(
    queries: Float[np.ndarray, "queries dim"],
    table: Float[np.ndarray, "vocab dim"],
    candidates: Int64[np.ndarray, " keys"],
    itself: Int64[np.ndarray, " queries"],
    k: int,
) -> Int32[np.ndarray, "queries k"]:
    """For each query vector, the ``k`` vocabulary ids among ``candidates`` whose rows of ``table`` are nearest
    by cosine, nearest first, never the query's own id ``itself`` (-1: none)."""
    if k > len(candidates) - 1:
        raise ValueError(
            f"{k} neighbours asked, but the vocabulary has only {len(candidates)} whole-word entries"
        )
    keys = jnp.asarray(_unit(table[candidates]))
    column = np.full(len(table), -1, np.int32)
    column[candidates] = np.arange(len(candidates), dtype=np.int32)
    own = np.where(itself >= 0, column[np.maximum(itself, 0)], -1).astype(np.int32)
    queries = _unit(queries)
    out = np.zeros((len(queries), k), np.int32)
    for start in range(0, len(queries), QUERY_BATCH):
        batch = np.zeros((QUERY_BATCH, queries.shape[1]), np.float32)
        rows = queries[start : start + QUERY_BATCH]
        batch[: len(rows)] = rows
        batch_own = np.full(QUERY_BATCH, -1, np.int32)
        batch_own[: len(rows)] = own[start : start + QUERY_BATCH]
        found = np.asarray(_top_k(jnp.asarray(batch), keys, jnp.asarray(batch_own), k))
        out[start : start + len(rows)] = found[: len(rows)]
    return candidates[out].astype(np.int32)


def vocabulary_neighbours(
    table: Float[np.ndarray, "vocab dim"], vocab: Vocabulary, k: int
) -> Int32[np.ndarray, "vocab k"]:
    """Row ``i``: the ``k`` whole-word entries nearest to vocabulary entry ``i`` (rows of entries that are not
    whole-word candidates are -1)."""
    candidates = np.flatnonzero(vocab.replaceable)
    out = np.full((len(table), k), -1, np.int32)
    out[candidates] = nearest(table[candidates], table, candidates, candidates, k)
    return out


def word_candidates(
    split: TokenizedSplit,
    words: Words,
    table: Float[np.ndarray, "vocab dim"],
    vocab: Vocabulary,
    vocab_table: Int32[np.ndarray, "vocab k"],
) -> tuple[Int64[np.ndarray, " words"], Int32[np.ndarray, "rows k"]]:
    """Each eligible word's candidate row: a single-piece word's is its vocabulary row of ``vocab_table``; a
    word of several pieces gets its own row, from the mean of its pieces' embeddings (one row per distinct
    word). Returns (row per word, -1 where not eligible; the rows)."""
    k = vocab_table.shape[1]
    row = np.full(len(words), -1, np.int64)
    single = words.eligible & (words.pieces == 1)
    row[single] = split.token_ids[words.starts[single]]
    distinct: dict[tuple[int, ...], int] = {}
    multi = np.flatnonzero(words.eligible & (words.pieces > 1))
    for w in multi:
        row[w] = len(vocab_table) + distinct.setdefault(words.piece_ids(split, int(w)), len(distinct))
    if not distinct:
        return row, vocab_table
    means = np.stack([table[list(pieces)].mean(axis=0) for pieces in distinct])
    extra = nearest(means, table, np.flatnonzero(vocab.replaceable), np.full(len(distinct), -1, np.int64), k)
    return row, np.concatenate([vocab_table, extra])
