"""Building blocks shared by BERT and DistilBERT: embeddings, attention, feed-forward, a post-LN layer.

Every module works on one example (``seq`` tokens); batch with ``jax.vmap``. Parameters are stored in float32.
Matmuls run in the dtype of the incoming activations (float32 or bfloat16), while the attention softmax and every
LayerNorm run in float32, as ``transformers`` does under autocast.
"""

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._types import (
    AttentionScores,
    Hidden,
    HiddenStack,
    Key,
    PairMask,
    ScoreStack,
    TokenIds,
    TokenMask,
    ValueStack,
)
from .dropout import Dropout


def dense(layer: eqx.nn.Linear, x: Float[Array, "seq d_in"]) -> Float[Array, "seq d_out"]:
    """Apply a linear layer to every position, in the dtype of ``x`` (weights are cast, not the input)."""
    y = x @ layer.weight.T.astype(x.dtype)
    if layer.bias is not None:
        y = y + layer.bias.astype(x.dtype)[None, :]
    return y


def layer_norm(norm: eqx.nn.LayerNorm, x: Float[Array, "seq hidden"]) -> Float[Array, "seq hidden"]:
    """LayerNorm over the hidden axis, computed in float32 and returned in the dtype of ``x``."""
    return jax.vmap(norm)(x.astype(jnp.float32)).astype(x.dtype)


SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


def activation(name: str, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """The activations found in BERT-family ``config.json`` files, with ``transformers``' exact definitions."""
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu(x)
    raise ValueError(f"unsupported activation {name!r}; expected one of {SUPPORTED_ACTIVATIONS}")


def linear(d_in: int, d_out: int, std: float, *, key: Key) -> eqx.nn.Linear:
    """A linear layer initialised as ``transformers`` does: weights N(0, std), zero bias."""
    layer = eqx.nn.Linear(d_in, d_out, key=key)
    weight = std * jax.random.normal(key, layer.weight.shape, jnp.float32)
    return eqx.tree_at(lambda m: (m.weight, m.bias), layer, (weight, jnp.zeros(d_out, jnp.float32)))


def embedding(num: int, dim: int, std: float, *, key: Key) -> eqx.nn.Embedding:
    """An embedding table initialised as ``transformers`` does: N(0, std)."""
    return eqx.nn.Embedding(weight=std * jax.random.normal(key, (num, dim), jnp.float32))


def split_key(key: Key | None, n: int) -> tuple[Key | None, ...]:
    """Split ``key`` into ``n`` keys, or give ``n`` Nones when running without dropout."""
    return (None,) * n if key is None else tuple(jax.random.split(key, n))


class Embeddings(eqx.Module):
    """Word + learned position (+ token type, BERT only) embeddings, then LayerNorm and dropout."""

    word: eqx.nn.Embedding
    position: eqx.nn.Embedding
    token_type: eqx.nn.Embedding | None
    norm: eqx.nn.LayerNorm
    dropout: Dropout

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        max_positions: int,
        type_vocab_size: int | None,
        *,
        eps: float,
        dropout: float,
        init_std: float,
        key: Key,
    ):
        kw, kp, kt = jax.random.split(key, 3)
        self.word = embedding(vocab_size, hidden_size, init_std, key=kw)
        self.position = embedding(max_positions, hidden_size, init_std, key=kp)
        self.token_type = (
            None if type_vocab_size is None else embedding(type_vocab_size, hidden_size, init_std, key=kt)
        )
        self.norm = eqx.nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = Dropout(dropout)

    def __call__(
        self,
        input_ids: TokenIds,
        token_type_ids: TokenIds | None = None,
        position_ids: TokenIds | None = None,
        *,
        key: Key | None = None,
    ) -> Hidden:
        """Embed one sequence at positions ``0 .. seq - 1``, or at ``position_ids`` (a packed row restarts them
        at each sentence). Returns float32 ``(seq, hidden)``."""
        if position_ids is None:
            position_ids = jnp.arange(input_ids.shape[0])
        x = self.word.weight[input_ids] + self.position.weight[position_ids]
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = jnp.zeros_like(input_ids)
            x = x + self.token_type.weight[token_type_ids]
        elif token_type_ids is not None:
            raise ValueError("this model has no token type embeddings; do not pass token_type_ids")
        return self.dropout(layer_norm(self.norm, x), key=key)


