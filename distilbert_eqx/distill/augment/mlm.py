"""Replacement candidates from a masked language model in context: TinyBERT's path for single-piece words.

For each eligible single-piece word of each example, TinyBERT's ``data_augmentation.py`` masks the word and
feeds the pair ``[CLS] masked sentence [SEP] original sentence [SEP]`` (token types 0, then 1) to
``BertForMaskedLM``; the word's candidates are the ``M`` most likely tokens at the mask. Here they are the
``M`` most likely *whole-word* entries (``words.py``; TinyBERT drops only ``##`` pieces), the word itself
excluded, and the forward is batched: every row of a batch is one (example, masked word) pair, rows sorted by
length and padded to length buckets, so one forward covers many masked positions and only a few shapes are
compiled. Words of several pieces keep the embedding neighbours, as TinyBERT keeps GloVe for them.
"""

import time
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, Int32, Int64
from tqdm import tqdm

from ..._types import TokenIds, TokenMask
from ...data import TokenizedSplit, bucket_length, default_length_buckets
from ...errors import UserError
from ...hf import _read_tensors, from_pretrained, load_config
from ...models import BertForSequenceClassification
from ...models.layers import Encoder, activation, dense, layer_norm
from .words import Vocabulary, Words


class MaskedLM(eqx.Module):
    """A BERT encoder with ``transformers``' ``BertForMaskedLM`` head (``cls.predictions``): dense, activation,
    LayerNorm, then the decoder (tied to the word embeddings unless the checkpoint has its own) plus a bias."""

    encoder: Encoder
    transform: eqx.nn.Linear
    norm: eqx.nn.LayerNorm
    decoder: Float[Array, "vocab hidden"]
    bias: Float[Array, " vocab"]
    activation: str = eqx.field(static=True)

    def __call__(
        self,
        input_ids: TokenIds,
        attention_mask: TokenMask,
        token_type_ids: TokenIds,
        position: Int[Array, ""],
    ) -> Float[Array, " vocab"]:
        """The float32 logits over the vocabulary at ``position`` of one sequence (inference: no dropout)."""
        hidden = self.encoder(input_ids, attention_mask, token_type_ids, compute_dtype=jnp.dtype(jnp.float32))
        h = jax.lax.dynamic_slice_in_dim(hidden.last_hidden_state, position, 1)
        h = layer_norm(self.norm, activation(self.activation, dense(self.transform, h)))
        return (h @ self.decoder.T)[0] + self.bias


def load_masked_lm(path: str | Path) -> MaskedLM:
    """A ``BertForMaskedLM`` checkpoint folder (``config.json`` + safetensors), in inference mode."""
    folder, raw = load_config(path)
    if raw.get("model_type") != "bert":
        raise UserError(
            f"{folder}: the masked-LM candidates need a BERT checkpoint, not {raw.get('model_type')!r}"
        )
    bert = from_pretrained(folder)
    assert isinstance(bert, BertForSequenceClassification)
    tensors = {
        name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): value
        for name, value in _read_tensors(folder).items()
    }
    head = "cls.predictions."
    bias = tensors.get(f"{head}bias", tensors.get(f"{head}decoder.bias"))
    needed = [
        f"{head}transform.dense.weight",
        f"{head}transform.dense.bias",
        f"{head}transform.LayerNorm.weight",
        f"{head}transform.LayerNorm.bias",
    ]
    missing = [name for name in needed if name not in tensors] + ([f"{head}bias"] if bias is None else [])
    if missing:
        raise UserError(
            f"{folder} has no masked-LM head (missing {', '.join(missing)}); save a BertForMaskedLM"
        )
    hidden = bert.hidden_size
    transform = eqx.nn.Linear(hidden, hidden, key=jax.random.key(0))
    transform = eqx.tree_at(
        lambda m: (m.weight, m.bias),
        transform,
        (jnp.asarray(tensors[needed[0]], jnp.float32), jnp.asarray(tensors[needed[1]], jnp.float32)),
    )
    norm = eqx.nn.LayerNorm(hidden, eps=bert.config.layer_norm_eps)
    norm = eqx.tree_at(
        lambda m: (m.weight, m.bias),
        norm,
        (jnp.asarray(tensors[needed[2]], jnp.float32), jnp.asarray(tensors[needed[3]], jnp.float32)),
    )
    word = bert.encoder.embeddings.word.weight
    decoder = jnp.asarray(tensors.get(f"{head}decoder.weight", word), jnp.float32)
    model = MaskedLM(
        bert.encoder, transform, norm, decoder, jnp.asarray(bias, jnp.float32), bert.config.hidden_act
    )
    return eqx.nn.inference_mode(model)


