"""Losses that match a student's intermediate layers to its teacher's: TinyBERT's hidden-state and attention-score
MSE, DistilBERT's cosine on hidden states, MiniLM's self-attention distribution and value-relation KL.

Like ``losses.py``: each takes the states of the matched layers (the caller picks them with a layer map and stops
gradients through the teacher), counts only real tokens of real rows (``attention_mask`` and the per-row
``weights``), works in float32 and returns a ``WeightedSum``. Every matched layer weighs the same, so the mean
over layers is the mean over all of them of the selected entries: every layer selects the same tokens.

- Hidden states (Jiao et al., 2020, eq. 8; Sanh et al., 2019): ``MSE(h_S W_h, h_T)`` or ``1 - cos`` per token;
  a student narrower than the teacher is projected first (``W_h``, learned with the student; see train.py).
- Attention scores (TinyBERT, eq. 7): MSE between the pre-softmax scores ``q k^T / sqrt(d)`` of each head, over
  real query *and* key positions only (TinyBERT zeroes masked scores and still counts them; here they do not
  enter at all).
- MiniLM (Wang et al., 2020, eq. 4-6): ``KL(A_T || A_S)`` between the attention distributions of each head and
  query, and ``KL(VR_T || VR_S)`` with ``VR = softmax(V V^T / sqrt(d))``, averaged over heads and real queries.
  The value relation takes ``relation_heads``: both models' values (heads side by side) are split into that many
  heads of their own width, MiniLMv2's relation heads (Wang et al., 2021), so the head counts and widths of the
  two models may differ. With ``relation_heads`` equal to both models' head count this is MiniLM (v1) exactly.
  The attention-distribution KL compares heads one to one and needs equal head counts.
"""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._types import BatchTokenMask, BatchWeights
from .losses import WeightedSum, cosine_distance, weighted_sum

StudentStates = Float[Array, "batch pairs seq s_hidden"]
TeacherStates = Float[Array, "batch pairs seq t_hidden"]
StudentScores = Float[Array, "batch pairs s_heads seq seq"]
TeacherScores = Float[Array, "batch pairs t_heads seq seq"]


def _token_weights(attention_mask: BatchTokenMask, weights: BatchWeights) -> Float[Array, "batch 1 seq"]:
    """1 for the real tokens of real rows, 0 elsewhere, broadcastable over the matched layers."""
    return (attention_mask & (weights > 0)[:, None])[:, None, :].astype(jnp.float32)


def _check_widths(student: Array, teacher: Array, loss: str) -> None:
    s, t = student.shape[-1], teacher.shape[-1]
    if s != t:
        raise ValueError(
            f"the {loss} loss compares hidden states of equal width, got student width {s} and teacher width {t}; "
            "project the student's states to the teacher's width first (hidden_projection)"
        )


def _check_heads(student: Array, teacher: Array, loss: str) -> None:
    s, t = student.shape[2], teacher.shape[2]
    if s != t:
        raise ValueError(
            f"the {loss} loss compares attention heads one to one, got {s} student heads and {t} teacher heads; "
            "use a student with the teacher's head count, or set its weight to 0"
        )


def hidden_mse_loss(
    student_states: StudentStates,
    teacher_states: TeacherStates,
    attention_mask: BatchTokenMask,
    weights: BatchWeights,
) -> WeightedSum:
    """Mean squared error over the hidden axis, per real token and matched layer (TinyBERT's ``L_hidn``).

    Arguments:
        student_states: ``(batch, pairs, seq, hidden)``, already projected to the teacher's width.
        teacher_states: ``(batch, pairs, seq, hidden)``, the targets.
        attention_mask: ``(batch, seq)``, ``True`` for real tokens.
        weights: ``(batch,)``, 1 for real rows and 0 for padding rows.

    Returns:
        float32 sum of the per-token MSE over the selected tokens of every pair, and their count.
    """
    _check_widths(student_states, teacher_states, "hidden-state MSE")
    diff = student_states.astype(jnp.float32) - teacher_states.astype(jnp.float32)
    per_token = jnp.mean(diff * diff, axis=-1)
    return weighted_sum(per_token, jnp.broadcast_to(_token_weights(attention_mask, weights), per_token.shape))


def hidden_cosine_loss(
    student_states: StudentStates,
    teacher_states: TeacherStates,
    attention_mask: BatchTokenMask,
    weights: BatchWeights,
) -> WeightedSum:
    """``1 - cos(student, teacher)`` per real token and matched layer (DistilBERT's cosine, on every pair).

    Arguments and returns as :func:`hidden_mse_loss`.
    """
    _check_widths(student_states, teacher_states, "hidden-state cosine")
    per_token = cosine_distance(student_states, teacher_states)
    return weighted_sum(per_token, jnp.broadcast_to(_token_weights(attention_mask, weights), per_token.shape))


def _pair_weights(attention_mask: BatchTokenMask, weights: BatchWeights) -> Float[Array, "batch 1 1 seq seq"]:
    """1 for the real (query, key) pairs of real rows, 0 elsewhere, broadcastable over the layers and heads."""
    tokens = attention_mask & (weights > 0)[:, None]
    return (tokens[:, :, None] & tokens[:, None, :])[:, None, None].astype(jnp.float32)


