"""Students for a BERT teacher: initialised from its layers (the DistilBERT recipe, Sanh et al., 2019), or at
random in any shape, optionally with the teacher's word embeddings reduced to the student's width by PCA.

A student from teacher layers keeps the teacher's width and takes one layer out of two, so every copied layer
starts from weights that already work together with the embeddings the student inherits.
"""

import dataclasses
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from ._types import ComputeDtype, Key
from .models.bert import BertConfig, BertForSequenceClassification
from .models.distilbert import (
    DISTILBERT_LAYER_NORM_EPS,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)
from .models.layers import Encoder, TransformerLayer


def default_student_layers(num_teacher_layers: int) -> list[int]:
    """The teacher layers a student copies by default: one out of two.

    For a 12-layer teacher this is ``[0, 2, 4, 7, 9, 11]``, the choice of the DistilBERT authors'
    ``extract_distilbert.py`` in ``transformers``' distillation example, which keeps both the first and the
    last layer; for any other depth ``n`` it is ``range(0, n, 2)``.

    Arguments:
        num_teacher_layers: the teacher's number of encoder layers.

    Returns:
        increasing teacher layer indices, ``ceil(n / 2)`` of them.
    """
    if num_teacher_layers == 12:
        return [0, 2, 4, 7, 9, 11]
    return list(range(0, num_teacher_layers, 2))


def student_config(teacher_config: BertConfig, num_layers: int, num_labels: int) -> DistilBertConfig:
    """The DistilBERT config of a student as wide as the teacher, with ``num_layers`` layers.

    ``seq_classif_dropout`` keeps DistilBERT's default: the head is new, so there is no teacher value to keep.
    """
    c = teacher_config
    return DistilBertConfig(
        vocab_size=c.vocab_size,
        dim=c.hidden_size,
        n_layers=num_layers,
        n_heads=c.num_attention_heads,
        hidden_dim=c.intermediate_size,
        activation=c.hidden_act,
        dropout=c.hidden_dropout_prob,
        attention_dropout=c.attention_probs_dropout_prob,
        max_position_embeddings=c.max_position_embeddings,
        sinusoidal_pos_embds=False,
        initializer_range=c.initializer_range,
        pad_token_id=c.pad_token_id,
        num_labels=num_labels,
    )


def _check_layers(layers: list[int], num_teacher_layers: int) -> None:
    n = num_teacher_layers
    if not layers:
        raise ValueError(f"the student needs at least one layer; the teacher has {n} layers")
    for position, index in enumerate(layers):
        if not 0 <= index < n:
            raise ValueError(f"layer index {index} is out of range: the teacher has {n} layers (0..{n - 1})")
        if index in layers[:position]:
            raise ValueError(f"layer index {index} appears twice in {layers}; the teacher has {n} layers")
        if position > 0 and index < layers[position - 1]:
            raise ValueError(
                f"layer indices must be increasing, but {index} follows {layers[position - 1]} in {layers}; "
                f"the teacher has {n} layers"
            )


def _copy_arrays(tree: PyTree) -> PyTree:
    """Fresh buffers for every array: the train step donates the student's buffers, and a student sharing them
    with the teacher would delete the teacher's weights on the first step."""
    return jax.tree.map(lambda x: jnp.copy(x) if eqx.is_array(x) else x, tree)


def student_from_teacher(
    teacher: BertForSequenceClassification,
    layers: Sequence[int] | None = None,
    *,
    num_labels: int | None = None,
    key: Key,
    compute_dtype: ComputeDtype | None = None,
) -> DistilBertForSequenceClassification:
    """Build a DistilBERT student from a BERT teacher.

    The student gets copies of the teacher's word and position embeddings, the embedding LayerNorm and the
    chosen encoder layers, with the student's own dropout modules; its classification head
    (``pre_classifier``, ``classifier``) is new, initialised as ``transformers`` does. In inference mode the
    student's embeddings equal the teacher's for token-type-0 inputs, and student layer ``i`` maps teacher
    hidden state ``layers[i]`` to teacher hidden state ``layers[i] + 1``.

    Arguments:
        teacher: the BERT classifier to copy from; left untouched.
        layers: increasing teacher layer indices, one per student layer; ``default_student_layers(n)`` if
            ``None``.
        num_labels: classes of the new head; the teacher's if ``None``.
        key: initialises the new head.
        compute_dtype: the student's compute dtype; the teacher's if ``None``.

    Returns:
        the student, with ``config.n_layers == len(layers)``.

    Raises:
        ValueError: a layer index is out of range, repeated or not increasing, or the teacher's LayerNorm eps
            is not DistilBERT's fixed ``1e-12`` (a DistilBERT config cannot record another eps).
    """
    n = teacher.config.num_hidden_layers
    layers = default_student_layers(n) if layers is None else list(layers)
    _check_layers(layers, n)
    if teacher.config.layer_norm_eps != DISTILBERT_LAYER_NORM_EPS:
        raise ValueError(
            f"the teacher's layer_norm_eps is {teacher.config.layer_norm_eps}, but DistilBERT always uses "
            f"{DISTILBERT_LAYER_NORM_EPS}"
        )
    num_labels = teacher.config.num_labels if num_labels is None else num_labels
    config = student_config(teacher.config, len(layers), num_labels)
    # The constructor's random embeddings and layers are replaced below; building them anyway keeps the new
    # head (and the dropout modules) exactly as a freshly constructed DistilBERT has them.
    student = DistilBertForSequenceClassification(
        config, key=key, compute_dtype=teacher.compute_dtype if compute_dtype is None else compute_dtype
    )

    # BERT adds token_type_embeddings[token_type] to every token and DistilBERT has no token types. Dropping
    # them (the original recipe) shifts every embedding the student sees; single-sentence inputs always have
    # token type 0, so folding that row into the position table keeps the student's embeddings equal to the
    # teacher's.
    t_emb = teacher.encoder.embeddings
    positions = t_emb.position.weight + t_emb.token_type.weight[0][None, :]
    embeddings = eqx.tree_at(
        lambda e: (e.word.weight, e.position.weight, e.norm),
        student.encoder.embeddings,
        (jnp.copy(t_emb.word.weight), positions, _copy_arrays(t_emb.norm)),
    )

    # Arrays (weights) come from the teacher layer; every other leaf (the dropout rates and inference flags)
    # from the freshly built student layer, since DistilBERT has no dropout after the attention projection.
    def copy_layer(fresh: TransformerLayer, source: TransformerLayer) -> TransformerLayer:
        weights = _copy_arrays(eqx.filter(source, eqx.is_array))
        return eqx.combine(weights, eqx.filter(fresh, eqx.is_array, inverse=True))

    fresh_layers = student.encoder.layers
    student_layers = tuple(
        copy_layer(fresh, teacher.encoder.layers[i]) for fresh, i in zip(fresh_layers, layers)
    )
    return eqx.tree_at(lambda s: s.encoder, student, Encoder(embeddings, student_layers))


