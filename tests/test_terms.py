"""Properties every registered loss term has, parametrised over the registry ``TERMS``: a term added there
gets them without being named here.

Each term is built from its defaults and bound (``AbstractTerm.bind``) to a tiny 4-layer BERT teacher and a
2-layer DistilBERT student of the same width and heads copied from its layers 0 and 2; a term whose defaults
cannot bind these models gets the uniform map written out. Properties, each of which a faulty term fails:

(a) finite values and gradients w.r.t. every student parameter, also on an all-padding batch (0 there);
(b) padding invariance: more padding tokens in every row and more weight-0 rows leave the mean unchanged;
(c) a distance to the teacher (every term that reads it) is 0 for a student that is the teacher;
(d) the teacher-output cache gives the live teacher's value, also with an explicit map that pairs the
    student's embeddings with a teacher layer;
(e) the sums of 4 devices' rows (``shard_map`` + ``psum``) give the single-device value.

The models use weights of std 0.2 rather than BERT's 0.02: at 0.02 the attention is nearly uniform and the
copied student nearly its teacher, so the distances are 1e-4 or less and a relative 1e-6 would compare float32
rounding.
"""

import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

import distilbert_eqx as de
from distilbert_eqx.batch import Batch, TeacherTargets
from distilbert_eqx.data import TokenizedSplit, indexed_train_batches
from distilbert_eqx.distill import TERMS, AbstractTerm, Objective, WeightedSum
from distilbert_eqx.distill.layer_map import uniform_layer_map
from distilbert_eqx.distill.teacher_cache import TeacherCache, TeacherCacheError, teacher_cache
from distilbert_eqx.errors import ConfigError
from distilbert_eqx.train import forward
from helpers import VOCAB, random_batch, tiny_student, tiny_teacher

TOL = 1e-6
# Every stack any registered term reads: the models return all of them once, and each term picks its own.
FLAGS = tuple(sorted({flag for term in TERMS.values() for flag in term.outputs}))
ROWS, SEQ, REAL_ROWS = 8, 16, 5
# Two rows per device: rows 5-7 are padding, so device 2 holds one real row and device 3 none.
DEVICES = 4
# Pairs the student's embeddings (state 0) with teacher layer 2: the cache must store exactly the teacher
# states and attention layers that the term reads.
EXPLICIT_MAP = ((0, 2), (1, 3), (2, 4))
BUCKETS = (SEQ,)


def _has_layer_map(term: type[AbstractTerm]) -> bool:
    return "layer_map" in {f.name for f in dataclasses.fields(term)}


def _bound(term: type[AbstractTerm], student, teacher, layer_map=None) -> AbstractTerm:
    """The term's defaults bound to the two models, with ``layer_map`` when given; when the defaults cannot
    bind these models, the uniform map written out."""
    if layer_map is not None:
        return term(layer_map=layer_map).bind(student, teacher)
    try:
        return term().bind(student, teacher)
    except ConfigError:
        if not _has_layer_map(term):
            raise
        uniform = uniform_layer_map(student.num_layers, teacher.num_layers)
        return term(layer_map=uniform).bind(student, teacher)


def _jnp(batch: Batch) -> Batch:
    """The batch (and its cached targets) as jax arrays, as the jitted step receives it."""
    return jax.tree.map(jnp.asarray, batch)


@eqx.filter_jit
def _forward(model, batch: Batch) -> de.ClassifierOutput:
    return forward(model, batch, key=None, **dict.fromkeys(FLAGS, True))


def _targets(term: AbstractTerm, teacher_out: de.ClassifierOutput) -> TeacherTargets | None:
    objective = Objective([term])
    return objective.teacher_targets(teacher_out) if objective.needs_teacher else None


@eqx.filter_jit
def _sums(term: AbstractTerm, student_out: de.ClassifierOutput, targets: TeacherTargets | None, batch: Batch):
    """The term's ``WeightedSum`` as the step computes it: through a one-term objective, no projection."""
    return Objective([term])(student_out, targets, None, batch)[term.metric]