def attention_score_loss(
    student_scores: StudentScores,
    teacher_scores: TeacherScores,
    attention_mask: BatchTokenMask,
    weights: BatchWeights,
) -> WeightedSum:
    """MSE between pre-softmax attention scores, per head, over real query and key positions (TinyBERT's ``L_attn``).

    Arguments:
        student_scores: ``(batch, pairs, heads, seq, seq)`` (query, key), unmasked.
        teacher_scores: the same shape; the head counts must be equal.
        attention_mask: ``(batch, seq)``, ``True`` for real tokens.
        weights: ``(batch,)``, 1 for real rows and 0 for padding rows.

    Returns:
        float32 sum of squared differences over the selected (pair, head, query, key) entries, and their count.
    """
    _check_heads(student_scores, teacher_scores, "attention-score")
    diff = student_scores.astype(jnp.float32) - teacher_scores.astype(jnp.float32)
    selected = jnp.broadcast_to(_pair_weights(attention_mask, weights), diff.shape)
    return weighted_sum(diff * diff, selected)


def _masked_log_softmax(
    scores: Float[Array, "batch pairs heads seq seq"], attention_mask: BatchTokenMask
) -> Float[Array, "batch pairs heads seq seq"]:
    """Log-probabilities over the real keys; masked keys get probability 0 (their log is not used)."""
    keys = attention_mask[:, None, None, None, :]
    return jax.nn.log_softmax(jnp.where(keys, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min), axis=-1)


def _relation_kl(
    student_scores: Float[Array, "batch pairs heads seq seq"],
    teacher_scores: Float[Array, "batch pairs heads seq seq"],
    attention_mask: BatchTokenMask,
    weights: BatchWeights,
) -> WeightedSum:
    """``KL(softmax(teacher) || softmax(student))`` over real keys, per head and real query."""
    student_log = _masked_log_softmax(student_scores, attention_mask)
    teacher_log = _masked_log_softmax(teacher_scores, attention_mask)
    keys = attention_mask[:, None, None, None, :]
    kl = jnp.sum(jnp.where(keys, jnp.exp(teacher_log) * (teacher_log - student_log), 0.0), axis=-1)
    queries = jnp.broadcast_to(_token_weights(attention_mask, weights)[:, :, None, :], kl.shape)
    return weighted_sum(kl, queries)


def attention_kl_loss(
    student_scores: StudentScores,
    teacher_scores: TeacherScores,
    attention_mask: BatchTokenMask,
    weights: BatchWeights,
) -> WeightedSum:
    """MiniLM's self-attention distribution transfer: ``KL(A_T || A_S)`` per head and real query.

    Arguments:
        student_scores: ``(batch, pairs, heads, seq, seq)`` pre-softmax scores (query, key), unmasked; the
            distributions are their softmax over the real keys.
        teacher_scores: the same shape; the head counts must be equal.
        attention_mask: ``(batch, seq)``, ``True`` for real tokens.
        weights: ``(batch,)``, 1 for real rows and 0 for padding rows.

    Returns:
        float32 sum of the KL over the selected (pair, head, query) entries, and their count.
    """
    _check_heads(student_scores, teacher_scores, "attention KL")
    return _relation_kl(student_scores, teacher_scores, attention_mask, weights)


def _relations(values: Float[Array, "batch pairs seq hidden"], heads: int) -> Float[Array, "batch pairs heads seq seq"]:
    """``V V^T / sqrt(d)`` of each relation head, ``d = hidden / heads``."""
    batch, pairs, seq, hidden = values.shape
    d = hidden // heads
    v = values.astype(jnp.float32).reshape(batch, pairs, seq, heads, d)
    return jnp.einsum("bpqhd,bpkhd->bphqk", v, v) / math.sqrt(d)


def value_relation_loss(
    student_values: StudentStates,
    teacher_values: TeacherStates,
    attention_mask: BatchTokenMask,
    weights: BatchWeights,
    *,
    relation_heads: int,
) -> WeightedSum:
    """MiniLM's value-relation transfer: ``KL(VR_T || VR_S)``, ``VR = softmax(V V^T / sqrt(d))`` over real keys.

    Arguments:
        student_values: ``(batch, pairs, seq, hidden)``, the attention values with the heads side by side.
        teacher_values: ``(batch, pairs, seq, t_hidden)``; the width may differ from the student's.
        attention_mask: ``(batch, seq)``, ``True`` for real tokens.
        weights: ``(batch,)``, 1 for real rows and 0 for padding rows.
        relation_heads: how many heads both models' values are split into; must divide both widths.

    Returns:
        float32 sum of the KL over the selected (pair, relation head, query) entries, and their count.
    """
    for name, values in (("student", student_values), ("teacher", teacher_values)):
        width = values.shape[-1]
        if relation_heads < 1 or width % relation_heads != 0:
            raise ValueError(
                f"relation_heads={relation_heads} must be a positive divisor of the {name}'s width {width}"
            )
    return _relation_kl(
        _relations(student_values, relation_heads),
        _relations(teacher_values, relation_heads),
        attention_mask,
        weights,
    )
