"""BERT (``BertForSequenceClassification``) as an Equinox module, numerically equal to ``transformers``."""

import dataclasses
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._types import ComputeDtype, Key
from .classifier import AbstractSequenceClassifier
from .dropout import Dropout
from .layers import Embeddings, Encoder, TransformerLayer, dense, linear


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The ``config.json`` fields of a BERT checkpoint that change the computation (``transformers`` names)."""

    model_type: ClassVar[str] = "bert"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    num_labels: int = 2

    @property
    def num_layers(self) -> int:
        return self.num_hidden_layers


class BertForSequenceClassification(AbstractSequenceClassifier):
    """BERT encoder + tanh pooler on the first token + dropout + linear classifier."""

    encoder: Encoder
    pooler: eqx.nn.Linear
    classifier_dropout: Dropout
    classifier: eqx.nn.Linear
    config: BertConfig = eqx.field(static=True)
    compute_dtype: ComputeDtype = eqx.field(static=True)

    def __init__(self, config: BertConfig, *, key: Key, compute_dtype: ComputeDtype = "float32"):
        c = config
        ke, kl, kp, kc = jax.random.split(key, 4)
        std = c.initializer_range
        embeddings = Embeddings(
            c.vocab_size,
            c.hidden_size,
            c.max_position_embeddings,
            c.type_vocab_size,
            eps=c.layer_norm_eps,
            dropout=c.hidden_dropout_prob,
            init_std=std,
            key=ke,
        )
        word = embeddings.word.weight.at[c.pad_token_id].set(0.0)
        layers = tuple(
            TransformerLayer(
                c.hidden_size,
                c.num_attention_heads,
                c.intermediate_size,
                c.hidden_act,
                eps=c.layer_norm_eps,
                hidden_dropout=c.hidden_dropout_prob,
                attention_probs_dropout=c.attention_probs_dropout_prob,
                attention_output_dropout=c.hidden_dropout_prob,
                init_std=std,
                key=k,
            )
            for k in jax.random.split(kl, c.num_hidden_layers)
        )
        self.encoder = Encoder(eqx.tree_at(lambda e: e.word.weight, embeddings, word), layers)
        self.pooler = linear(c.hidden_size, c.hidden_size, std, key=kp)
        head_dropout = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
        self.classifier_dropout = Dropout(head_dropout)
        self.classifier = linear(c.hidden_size, c.num_labels, std, key=kc)
        self.config = config
        self.compute_dtype = compute_dtype

    def pool(self, first_token: Float[Array, "1 hidden"]) -> Float[Array, "1 hidden"]:
        return jnp.tanh(dense(self.pooler, first_token))
