"""DistilBERT (``DistilBertForSequenceClassification``) as an Equinox module, numerically equal to ``transformers``."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._types import ComputeDtype, Key, TokenIds, TokenMask, to_jnp_dtype
from .layers import ClassifierOutput, Embeddings, TransformerLayer, dense, linear, run_layers, split_key

# transformers hard-codes this for every DistilBERT LayerNorm; it is not in config.json.
DISTILBERT_LAYER_NORM_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class DistilBertConfig:
    """The ``config.json`` fields of a DistilBERT checkpoint that change the computation (``transformers`` names)."""

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


def sinusoidal_positions(num_positions: int, dim: int) -> Float[Array, "positions dim"]:
    """The fixed table ``transformers`` writes when ``sinusoidal_pos_embds`` is set (sin on even, cos on odd)."""
    pos = np.arange(num_positions)[:, None]
    angle = pos / np.power(10000.0, 2 * (np.arange(dim) // 2) / dim)[None, :]
    table = np.where(np.arange(dim)[None, :] % 2 == 0, np.sin(angle), np.cos(angle))
    return jnp.asarray(table, jnp.float32)


class DistilBertForSequenceClassification(eqx.Module):
    """DistilBERT encoder + ``pre_classifier`` + ReLU + dropout + ``classifier`` on the first token.

    Works on one example; ``jax.vmap`` over a batch. There are no token type embeddings. Parameters are
    float32; ``compute_dtype="bfloat16"`` runs the matmuls in bfloat16 and keeps LayerNorm, softmax and the
    classification head in float32.
    """

    embeddings: Embeddings
    layers: tuple[TransformerLayer, ...]
    pre_classifier: eqx.nn.Linear
    classifier_dropout: eqx.nn.Dropout
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
            DISTILBERT_LAYER_NORM_EPS,
            c.dropout,
            std,
            key=ke,
        )
        word = embeddings.word.weight.at[c.pad_token_id].set(0.0)
        embeddings = eqx.tree_at(lambda e: e.word.weight, embeddings, word)
        if c.sinusoidal_pos_embds:
            table = sinusoidal_positions(c.max_position_embeddings, c.dim)
            embeddings = eqx.tree_at(lambda e: e.position.weight, embeddings, table)
        self.embeddings = embeddings
        self.layers = tuple(
            TransformerLayer(
                c.dim,
                c.n_heads,
                c.hidden_dim,
                c.activation,
                DISTILBERT_LAYER_NORM_EPS,
                hidden_dropout=c.dropout,
                attention_probs_dropout=c.attention_dropout,
                attention_output_dropout=0.0,
                init_std=std,
                key=k,
            )
            for k in jax.random.split(kl, c.n_layers)
        )
        self.pre_classifier = linear(c.dim, c.dim, std, key=kp)
        self.classifier_dropout = eqx.nn.Dropout(c.seq_classif_dropout)
        self.classifier = linear(c.dim, c.num_labels, std, key=kc)
        self.config = config
        self.compute_dtype = compute_dtype

    def __call__(
        self,
        input_ids: TokenIds,
        attention_mask: TokenMask,
        *,
        key: Key | None = None,
        output_hidden_states: bool = False,
    ) -> ClassifierOutput:
        """Classify one sequence.

        Arguments:
            input_ids: ``(seq,)`` token ids.
            attention_mask: ``(seq,)``, ``True`` for real tokens, ``False`` for padding.
            key: dropout key; ``None`` is only allowed in inference mode (``eqx.nn.inference_mode``).
            output_hidden_states: also return the embeddings and every layer's output.

        Returns:
            ``ClassifierOutput`` with float32 ``logits (classes,)``, ``last_hidden_state (seq, hidden)`` and,
            when asked, ``hidden_states (num_layers + 1, seq, hidden)``.
        """
        k_emb, k_layers, k_head = split_key(key, 3)
        x = self.embeddings(input_ids, key=k_emb).astype(to_jnp_dtype(self.compute_dtype))
        last, states = run_layers(self.layers, x, attention_mask, key=k_layers, keep_states=output_hidden_states)
        first_token = last[:1].astype(jnp.float32)
        pooled = jax.nn.relu(dense(self.pre_classifier, first_token))
        logits = dense(self.classifier, self.classifier_dropout(pooled, key=k_head))[0]
        return ClassifierOutput(
            logits, last.astype(jnp.float32), None if states is None else states.astype(jnp.float32)
        )