class AttentionOutput(NamedTuple):
    """An attention layer's output and the internals the attention-transfer losses compare."""

    output: Hidden
    scores: AttentionScores
    values: Hidden


class MultiHeadAttention(eqx.Module):
    """Bidirectional self-attention with a boolean key-padding mask (``True`` = attend).

    Field names follow ``eqx.nn.MultiheadAttention``.
    """

    query_proj: eqx.nn.Linear
    key_proj: eqx.nn.Linear
    value_proj: eqx.nn.Linear
    output_proj: eqx.nn.Linear
    dropout: Dropout
    num_heads: int = eqx.field(static=True)

    def __init__(self, hidden_size: int, num_heads: int, *, dropout: float, init_std: float, key: Key):
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden size {hidden_size} is not divisible by the number of heads {num_heads}")
        kq, kk, kv, ko = jax.random.split(key, 4)
        self.query_proj = linear(hidden_size, hidden_size, init_std, key=kq)
        self.key_proj = linear(hidden_size, hidden_size, init_std, key=kk)
        self.value_proj = linear(hidden_size, hidden_size, init_std, key=kv)
        self.output_proj = linear(hidden_size, hidden_size, init_std, key=ko)
        self.dropout = Dropout(dropout)
        self.num_heads = num_heads

    def __call__(self, x: Hidden, mask: TokenMask | PairMask, *, key: Key | None = None) -> AttentionOutput:
        """Attend from every position to the unmasked positions: ``mask`` is ``(seq,)`` over the keys, or
        ``(seq, seq)`` with ``mask[q, k]`` saying whether query ``q`` sees key ``k`` (a packed row).

        Returns the ``(seq, hidden)`` output in ``x``'s dtype, and what the attention losses read: the float32
        pre-softmax scores ``q k^T / sqrt(head_dim)`` of every head *before* masking (entries at masked keys are
        scores like any other; a loss must mask them), and the values ``(seq, hidden)`` (heads side by side).
        Under jit an internal nobody reads costs nothing.
        """
        seq_len, hidden = x.shape
        head_dim = hidden // self.num_heads

        def heads(layer: eqx.nn.Linear) -> Float[Array, "seq heads head_dim"]:
            return dense(layer, x).reshape(seq_len, self.num_heads, head_dim)

        q, k, v = heads(self.query_proj), heads(self.key_proj), heads(self.value_proj)
        scores = jnp.einsum("qhd,khd->hqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(head_dim)
        # Masked keys get the most negative float, as transformers' additive mask does: exp() underflows to 0.
        allowed = mask[None, None, :] if mask.ndim == 1 else mask[None]
        masked = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
        probs = self.dropout(jax.nn.softmax(masked, axis=-1), key=key).astype(x.dtype)
        context = jnp.einsum("hqk,khd->qhd", probs, v).reshape(seq_len, hidden)
        return AttentionOutput(dense(self.output_proj, context), scores, v.reshape(seq_len, hidden))


class FeedForward(eqx.Module):
    """Position-wise ``down(act(up(x)))`` followed by dropout."""

    up: eqx.nn.Linear
    down: eqx.nn.Linear
    dropout: Dropout
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        activation: str,
        *,
        dropout: float,
        init_std: float,
        key: Key,
    ):
        if activation not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"unsupported activation {activation!r}; expected one of {SUPPORTED_ACTIVATIONS}"
            )
        ku, kd = jax.random.split(key)
        self.up = linear(hidden_size, intermediate_size, init_std, key=ku)
        self.down = linear(intermediate_size, hidden_size, init_std, key=kd)
        self.dropout = Dropout(dropout)
        self.activation = activation

    def __call__(self, x: Hidden, *, key: Key | None = None) -> Hidden:
        """Returns ``(seq, hidden)`` in ``x``'s dtype."""
        return self.dropout(dense(self.down, activation(self.activation, dense(self.up, x))), key=key)


