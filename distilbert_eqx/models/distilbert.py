"""DistilBERT (``DistilBertForSequenceClassification``) as an Equinox module, numerically equal to ``transformers``."""

import dataclasses
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._types import ComputeDtype, Key
from .classifier import AbstractSequenceClassifier
from .dropout import Dropout
from .layers import Embeddings, Encoder, TransformerLayer, dense, linear

# transformers hard-codes this for every DistilBERT LayerNorm; it is not in config.json.
DISTILBERT_LAYER_NORM_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class DistilBertConfig:
    """The ``config.json`` fields of a DistilBERT checkpoint that change the computation (``transformers`` names)."""

    model_type: ClassVar[str] = "distilbert"

    vocab_size: int = 30522
    dim: int = 768
    n_layers: int = 6
    n_heads: int = 12
    hidden_dim: int = 3072
    activation: str = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    seq_classif_dropout: float = 0.2
    max_position_embeddings: int = 512
    sinusoidal_pos_embds: bool = False
    initializer_range: float = 0.02
    pad_token_id: int = 0
    num_labels: int = 2

    @property
    def num_layers(self) -> int:
        return self.n_layers


def sinusoidal_positions(num_positions: int, dim: int) -> Float[Array, "positions dim"]:
    """The fixed table ``transformers`` writes when ``sinusoidal_pos_embds`` is set (sin on even, cos on odd)."""
    pos = np.arange(num_positions)[:, None]
    angle = pos / np.power(10000.0, 2 * (np.arange(dim) // 2) / dim)[None, :]
    table = np.where(np.arange(dim)[None, :] % 2 == 0, np.sin(angle), np.cos(angle))
    return jnp.asarray(table, jnp.float32)


class DistilBertForSequenceClassification(AbstractSequenceClassifier):
    """DistilBERT encoder + ``pre_classifier`` + ReLU + dropout + ``classifier`` on the first token.

    There are no token type embeddings: passing ``token_type_ids`` is an error.
    """

    encoder: Encoder
    pre_classifier: eqx.nn.Linear
    classifier_dropout: Dropout
    classifier: eqx.nn.Linear
    config: DistilBertConfig = eqx.field(static=True)
    compute_dtype: ComputeDtype = eqx.field(static=True)

    def __init__(self, config: DistilBertConfig, *, key: Key, compute_dtype: ComputeDtype = "float32"):
        c = config
        std = c.initializer_range
        ke, kl, kp, kc = jax.random.split(key, 4)
        embeddings = Embeddings(
            c.vocab_size,
            c.dim,
            c.max_position_embeddings,
            None,
            eps=DISTILBERT_LAYER_NORM_EPS,
            dropout=c.dropout,
            init_std=std,
            key=ke,
        )
        word = embeddings.word.weight.at[c.pad_token_id].set(0.0)
        embeddings = eqx.tree_at(lambda e: e.word.weight, embeddings, word)
        if c.sinusoidal_pos_embds:
            table = sinusoidal_positions(c.max_position_embeddings, c.dim)
            embeddings = eqx.tree_at(lambda e: e.position.weight, embeddings, table)
        layers = tuple(
            TransformerLayer(
                c.dim,
                c.n_heads,
                c.hidden_dim,
                c.activation,
                eps=DISTILBERT_LAYER_NORM_EPS,
                hidden_dropout=c.dropout,
                attention_probs_dropout=c.attention_dropout,
                attention_output_dropout=0.0,
                init_std=std,
                key=k,
            )
            for k in jax.random.split(kl, c.n_layers)
        )
        self.encoder = Encoder(embeddings, layers)
        self.pre_classifier = linear(c.dim, c.dim, std, key=kp)
        self.classifier_dropout = Dropout(c.seq_classif_dropout)
        self.classifier = linear(c.dim, c.num_labels, std, key=kc)
        self.config = config
        self.compute_dtype = compute_dtype

    def pool(self, first_token: Float[Array, "1 hidden"]) -> Float[Array, "1 hidden"]:
        return jax.nn.relu(dense(self.pre_classifier, first_token))
