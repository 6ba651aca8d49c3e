"""BERT (``BertForSequenceClassification``) as an Equinox module, numerically equal to ``transformers``."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from .._types import ComputeDtype, Key, TokenIds, TokenMask, to_jnp_dtype
from .layers import ClassifierOutput, Embeddings, TransformerLayer, dense, linear, run_layers, split_key


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The ``config.json`` fields of a BERT checkpoint that change the computation (``transformers`` names)."""

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


class BertForSequenceClassification(eqx.Module):
    """BERT encoder + tanh pooler on the first token + dropout + linear classifier.

    Works on one example; ``jax.vmap`` over a batch. Parameters are float32; ``compute_dtype="bfloat16"`` runs
    the matmuls in bfloat16 and keeps LayerNorm, softmax and the classification head in float32.
    """

    embeddings: Embeddings
    layers: tuple[TransformerLayer, ...]
    pooler: eqx.nn.Linear
    classifier_dropout: eqx.nn.Dropout
    classifier: eqx.nn.Linear
    config: BertConfig = eqx.field(static=True)
    compute_dtype: ComputeDtype = eqx.field(static=True)

    def __init__(self, config: BertConfig, *, key: Key, compute_dtype: ComputeDtype = "float32"):
        c = config
        ke, kl, kp, kc = jax.random.split(key, 4)
        std = c.initializer_range
        self.embeddings = Embeddings(
            c.vocab_size,
            c.hidden_size,
            c.max_position_embeddings,
            c.type_vocab_size,
            c.layer_norm_eps,
            c.hidden_dropout_prob,
            std,
            key=ke,
        )
        word = self.embeddings.word.weight.at[c.pad_token_id].set(0.0)
        self.embeddings = eqx.tree_at(lambda e: e.word.weight, self.embeddings, word)
        self.layers = tuple(
            TransformerLayer(
                c.hidden_size,
                c.num_attention_heads,
                c.intermediate_size,
                c.hidden_act,
                c.layer_norm_eps,
                hidden_dropout=c.hidden_dropout_prob,
                attention_probs_dropout=c.attention_probs_dropout_prob,
                attention_output_dropout=c.hidden_dropout_prob,
                init_std=std,
                key=k,
            )
            for k in jax.random.split(kl, c.num_hidden_layers)
        )
        self.pooler = linear(c.hidden_size, c.hidden_size, std, key=kp)
        head_dropout = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
        self.classifier_dropout = eqx.nn.Dropout(head_dropout)
        self.classifier = linear(c.hidden_size, c.num_labels, std, key=kc)
        self.config = config
        self.compute_dtype = compute_dtype

    def __call__(
        self,
        input_ids: TokenIds,
        attention_mask: TokenMask,
        token_type_ids: TokenIds | None = None,
        *,
        key: Key | None = None,
        output_hidden_states: bool = False,
    ) -> ClassifierOutput:
        """Classify one sequence.

        Arguments:
            input_ids: ``(seq,)`` token ids.
            attention_mask: ``(seq,)``, ``True`` for real tokens, ``False`` for padding.
            token_type_ids: ``(seq,)`` segment ids; zeros when omitted.
            key: dropout key; ``None`` is only allowed in inference mode (``eqx.nn.inference_mode``).
            output_hidden_states: also return the embeddings and every layer's output.

        Returns:
            ``ClassifierOutput`` with float32 ``logits (classes,)``, ``last_hidden_state (seq, hidden)`` and,
            when asked, ``hidden_states (num_layers + 1, seq, hidden)``.
        """
        k_emb, k_layers, k_head = split_key(key, 3)
        x = self.embeddings(input_ids, token_type_ids, key=k_emb).astype(to_jnp_dtype(self.compute_dtype))
        last, states = run_layers(self.layers, x, attention_mask, key=k_layers, keep_states=output_hidden_states)
        first_token = last[:1].astype(jnp.float32)
        pooled = jnp.tanh(dense(self.pooler, first_token))
        logits = dense(self.classifier, self.classifier_dropout(pooled, key=k_head))[0]
        return ClassifierOutput(
            logits, last.astype(jnp.float32), None if states is None else states.astype(jnp.float32)
        )