@eqx.filter_jit
def top_candidates(
    model: MaskedLM,
    input_ids: Int32[Array, "batch seq"],
    attention_mask: Bool[Array, "batch seq"],
    token_type_ids: Int32[Array, "batch seq"],
    positions: Int32[Array, " batch"],
    allowed: Bool[Array, " vocab"],
    k: int,
) -> Int32[Array, "batch k"]:
    """Each row's ``k`` most likely ``allowed`` tokens at its masked ``position``, most likely first."""
    logits = jax.vmap(model)(input_ids, attention_mask, token_type_ids, positions)
    return jax.lax.top_k(jnp.where(allowed[None, :], logits, -jnp.inf), k)[1]


def masked_lm_candidates(
    split: TokenizedSplit,
    words: Words,
    vocab: Vocabulary,
    neighbours: tuple[Int64[np.ndarray, " words"], Int32[np.ndarray, "rows k"]],
    settings,
    log: Callable[[str], None],
) -> tuple[Int64[np.ndarray, " words"], Int32[np.ndarray, "more_rows k"]]:
    """The embedding ``neighbours`` with every eligible single-piece word's row replaced by its masked-LM
    candidates in its own sentence (one new row per word occurrence)."""
    model = load_masked_lm(settings.masked_lm)
    row, table = neighbours
    k = settings.neighbours
    if len(model.bias) != len(vocab):
        raise UserError(f"the masked LM has {len(model.bias)} tokens but the tokenizer {len(vocab)}")
    single = np.flatnonzero(words.eligible & (words.pieces == 1))
    example = np.searchsorted(words.offsets, single, side="right") - 1
    start = split.offsets[example]
    length = split.lengths[example]
    pair_length = 2 * length - 1
    max_positions = model.encoder.embeddings.position.weight.shape[0]
    if len(single) and pair_length.max() > max_positions:
        raise UserError(
            f"a masked pair of {pair_length.max()} tokens exceeds the masked LM's {max_positions} positions; "
            "lower the tokenizer's max_length"
        )
    buckets = default_length_buckets(int(pair_length.max())) if len(single) else (1,)
    batch = settings.mlm_batch_size
    found = np.zeros((len(single), k), np.int32)
    order = np.argsort(pair_length, kind="stable")
    started = time.perf_counter()
    for first in tqdm(range(0, len(order), batch), desc="masked-LM candidates", dynamic_ncols=True):
        rows = order[first : first + batch]
        seq = bucket_length(int(pair_length[rows].max()), buckets)
        ids = np.full((batch, seq), split.pad_id, np.int32)
        types = np.zeros((batch, seq), np.int32)
        mask = np.zeros((batch, seq), np.bool_)
        mask[:, 0] = True
        positions = np.zeros(batch, np.int32)
        own = np.zeros(batch, np.int64)
        for r, i in enumerate(rows):
            n = int(length[i])
            tokens = split.token_ids[start[i] : start[i] + n]
            position = int(words.starts[single[i]] - start[i])
            ids[r, :n] = tokens
            ids[r, position] = vocab.mask_id
            ids[r, n : 2 * n - 1] = tokens[1:]
            types[r, n : 2 * n - 1] = 1
            mask[r, : 2 * n - 1] = True
            positions[r] = position
            own[r] = tokens[position]
        # Asking for k + 1 and dropping the word itself keeps one compiled program for every row.
        top = np.asarray(
            top_candidates(model, *map(jnp.asarray, (ids, mask, types, positions, vocab.replaceable)), k + 1)
        )
        for r in range(len(rows)):
            found[rows[r]] = top[r][top[r] != own[r]][:k]
    log(f"augment: masked-LM candidates for {len(single)} words in {time.perf_counter() - started:.1f} s")
    row = row.copy()
    row[single] = len(table) + np.arange(len(single))
    return row, np.concatenate([table, found])