class TransformerLayer(eqx.Module):
    """A post-LayerNorm encoder layer, the form used by both BERT and DistilBERT.

    ``h = norm1(x + dropout(attention(x)))``; ``out = norm2(h + feed_forward(h))``. DistilBERT has no dropout
    after the attention projection, so its ``attention_dropout`` has ``p=0``.
    """

    attention: MultiHeadAttention
    attention_dropout: Dropout
    attention_norm: eqx.nn.LayerNorm
    feed_forward: FeedForward
    output_norm: eqx.nn.LayerNorm

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        activation: str,
        *,
        eps: float,
        hidden_dropout: float,
        attention_probs_dropout: float,
        attention_output_dropout: float,
        init_std: float,
        key: Key,
    ):
        ka, kf = jax.random.split(key)
        self.attention = MultiHeadAttention(
            hidden_size, num_heads, dropout=attention_probs_dropout, init_std=init_std, key=ka
        )
        self.attention_dropout = Dropout(attention_output_dropout)
        self.attention_norm = eqx.nn.LayerNorm(hidden_size, eps=eps)
        self.feed_forward = FeedForward(
            hidden_size, intermediate_size, activation, dropout=hidden_dropout, init_std=init_std, key=kf
        )
        self.output_norm = eqx.nn.LayerNorm(hidden_size, eps=eps)

    def __call__(self, x: Hidden, mask: TokenMask | PairMask, *, key: Key | None = None) -> AttentionOutput:
        """Returns the layer's ``(seq, hidden)`` output in ``x``'s dtype, with its attention's scores and values."""
        k_attn, k_drop, k_ff = split_key(key, 3)
        attention = self.attention(x, mask, key=k_attn)
        h = layer_norm(self.attention_norm, x + self.attention_dropout(attention.output, key=k_drop))
        out = layer_norm(self.output_norm, h + self.feed_forward(h, key=k_ff))
        return AttentionOutput(out, attention.scores, attention.values)


class EncoderOutput(NamedTuple):
    """The last layer's output and, when asked, the stacks the layer-matching losses read."""

    last_hidden_state: Hidden
    hidden_states: HiddenStack | None
    attention_scores: ScoreStack | None
    values: ValueStack | None


class Encoder(eqx.Module):
    """Embeddings and a stack of post-LN layers: the part BERT and DistilBERT share, up to their heads."""

    embeddings: Embeddings
    layers: tuple[TransformerLayer, ...]

    def __call__(
        self,
        input_ids: TokenIds,
        attention_mask: TokenMask | PairMask,
        token_type_ids: TokenIds | None = None,
        position_ids: TokenIds | None = None,
        *,
        compute_dtype: jnp.dtype,
        key: Key | None = None,
        output_hidden_states: bool = False,
        output_attention_scores: bool = False,
        output_values: bool = False,
    ) -> EncoderOutput:
        """Encode one sequence; the layers compute in ``compute_dtype``. ``attention_mask`` and ``position_ids``
        are as in ``MultiHeadAttention`` and ``Embeddings``.

        Returns the last layer's output and, each only when asked (a stack copies every layer's activations):
        the embeddings and every layer's output stacked in ``transformers``' ``hidden_states`` order, every
        layer's pre-softmax attention scores, and every layer's attention values.
        """
        k_embeddings, k_layers = split_key(key, 2)
        x = self.embeddings(input_ids, token_type_ids, position_ids, key=k_embeddings).astype(compute_dtype)
        states, scores, values = [x], [], []
        for layer, k in zip(self.layers, split_key(k_layers, len(self.layers))):
            x, layer_scores, layer_values = layer(x, attention_mask, key=k)
            states.append(x)
            scores.append(layer_scores)
            values.append(layer_values)
        return EncoderOutput(
            x,
            jnp.stack(states) if output_hidden_states else None,
            jnp.stack(scores) if output_attention_scores else None,
            jnp.stack(values) if output_values else None,
        )