def _live(term: AbstractTerm, student_out, teacher_out, batch: Batch) -> WeightedSum:
    return _sums(term, student_out, _targets(term, teacher_out), batch)


class Models(NamedTuple):
    teacher: de.AbstractSequenceClassifier
    student: de.AbstractSequenceClassifier
    batch: Batch
    student_out: de.ClassifierOutput
    teacher_out: de.ClassifierOutput


@pytest.fixture(scope="module")
def models() -> Models:
    teacher = tiny_teacher(num_hidden_layers=4, initializer_range=0.2)
    student = tiny_student(teacher, layers=(0, 2))
    assert student.num_layers == 2
    assert (student.hidden_size, student.num_heads) == (teacher.hidden_size, teacher.num_heads)
    batch = _jnp(random_batch(0, batch=ROWS, seq=SEQ, real_rows=REAL_ROWS))
    return Models(teacher, student, batch, _forward(student, batch), _forward(teacher, batch))


def _ids(term: type[AbstractTerm]) -> str:
    return term.name


TERM_CLASSES = pytest.mark.parametrize("term_class", list(TERMS.values()), ids=_ids)


# ---------------------------------------------------------------------------------------------------------------
# (a) Finite values and gradients.


@eqx.filter_jit
def _output_gradient(term: AbstractTerm, student_out, targets, batch: Batch):
    """The term's mean and its gradient w.r.t. every stack of the student's outputs."""
    return jax.value_and_grad(lambda out: _sums(term, out, targets, batch).mean())(student_out)


@eqx.filter_jit
def _student_gradient(student, batch: Batch, cotangent: de.ClassifierOutput):
    """The gradient w.r.t. every student parameter, given the gradient w.r.t. its outputs: the backward pass
    through the student's forward, compiled once for all the terms."""
    params, static = eqx.partition(student, eqx.is_inexact_array)
    _, pullback = jax.vjp(lambda p: _forward(eqx.combine(p, static), batch), params)
    return pullback(cotangent)[0]


@TERM_CLASSES
def test_values_and_gradients_are_finite(models, term_class):
    """``jax.grad`` of the term's mean through the student's forward (the chain rule split at the outputs, so
    that one backward program serves every term) is finite and reaches the student, and the term runs on the
    stacks its own ``outputs`` flags ask for. On an all-padding batch the mean and its gradient are 0.
    Fails for a term whose masked softmax or normalisation gives NaN or inf (at the one-token padding rows, a
    zero norm, an all-masked row), or that reads a stack it does not ask for."""
    term = _bound(term_class, models.student, models.teacher)
    flags = dict.fromkeys(Objective([term]).outputs(), True)
    assert set(flags) <= set(FLAGS)
    shapes = eqx.filter_eval_shape(
        lambda s, t, b: Objective([term])(
            forward(s, b, key=None, **flags), _targets(term, forward(t, b, key=None, **flags)), None, b
        ),
        models.student,
        models.teacher,
        models.batch,
    )
    assert shapes[term.metric].total.shape == ()

    targets = _targets(term, models.teacher_out)
    for weights in (models.batch.weights, jnp.zeros(ROWS, jnp.float32)):
        batch = models.batch._replace(weights=weights)
        value, cotangent = _output_gradient(term, models.student_out, targets, batch)
        grads = jax.tree.leaves(_student_gradient(models.student, batch, cotangent))
        assert np.isfinite(float(value)), float(value)
        assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
        largest = max(float(np.max(np.abs(np.asarray(g)))) for g in grads)
        if float(batch.weights.sum()) > 0:
            assert float(value) > 0 and largest > 0, (float(value), largest)
        else:
            assert float(value) == 0.0 and largest == 0.0, (float(value), largest)


# ---------------------------------------------------------------------------------------------------------------
# (b) Padding invariance.