def teacher_pca_embeddings(
    word_embeddings: Float[Array, "vocab teacher_hidden"], hidden_size: int, std: float
) -> Float[Array, "vocab {hidden_size}"]:
    """The teacher's word-embedding table reduced to ``hidden_size`` columns by PCA, as Model2Vec builds small
    embeddings: the table less its mean row, projected onto its top ``hidden_size`` right singular vectors
    (an SVD of the centred table, in float32 on the default device), largest component first.

    The projection is then scaled by one number so that its entries' standard deviation is ``std`` (the
    student's ``initializer_range``): the student adds its random position embeddings, drawn at that std, before
    the LayerNorm, and a table much larger would drown them. One number, not one per column, keeps the
    spectrum PCA found (the first components vary most); a per-column scale would whiten it away. Singular
    vectors are defined up to sign, so a column may come out negated relative to another SVD routine.

    Raises:
        ValueError: ``hidden_size`` is larger than the teacher's width (PCA can only reduce it).
    """
    width = word_embeddings.shape[1]
    if not 1 <= hidden_size <= width:
        raise ValueError(
            f"PCA reduces the teacher's {width}-wide word embeddings; the student's hidden size {hidden_size} must "
            f"be between 1 and {width}"
        )
    table = word_embeddings.astype(jnp.float32)
    centred = table - table.mean(axis=0, keepdims=True)
    _, _, vt = jnp.linalg.svd(centred, full_matrices=False)
    projected = centred @ vt[:hidden_size].T
    return projected * (std / jnp.maximum(projected.std(), 1e-12))


def random_student(
    teacher_config: BertConfig,
    *,
    num_layers: int,
    hidden_size: int,
    num_heads: int,
    intermediate_size: int,
    num_labels: int,
    key: Key,
    compute_dtype: ComputeDtype = "float32",
    teacher_word_embeddings: Float[Array, "vocab teacher_hidden"] | None = None,
) -> DistilBertForSequenceClassification:
    """A DistilBERT student of any shape, initialised at random as ``transformers`` does (TinyBERT's general
    students; the layer-matching losses and a width projection make up for starting from nothing).

    It shares the teacher's vocabulary, positions, activation and dropout, so the two read the same inputs.
    Given ``teacher_word_embeddings`` (the teacher's table), its word embeddings start from that table reduced
    to ``hidden_size`` by ``teacher_pca_embeddings`` instead, so a narrow student starts from the teacher's
    vocabulary; everything else stays random.

    Raises:
        ValueError: ``hidden_size`` is not divisible by ``num_heads``, or (with ``teacher_word_embeddings``)
            larger than the teacher's width, or the table's rows are not the teacher's vocabulary.
    """
    if hidden_size % num_heads != 0:
        raise ValueError(f"the student's hidden size {hidden_size} is not divisible by its {num_heads} heads")
    config = dataclasses.replace(
        student_config(teacher_config, num_layers, num_labels),
        dim=hidden_size,
        n_heads=num_heads,
        hidden_dim=intermediate_size,
    )
    student = DistilBertForSequenceClassification(config, key=key, compute_dtype=compute_dtype)
    if teacher_word_embeddings is None:
        return student
    if teacher_word_embeddings.shape[0] != config.vocab_size:
        raise ValueError(
            f"the teacher's word-embedding table has {teacher_word_embeddings.shape[0]} rows but its vocabulary "
            f"{config.vocab_size} entries"
        )
    table = teacher_pca_embeddings(teacher_word_embeddings, hidden_size, config.initializer_range)
    return eqx.tree_at(lambda s: s.encoder.embeddings.word.weight, student, table)
