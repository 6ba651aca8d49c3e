"""The role BERT and DistilBERT share: an encoder, a head on the first token, one ``__call__``.

Equinox's abstract/final pattern: this class declares the fields (``AbstractVar``) and the forward pass; each
model is a final subclass that builds its fields and says how it pools the first token. Code outside the models
(checkpoint I/O, training) talks to this interface and never asks which model it holds.
"""

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .._types import ComputeDtype, HiddenStack, Key, ScoreStack, TokenIds, TokenMask, ValueStack, to_jnp_dtype
from .dropout import Dropout
from .layers import Encoder, dense, split_key


class ClassifierOutput(eqx.Module):
    """What a sequence classifier returns for one example: float32 logits, the last layer's float32 output (what
    the cosine loss compares) and, when asked for, float32 stacks of every hidden state, every layer's
    pre-softmax attention scores and every layer's attention values (what the layer-matching losses compare)."""

    logits: Float[Array, " classes"]
    last_hidden_state: Float[Array, "seq hidden"]
    hidden_states: HiddenStack | None = None
    attention_scores: ScoreStack | None = None
    values: ValueStack | None = None


class AbstractSequenceClassifier(eqx.Module):
    """An encoder, a pooling layer on the first token, dropout and a linear classifier.

    Works on one example; ``jax.vmap`` over a batch. Parameters are float32; ``compute_dtype="bfloat16"`` runs
    the encoder's matmuls in bfloat16 and keeps LayerNorm, softmax and the head in float32.
    """

    encoder: eqx.AbstractVar[Encoder]
    classifier_dropout: eqx.AbstractVar[Dropout]
    classifier: eqx.AbstractVar[eqx.nn.Linear]
    compute_dtype: eqx.AbstractVar[ComputeDtype]
    # The model's config dataclass (BertConfig, DistilBertConfig): transformers' config.json fields, and in
    # `model_type` the checkpoint family that hf.py keys its tensor-name maps by.
    config: eqx.AbstractVar[Any]

    @abc.abstractmethod
    def pool(self, first_token: Float[Array, "1 hidden"]) -> Float[Array, "1 hidden"]:
        """The head's pooling layer on the first token's float32 state (BERT: tanh pooler; DistilBERT: ReLU)."""

    @property
    def num_layers(self) -> int:
        return len(self.encoder.layers)

    @property
    def hidden_size(self) -> int:
        return self.encoder.embeddings.word.weight.shape[1]

    @property
    def num_heads(self) -> int:
        return self.encoder.layers[0].attention.num_heads

    @property
    def takes_token_types(self) -> bool:
        """Whether ``__call__`` accepts ``token_type_ids`` (BERT does; DistilBERT has no token type table)."""
        return self.encoder.embeddings.token_type is not None

    def __call__(
        self,
        input_ids: TokenIds,
        attention_mask: TokenMask,
        token_type_ids: TokenIds | None = None,
        *,
        key: Key | None = None,
        output_hidden_states: bool = False,
        output_attention_scores: bool = False,
        output_values: bool = False,
    ) -> ClassifierOutput:
        """Classify one sequence.

        Arguments:
            input_ids: ``(seq,)`` token ids.
            attention_mask: ``(seq,)``, ``True`` for real tokens, ``False`` for padding.
            token_type_ids: ``(seq,)`` segment ids (zeros when omitted); only for models that
                ``takes_token_types``.
            key: dropout key; ``None`` is only allowed in inference mode (``eqx.nn.inference_mode``).
            output_hidden_states: also return the embeddings and every layer's output.
            output_attention_scores: also return every layer's pre-softmax attention scores, unmasked (the
                entries at padding keys are not meaningful).
            output_values: also return every layer's attention values.

        Returns:
            ``ClassifierOutput`` with float32 ``logits (classes,)``, ``last_hidden_state (seq, hidden)`` and,
            when asked, ``hidden_states (num_layers + 1, seq, hidden)``, ``attention_scores (num_layers, heads,
            seq, seq)`` and ``values (num_layers, seq, hidden)``.
        """
        k_encoder, k_head = split_key(key, 2)
        encoded = self.encoder(
            input_ids,
            attention_mask,
            token_type_ids,
            compute_dtype=to_jnp_dtype(self.compute_dtype),
            key=k_encoder,
            output_hidden_states=output_hidden_states,
            output_attention_scores=output_attention_scores,
            output_values=output_values,
        )
        last = encoded.last_hidden_state
        return ClassifierOutput(
            self._head(last[:1], key=k_head),
            last.astype(jnp.float32),
            _float32(encoded.hidden_states),
            _float32(encoded.attention_scores),
            _float32(encoded.values),
        )

    def classify_packed(
        self,
        input_ids: TokenIds,
        segment_ids: TokenIds,
        position_ids: TokenIds,
        sentence_tokens: Int[Array, "slots sentence"],
        token_type_ids: TokenIds | None = None,
        *,
        key: Key | None = None,
        output_hidden_states: bool = False,
        output_attention_scores: bool = False,
        output_values: bool = False,
    ) -> ClassifierOutput:
        """Classify the sentences packed into one row: each attends only within itself, from positions that
        restart at its first token, and is pooled at its own first token, so each sentence's outputs are those
        of ``__call__`` on the sentence alone (up to rounding).

        Arguments:
            input_ids: ``(seq,)`` the row's tokens, sentence after sentence, then padding.
            segment_ids: ``(seq,)`` ``k >= 1`` on the tokens of the row's ``k``-th sentence, 0 on padding.
            position_ids: ``(seq,)`` each token's position within its sentence.
            sentence_tokens: ``(slots, sentence)`` row positions of each slot's tokens, first token first; entries
                past a sentence's end (and empty slots) may point anywhere in the row: the outputs there are
                not meaningful, as at padding in ``__call__``.
            token_type_ids, key, output_*: as in ``__call__``.

        Returns:
            ``ClassifierOutput`` with a leading ``slots`` axis, its ``seq`` axes of length ``sentence``.
        """
        k_encoder, k_head = split_key(key, 2)
        attends = segment_ids[:, None] == segment_ids[None, :]
        encoded = self.encoder(
            input_ids,
            attends,
            token_type_ids,
            position_ids,
            compute_dtype=to_jnp_dtype(self.compute_dtype),
            key=k_encoder,
            output_hidden_states=output_hidden_states,
            output_attention_scores=output_attention_scores,
            output_values=output_values,
        )

        def sentence(tokens: Int[Array, " sentence"], key: Key | None) -> ClassifierOutput:
            last = encoded.last_hidden_state[tokens]
            scores = encoded.attention_scores
            return ClassifierOutput(
                self._head(last[:1], key=key),
                last.astype(jnp.float32),
                None if encoded.hidden_states is None else _float32(encoded.hidden_states[:, tokens]),
                None if scores is None else _float32(scores[:, :, tokens][:, :, :, tokens]),
                None if encoded.values is None else _float32(encoded.values[:, tokens]),
            )

        slots = sentence_tokens.shape[0]
        keys = None if k_head is None else jax.random.split(k_head, slots)
        return jax.vmap(sentence)(sentence_tokens, keys)

    def _head(self, first_token: Float[Array, "1 hidden"], *, key: Key | None) -> Float[Array, " classes"]:
        """Pooling, dropout and the classifier on the first token's state: float32 logits."""
        pooled = self.pool(first_token.astype(jnp.float32))
        return dense(self.classifier, self.classifier_dropout(pooled, key=key))[0]


def _float32(x: Float[Array, "..."] | None) -> Float[Array, "..."] | None:
    return None if x is None else x.astype(jnp.float32)