def _more_padding(batch: Batch, tokens: int = 4, rows: int = 3, seed: int = 1) -> Batch:
    """``batch`` with ``tokens`` more padding tokens (other ids, mask False) in every row, then ``rows`` more
    weight-0 rows of random ids under a full attention mask."""
    rng = np.random.default_rng(seed)
    old_rows, old_seq = batch.input_ids.shape
    seq = old_seq + tokens
    ids = np.concatenate([np.asarray(batch.input_ids), rng.integers(1, VOCAB, (old_rows, tokens))], axis=1)
    mask = np.concatenate([np.asarray(batch.attention_mask), np.zeros((old_rows, tokens), bool)], axis=1)
    ids = np.concatenate([ids, rng.integers(1, VOCAB, (rows, seq))]).astype(np.int32)
    mask = np.concatenate([mask, np.ones((rows, seq), bool)])
    labels = np.concatenate([np.asarray(batch.labels), rng.integers(0, 2, rows)]).astype(np.int32)
    weights = np.concatenate([np.asarray(batch.weights), np.zeros(rows, np.float32)])
    return _jnp(Batch(ids, mask, np.zeros_like(ids), labels, weights))


def _cut(out: de.ClassifierOutput, shapes: de.ClassifierOutput) -> de.ClassifierOutput:
    """The first rows and tokens of every stack: the outputs of a batch of ``shapes``' sizes."""
    return jax.tree.map(lambda x, shape: x[tuple(slice(0, n) for n in shape.shape)], out, shapes)


@TERM_CLASSES
def test_padding_tokens_and_rows_leave_the_mean_unchanged(models, term_class):
    """The term on the batch with more padding against the term on the batch, where the batch's outputs
    are the padded batch's cut to the batch's rows and tokens: the real tokens hold the same bits, so that
    only the term can tell the two apart. (Rerunning the models at the other shape changes their float32
    rounding by about 1e-7, which a small loss such as the KL turns into 3e-5 of itself.) Fails for a term
    that counts a masked token or a weight-0 row: their ids, and so their states, are other ones."""
    term = _bound(term_class, models.student, models.teacher)
    batch = models.batch
    padded = _more_padding(batch)
    student_out, teacher_out = _forward(models.student, padded), _forward(models.teacher, padded)
    cut = [
        _cut(out, eqx.filter_eval_shape(_forward, model, batch))
        for out, model in ((student_out, models.student), (teacher_out, models.teacher))
    ]
    base = float(_live(term, *cut, batch).mean())
    more = float(_live(term, student_out, teacher_out, padded).mean())
    assert abs(more - base) <= TOL * abs(base), (more, base)


# ---------------------------------------------------------------------------------------------------------------
# (c) Zero for a student that is its teacher.


DISTANCES = [term for term in TERMS.values() if term.reads_teacher]


@pytest.mark.parametrize("term_class", DISTANCES, ids=_ids)
def test_a_student_that_is_its_teacher_is_at_distance_zero(models, term_class):
    """The teacher as its own student, each state paired with itself: 0. The 2-layer student is far from 0,
    so this fails for a term that compares mismatched layers or fields, or is no distance."""
    term = _bound(term_class, models.teacher, models.teacher)
    layer_map = getattr(term, "layer_map", ())
    assert all(s == t for s, t in layer_map), layer_map
    same = float(_live(term, models.teacher_out, models.teacher_out, models.batch).mean())
    assert abs(same) <= TOL, same
    student = _bound(term_class, models.student, models.teacher)
    other = float(_live(student, models.student_out, models.teacher_out, models.batch).mean())
    assert other > 1000 * TOL, other


# ---------------------------------------------------------------------------------------------------------------
# (d) The teacher-output cache.


def _split(examples: int = 21, seed: int = 3) -> TokenizedSplit:
    """Examples of 2 to 16 tokens: three batches of 8 rows, the last with 5 real rows."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, SEQ + 1, size=examples)
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)])
    token_ids = rng.integers(1, VOCAB, size=int(offsets[-1])).astype(np.int32)
    labels = rng.integers(0, 2, size=examples).astype(np.int32)
    return TokenizedSplit("train", labels, offsets, token_ids, np.zeros_like(token_ids), pad_id=0)


MAPS = {"defaults": None, "explicit map": EXPLICIT_MAP}


def _cache(teacher, split: TokenizedSplit, objective: Objective) -> TeacherCache:
    """The split's cache, computed in memory, quietly."""
    return teacher_cache(teacher, split, objective, batch_size=ROWS, buckets=BUCKETS, log=lambda _: None)


@pytest.fixture(scope="module")
def cached(models) -> dict[str, tuple[Objective, list[Batch]]]:
    """Per map: an objective of every term that reads the teacher (with that map where a term has one), and
    the training batches of a small split with its cached targets."""
    split = _split()
    out = {}
    for name, layer_map in MAPS.items():
        terms = [
            _bound(term, models.student, models.teacher, layer_map if _has_layer_map(term) else None)
            for term in DISTANCES
            if layer_map is None or _has_layer_map(term)
        ]
        objective = Objective(terms)
        cache = _cache(models.teacher, split, objective)
        stream = indexed_train_batches(split, ROWS, BUCKETS, seed=1, epoch=0)
        out[name] = objective, [_jnp(batch) for batch in cache.attach(stream)]
    return out


CACHE_CASES = [
    pytest.param(term, name, id=f"{term.name}-{name.replace(' ', '_')}")
    for term in TERMS.values()
    for name in MAPS
    if name == "defaults" or _has_layer_map(term)
]


@pytest.mark.parametrize(("term_class", "layer_map"), CACHE_CASES)
def test_cached_targets_give_the_live_value(models, cached, term_class, layer_map):
    """Fails where the cache stores other teacher states or layers than the term reads, or the term reads
    padding positions (the cache holds zeros there). A term that reads nothing of the teacher has nothing to
    cache."""
    if not term_class.reads_teacher:
        with pytest.raises(TeacherCacheError, match="nothing to cache"):
            _cache(models.teacher, _split(), Objective([term_class()]))
        return
    objective, batches = cached[layer_map]
    (term,) = [t for t in objective.terms if t.name == term_class.name]
    if layer_map != "defaults":
        assert term.layer_map == EXPLICIT_MAP
    assert len(batches) == 3 and float(batches[-1].weights.sum()) == 5
    for batch in batches:
        kept, batch = {term.name: batch.teacher[term.name]}, batch._replace(teacher=None)
        student_out = _forward(models.student, batch)
        live = float(_live(term, student_out, _forward(models.teacher, batch), batch).mean())
        from_cache = float(_sums(term, student_out, kept, batch).mean())
        assert abs(from_cache - live) <= TOL * abs(live), (from_cache, live)


# ---------------------------------------------------------------------------------------------------------------
# (e) Summed over devices.


@TERM_CLASSES
def test_sums_over_devices_give_the_single_device_value(models, term_class):
    """Each device's ``WeightedSum`` of its 2 rows, ``psum``-ed, is the whole batch's (``out_specs=P()`` under
    ``check_vma`` accepts only a value that every device holds). Fails for a term that normalises by its local
    rows (a mean in ``total``), or gives NaN on a device of padding rows only."""
    term = _bound(term_class, models.student, models.teacher)
    targets = _targets(term, models.teacher_out)
    mesh = jax.make_mesh((DEVICES,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:DEVICES])

    def local(student_out, targets, batch):
        return jax.lax.psum(Objective([term])(student_out, targets, None, batch)[term.metric], "data")

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P("data"),) * 3, out_specs=P(), check_vma=True)
    summed = jax.jit(sharded)(models.student_out, targets, models.batch)
    single = _sums(term, models.student_out, targets, models.batch)
    assert float(summed.weight) == float(single.weight) > 0
    assert abs(float(summed.mean()) - float(single.mean())) <= TOL * abs(float(single.mean()))
