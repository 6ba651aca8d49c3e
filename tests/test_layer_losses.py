"""The layer-matching losses (TinyBERT, DistilBERT's cosine on every pair, MiniLM, MiniLMv2's relation heads)
against PyTorch references written from the papers' formulas on tiny random ``transformers`` models, with the
gradients of every student parameter; then zero for a copy of the teacher, padding invariance, errors, layer
maps."""

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
import torch
import transformers

import distilbert_eqx as de
from distilbert_eqx import hf
from distilbert_eqx.batch import Batch
from distilbert_eqx.distill import Objective
from distilbert_eqx.distill.layer_map import (
    LayerMapError,
    attention_pairs,
    check_layer_map,
    uniform_layer_map,
)
from distilbert_eqx.distill.terms import AttentionKL, AttentionScores, Hidden, ValueRelation
from distilbert_eqx.distill.terms.attention_kl import attention_kl_loss
from distilbert_eqx.distill.terms.attention_scores import attention_score_loss
from distilbert_eqx.distill.terms.hidden import hidden_cosine_loss, hidden_mse_loss
from distilbert_eqx.distill.terms.value_relation import value_relation_loss
from distilbert_eqx.errors import ConfigError
from distilbert_eqx.init import student_from_teacher
from distilbert_eqx.train import forward
from helpers import VOCAB, max_diff, tiny_hf

TEACHER_LAYERS, STUDENT_LAYERS, SEQ = 4, 2, 12
# TinyBERT's uniform map g(m) = m * N / M for a 2-layer student of a 4-layer teacher, written out: student
# hidden state m is matched with teacher hidden state TEACHER_STATE[m], and student layer m (1-based) with
# teacher layer TEACHER_STATE[m]. The state-0 pair (embeddings) has no attention.
TEACHER_STATE = {0: 0, 1: 2, 2: 4}
# Rows of different lengths; the last is a padding row (weight 0) that, as data.py pads, attends to its first
# token only.
LENGTHS, WEIGHTS = (12, 7, 4, 1), (1.0, 1.0, 1.0, 0.0)
LAYER_TERMS = ("loss_hidden", "loss_attention_scores", "loss_attention_kl", "loss_value_relation")

# Tolerances of the PyTorch comparison (our float32 against torch's float32 models with the losses in float64);
# the worst the test measured in brackets.
# Relative, on losses between 0.018 and 2 [2.1e-7, the value relation with 8 relation heads].
LOSS_RTOL = 1e-5
# Relative: each gradient tensor to 1e-5 of its largest entry (a key bias: of its key weight's, see
# _gradient_scale) [6.9e-7, a value bias].
GRAD_RTOL = 1e-5


# Weights drawn with std 0.05 (teacher) and 0.1 (students) rather than transformers' 0.02. At 0.02 the attention
# is nearly uniform, so the attention losses and their query and key gradients are tiny differences of nearly
# equal terms: a KL of 0.002 is the difference of two cross-entropies of about 2.5, of which float32 resolves
# 1e-7, and both sides' rounding (transformers' float32 attention included) then nears 1e-5 of it. No dropout.
TEACHER_CONFIG = {
    "num_hidden_layers": TEACHER_LAYERS,
    "initializer_range": 0.05,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
STUDENT_CONFIG = {
    "n_layers": STUDENT_LAYERS,
    "initializer_range": 0.1,
    "dropout": 0.0,
    "attention_dropout": 0.0,
}
# The teacher's width and heads; half its width with half its heads (the value relation's 8 relation heads then
# match neither model's heads).
STUDENTS = {
    "wide": {"dim": 32, "n_heads": 4, "hidden_dim": 48},
    "narrow": {"dim": 16, "n_heads": 2, "hidden_dim": 24},
}


class Models(NamedTuple):
    hf_teacher: torch.nn.Module
    teacher: de.AbstractSequenceClassifier
    hf_students: dict[str, torch.nn.Module]
    students: dict[str, de.AbstractSequenceClassifier]
    # TinyBERT's W_h (student width -> teacher width) of each student narrower than the teacher, else None.
    projections: dict[str, eqx.nn.Linear | None]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Models:
    """A tiny random BERT teacher and DistilBERT students in transformers, saved and loaded with our loader."""
    folder = tmp_path_factory.mktemp("layer_losses")
    hf_teacher = tiny_hf("bert", seed=0, **TEACHER_CONFIG)
    hf_teacher.save_pretrained(folder / "teacher")
    teacher = eqx.nn.inference_mode(de.from_pretrained(folder / "teacher"))
    hf_students, students, projections = {}, {}, {}
    for seed, (name, sizes) in enumerate(STUDENTS.items(), start=1):
        hf_students[name] = tiny_hf("distilbert", seed=seed, **(STUDENT_CONFIG | sizes))
        hf_students[name].save_pretrained(folder / name)
        students[name] = eqx.nn.inference_mode(de.from_pretrained(folder / name))
        width = students[name].hidden_size
        projections[name] = (
            None
            if width == teacher.hidden_size
            else eqx.nn.Linear(width, teacher.hidden_size, key=jax.random.key(seed))
        )
    return Models(hf_teacher, teacher, hf_students, students, projections)


def _batch(seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    mask = np.arange(SEQ)[None, :] < np.array(LENGTHS)[:, None]
    ids = np.where(mask, rng.integers(1, VOCAB, size=mask.shape), 0).astype(np.int32)
    labels = np.zeros(len(LENGTHS), np.int32)
    return Batch(ids, mask, np.zeros_like(ids), labels, np.array(WEIGHTS, np.float32))


def _on_device(batch: Batch) -> Batch:
    """The batch as jax arrays, as the jitted step receives it (the losses' annotations ask for jax arrays)."""
    return jax.tree.map(jnp.asarray, batch)


# ---------------------------------------------------------------------------------------------------------------
# The PyTorch reference.


class TorchInternals(NamedTuple):
    """Per layer, from transformers' own outputs and the layer's q/k/v weights (float64 from the weights on)."""

    hidden: tuple[torch.Tensor, ...]  # L + 1 states (batch, seq, hidden): transformers' hidden_states
    probs: tuple[torch.Tensor, ...]  # L attention distributions (batch, heads, seq, seq): its attentions
    scores: tuple[torch.Tensor, ...]  # L pre-softmax scores q k^T / sqrt(d) (batch, heads, seq, seq)
    values: tuple[torch.Tensor, ...]  # L values (batch, seq, hidden), heads side by side


def _qkv(model: torch.nn.Module) -> list[tuple[torch.nn.Linear, torch.nn.Linear, torch.nn.Linear]]:
    if isinstance(model, transformers.BertForSequenceClassification):
        return [
            (x.attention.self.query, x.attention.self.key, x.attention.self.value)
            for x in model.bert.encoder.layer
        ]
    return [
        (x.attention.q_lin, x.attention.k_lin, x.attention.v_lin) for x in model.distilbert.transformer.layer
    ]


def _linear64(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return torch.nn.functional.linear(x.double(), layer.weight.double(), layer.bias.double())


def _torch_internals(model: torch.nn.Module, batch: Batch) -> TorchInternals:
    """Hidden states and attention distributions from transformers; scores and values recomputed from the
    state entering each layer (``hidden_states[l]``) with that layer's weights, as Vaswani et al. define them."""
    ids, mask = (torch.from_numpy(x.astype(np.int64)) for x in (batch.input_ids, batch.attention_mask))
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    heads = model.config.num_attention_heads
    scores, values = [], []
    for x, (query, key, value) in zip(out.hidden_states, _qkv(model)):
        b, s, width = x.shape
        d = width // heads
        q, k = (_linear64(x, layer).view(b, s, heads, d).transpose(1, 2) for layer in (query, key))
        scores.append(q @ k.transpose(-1, -2) / math.sqrt(d))
        values.append(_linear64(x, value))
    return TorchInternals(tuple(out.hidden_states), tuple(out.attentions), tuple(scores), tuple(values))


def _real_rows(batch: Batch) -> list[tuple[int, int]]:
    """``(row, length)`` of every real row: the sentences the formulas are written for."""
    return [
        (b, int(batch.attention_mask[b].sum())) for b in range(len(batch.weights)) if batch.weights[b] > 0
    ]


def _kl(target_log: torch.Tensor, log: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) = sum_k p_k (log p_k - log q_k)`` over the last axis, from log-probabilities."""
    return (target_log.exp() * (target_log - log)).sum(-1)


def _torch_loss(
    term: str,
    s: TorchInternals,
    t: TorchInternals,
    batch: Batch,
    *,
    hidden_loss: str = "mse",
    relation_heads: int | None = None,
    w_h: torch.nn.Linear | None = None,
) -> torch.Tensor:
    """The term over every real sentence of ``batch``, from the papers' formulas, in float64.

    Per sentence of ``l`` tokens (padding excluded: the formulas are over the sentence), one entry per token,
    (head, query, key), (head, query) or (relation head, query); the batch's loss is the mean over the entries of
    every sentence and every matched layer. (TinyBERT sums its layer losses over the matched layers; the layer
    losses take their mean, the hidden term's documented choice (reduction: mean), a factor 1 / pairs.)

    - TinyBERT eq. 8: ``MSE(H_S W_h, H_T)`` per token (mean over the hidden axis); DistilBERT: ``1 - cos``.
    - TinyBERT eq. 7: ``MSE(A_S, A_T)``, ``A = Q K^T / sqrt(d_k)`` of each head, over the ``l x l`` entries.
    - MiniLM eq. 4-5: ``KL(A_T || A_S)`` of the last layers' attention distributions, per head and query.
    - MiniLM eq. 6, MiniLMv2 relation heads: the last layers' values, heads concatenated, split into
      ``relation_heads`` heads of width ``d_r``; ``VR = softmax(V_r V_r^T / sqrt(d_r))``; ``KL(VR_T || VR_S)``.
    """
    entries = []
    for b, n in _real_rows(batch):
        if term == "loss_hidden":
            for m, target in TEACHER_STATE.items():
                h_s, h_t = s.hidden[m][b, :n].double(), t.hidden[target][b, :n].double()
                if w_h is not None:
                    h_s = _linear64(h_s, w_h)
                if hidden_loss == "mse":
                    entries.append(((h_s - h_t) ** 2).mean(-1))
                else:
                    entries.append(1 - (h_s * h_t).sum(-1) / (h_s.norm(dim=-1) * h_t.norm(dim=-1)))
        elif term == "loss_attention_scores":
            for m in range(1, STUDENT_LAYERS + 1):
                a_s, a_t = s.scores[m - 1][b, :, :n, :n], t.scores[TEACHER_STATE[m] - 1][b, :, :n, :n]
                entries.append((a_s - a_t) ** 2)
        elif term == "loss_attention_kl":
            a_s, a_t = s.probs[-1][b, :, :n, :n].double(), t.probs[-1][b, :, :n, :n].double()
            entries.append(_kl(a_t.log(), a_s.log()))
        elif term == "loss_value_relation":
            log_relations = []
            for v in (s.values[-1][b, :n], t.values[-1][b, :n]):
                d_r = v.shape[-1] // relation_heads
                v_r = v.view(n, relation_heads, d_r).transpose(0, 1)
                log_relations.append(torch.log_softmax(v_r @ v_r.transpose(-1, -2) / math.sqrt(d_r), dim=-1))
            entries.append(_kl(log_relations[1], log_relations[0]))
        else:
            raise AssertionError(term)
    return torch.cat([e.reshape(-1) for e in entries]).mean()


def test_reference_scores_give_transformers_attention(models):
    """The reference's pre-softmax scores are transformers' own: their softmax over a sentence's tokens is its
    attention distribution (``output_attentions``), for every layer of both model families."""
    batch = _batch()
    for model in (models.hf_teacher, *models.hf_students.values()):
        with torch.no_grad():
            internals = _torch_internals(model, batch)
        for scores, probs in zip(internals.scores, internals.probs):
            for b, n in _real_rows(batch):
                expected = probs[b, :, :n, :n].double()
                assert max_diff(torch.softmax(scores[b, :, :n, :n], -1), expected) <= 1e-6
                assert float(probs[b, :, :n, n:].sum()) == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Our side.


def _losses(term: str, hidden_loss: str = "mse", relation_heads: int | None = None) -> Objective:
    """Only ``term`` (its metrics name) on, with weight 1 and the uniform map of a 2-layer student and 4-layer
    teacher, written out."""
    layer_map = uniform_layer_map(STUDENT_LAYERS, TEACHER_LAYERS)
    build = {
        "loss_hidden": lambda: Hidden(1.0, distance=hidden_loss, layer_map=layer_map),
        "loss_attention_scores": lambda: AttentionScores(1.0, layer_map=layer_map),
        "loss_attention_kl": lambda: AttentionKL(1.0),
        "loss_value_relation": lambda: ValueRelation(1.0, relation_heads=relation_heads),
    }
    return Objective([build[term]()])


@eqx.filter_jit
def _teacher_outputs(teacher, batch: Batch) -> de.ClassifierOutput:
    """Every stack the layer losses read; compiled once and shared by the students' programs."""
    return forward(
        teacher, batch, key=None, output_hidden_states=True, output_attention_scores=True, output_values=True
    )


@eqx.filter_jit
def _our_losses_and_grads(
    student, projection, teacher_out, batch: Batch, terms: tuple[tuple[str, Objective], ...]
):
    """For each ``(term, objective)``: ``objective(...)[term].mean()`` through our student, and its gradients
    w.r.t. the student and the projection, as the train step computes them. One program (one student forward,
    one backward per term) for all of them: compiling is most of this file's time.

    Returns the losses ``(terms,)`` and the gradients of ``(student, projection)`` with a leading ``terms`` axis.
    """
    outputs = {flag: True for _, objective in terms for flag in objective.outputs()}
    params, static = eqx.partition((student, projection), eqx.is_inexact_array)

    def means(params):
        student, projection = eqx.combine(params, static)
        out = forward(student, batch, key=None, **outputs)
        values = jnp.stack(
            [
                objective(out, objective.teacher_targets(teacher_out), projection, batch)[term].mean()
                for term, objective in terms
            ]
        )
        return values, values

    grads, values = jax.jacrev(means, has_aux=True)(params)
    return values, grads


def _split(values, grads) -> list[tuple[float, tuple]]:
    """``_our_losses_and_grads``' output as one ``(loss, (student_grads, projection_grads))`` per term."""
    return [(float(v), jax.tree.map(lambda g, i=i: g[i], grads)) for i, v in enumerate(values)]


def _gradient_scale(name: str, grads: dict[str, np.ndarray]) -> float:
    """The size against which the gradient ``name`` is compared: its largest entry, and for a key bias at least
    its key weight's. Through a softmax a key bias's exact gradient is 0 (one constant added to all of a query's
    scores leaves its softmax as it is): both sides then hold float32 noise of cancelling terms the size of the
    key weight's gradient entries."""
    scale = float(np.max(np.abs(grads[name])))
    if name.endswith("k_lin.bias"):
        scale = max(scale, float(np.max(np.abs(grads[name.replace("k_lin.bias", "k_lin.weight")]))))
    return scale


# id: (term, student, hidden_loss, relation_heads). The narrow students' hidden losses go through W_h.
CASES = {
    "hidden_mse": ("loss_hidden", "wide", "mse", None),
    "hidden_cosine": ("loss_hidden", "wide", "cosine", None),
    "hidden_mse_projected": ("loss_hidden", "narrow", "mse", None),
    "hidden_cosine_projected": ("loss_hidden", "narrow", "cosine", None),
    "attention_scores": ("loss_attention_scores", "wide", "mse", None),
    "attention_kl": ("loss_attention_kl", "wide", "mse", None),
    "value_relation_minilm": ("loss_value_relation", "wide", "mse", 4),
    "value_relation_8_relation_heads": ("loss_value_relation", "narrow", "mse", 8),
}


def _cases_of(student_name: str) -> tuple[list[str], tuple[tuple[str, Objective], ...]]:
    cases = [case for case, (_, name, _, _) in CASES.items() if name == student_name]
    return cases, tuple((CASES[c][0], _losses(CASES[c][0], CASES[c][2], CASES[c][3])) for c in cases)


def _ours(models: Models, student_name: str, batch: Batch) -> dict[str, tuple[float, tuple]]:
    """Our loss and gradients of every case of the student on ``batch``, keyed by case."""
    cases, terms = _cases_of(student_name)
    batch = _on_device(batch)
    out = _our_losses_and_grads(
        models.students[student_name],
        models.projections[student_name],
        _teacher_outputs(models.teacher, batch),
        batch,
        terms,
    )
    return dict(zip(cases, _split(*out)))


@pytest.fixture(scope="module")
def torch_teacher(models) -> TorchInternals:
    with torch.no_grad():
        return _torch_internals(models.hf_teacher, _batch())


@pytest.fixture(scope="module")
def ours(models):
    """``ours(case)``: our loss and gradients for a case on ``_batch()``, computed once per student."""
    results = {}

    def get(case: str):
        if case not in results:
            results.update(_ours(models, CASES[case][1], _batch()))
        return results[case]

    return get


@pytest.mark.parametrize("case", list(CASES))
def test_layer_loss_and_gradients_equal_pytorch(models, torch_teacher, ours, case):
    """The term and its gradient w.r.t. every student parameter (and TinyBERT's ``W_h`` when the student is
    narrower than the teacher) equal those of the formula in PyTorch on the same transformers models."""
    term, student_name, hidden_loss, relation_heads = CASES[case]
    hf_student, student = models.hf_students[student_name], models.students[student_name]
    projection = models.projections[student_name] if term == "loss_hidden" else None
    w_h = None
    if projection is not None:
        w_h = torch.nn.Linear(student.hidden_size, models.teacher.hidden_size)
        with torch.no_grad():
            w_h.weight.copy_(torch.from_numpy(np.array(projection.weight)))
            w_h.bias.copy_(torch.from_numpy(np.array(projection.bias)))
    loss, (grads, projection_grads) = ours(case)

    batch = _batch()
    expected = _torch_loss(
        term,
        _torch_internals(hf_student, batch),
        torch_teacher,
        batch,
        hidden_loss=hidden_loss,
        relation_heads=relation_heads,
        w_h=w_h,
    )
    expected_loss = expected.item()
    assert expected_loss > 5e-3, "a loss near 0 would compare rounding noise"
    assert abs(loss - expected_loss) <= LOSS_RTOL * expected_loss, (loss, expected_loss)

    params = dict(hf_student.named_parameters())
    names = hf.weight_map(hf.DISTILBERT, student.num_layers)
    assert set(names) == set(params), "every torch parameter, and nothing else, is compared"
    ours_by_name = {name: get(grads) for name, get in names.items()}
    if w_h is not None:
        params |= {f"W_h.{k}": p for k, p in w_h.named_parameters()}
        ours_by_name |= {"W_h.weight": projection_grads.weight, "W_h.bias": projection_grads.bias}
    # A parameter the term does not reach (the head; after the last layer's attention) has no torch gradient.
    torch_grads = torch.autograd.grad(expected, list(params.values()), allow_unused=True)
    expected_grads = {
        name: np.zeros(tuple(p.shape), np.float32) if g is None else g.numpy()
        for (name, p), g in zip(params.items(), torch_grads)
    }
    for name, grad in ours_by_name.items():
        diff, scale = max_diff(grad, expected_grads[name]), _gradient_scale(name, expected_grads)
        assert diff <= GRAD_RTOL * scale, (name, diff, scale)
    # Not vacuous: every term reaches the word embeddings (and, through W_h, the projection).
    assert np.max(np.abs(expected_grads["distilbert.embeddings.word_embeddings.weight"])) > 0
    if w_h is not None:
        assert np.max(np.abs(expected_grads["W_h.weight"])) > 0


# ---------------------------------------------------------------------------------------------------------------
# Properties, on our models alone.


@eqx.filter_jit
def _layer_terms(student, teacher, batch: Batch) -> dict[str, jax.Array]:
    """Every layer term's mean, with the hidden MSE and with the cosine, for a student as deep as its teacher:
    the terms' defaults bound to the two models (the uniform map, the teacher's head count as relation
    heads)."""
    objectives = {
        distance: Objective(
            [Hidden(1.0, distance=distance), AttentionScores(1.0), AttentionKL(1.0), ValueRelation(1.0)]
        ).bind(student, teacher)
        for distance in ("mse", "cosine")
    }
    outputs = objectives["mse"].outputs()
    student_out, teacher_out = (forward(m, batch, key=None, **outputs) for m in (student, teacher))
    means = {}
    for distance, objective in objectives.items():
        terms = objective(student_out, objective.teacher_targets(teacher_out), None, batch)
        means |= {
            f"{name}_{distance}" if name == "loss_hidden" else name: sums.mean()
            for name, sums in terms.items()
        }
    return means


def test_student_equal_to_its_teacher_gives_zero(tmp_path):
    """A student copied from all of its teacher's layers computes the teacher's function (token types 0): every
    layer loss is 0 up to float32 rounding, under the identity map. The copy with every weight perturbed (noise
    of std 0.05) is far from 0."""
    tiny_hf("bert", seed=5, **(TEACHER_CONFIG | {"num_hidden_layers": 2})).save_pretrained(tmp_path)
    teacher = eqx.nn.inference_mode(de.from_pretrained(tmp_path))
    # Jitted: one compiled program for the new head's random init rather than one per op.
    copy = eqx.filter_jit(lambda t: student_from_teacher(t, [0, 1], key=jax.random.key(1)))(teacher)
    copy = eqx.nn.inference_mode(copy)
    assert uniform_layer_map(2, 2) == ((0, 0), (1, 1), (2, 2))
    rng = np.random.default_rng(0)

    def perturb(x):
        return jnp.asarray(np.asarray(x) + rng.normal(scale=0.05, size=x.shape).astype(np.float32))

    perturbed = jax.tree.map(lambda x: perturb(x) if eqx.is_inexact_array(x) else x, copy)
    batch = _on_device(_batch())
    same = _layer_terms(copy, teacher, batch)
    different = _layer_terms(perturbed, teacher, batch)
    assert set(same) == {"loss_hidden_mse", "loss_hidden_cosine", *LAYER_TERMS[1:]}
    for name in same:
        assert abs(float(same[name])) <= 1e-6, (name, float(same[name]))
        assert float(different[name]) > 1e-3, (name, float(different[name]))


def _scrambled_padding(batch: Batch, seed: int) -> Batch:
    """``batch`` with other ids at the padding tokens of the real rows, and other ids and a full attention mask
    in the padding rows."""
    rng = np.random.default_rng(seed)
    ids, mask = batch.input_ids.copy(), batch.attention_mask.copy()
    pad_row = batch.weights == 0
    random_ids = rng.integers(0, VOCAB, size=ids.shape).astype(np.int32)
    ids = np.where(~mask | pad_row[:, None], random_ids, ids)
    mask[pad_row] = True
    return batch._replace(input_ids=ids, attention_mask=mask)


def test_padding_tokens_and_rows_change_no_layer_loss_or_gradient(models, ours):
    """Every term of the torch comparison (all five losses) on a batch whose padding differs: the same losses
    and gradients."""
    batch = _batch()
    scrambled = _scrambled_padding(batch, seed=4)
    real = batch.attention_mask & (batch.weights > 0)[:, None]
    assert np.array_equal(scrambled.input_ids[real], batch.input_ids[real])
    assert not np.array_equal(scrambled.input_ids[~real], batch.input_ids[~real])
    changed = _ours(models, "wide", scrambled)
    for case, (loss, grads) in changed.items():
        base_loss, base_grads = ours(case)
        assert abs(loss - base_loss) <= 1e-6 * base_loss, case
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):
            assert max_diff(a, b) <= 1e-6 * max(float(np.max(np.abs(np.asarray(b)))), 1e-30), case


def test_all_padding_batch_gives_zero_and_finite_zero_gradients(models):
    batch = _batch()._replace(weights=np.zeros(len(LENGTHS), np.float32))
    results = _ours(models, "wide", batch)
    assert {CASES[case][0] for case in results} == set(LAYER_TERMS)
    for case, (loss, grads) in results.items():
        assert loss == 0.0, case
        for g in jax.tree.leaves(grads):
            assert np.all(np.isfinite(np.asarray(g))) and not np.any(np.asarray(g)), case


# ---------------------------------------------------------------------------------------------------------------
# Errors.


def _mask_and_weights(batch: int = 2, seq: int = 5) -> tuple[jax.Array, jax.Array]:
    return jnp.ones((batch, seq), bool), jnp.ones(batch, jnp.float32)


@pytest.mark.parametrize("term", [AttentionScores(1.0), AttentionKL(1.0)])
def test_attention_losses_need_equal_head_counts(models, term):
    """Binding the term to a 2-head student of a 4-head teacher names both counts; the loss itself refuses
    scores of different head counts (its annotation gives both one ``heads`` axis)."""
    message = f"the {term.name} term compares attention heads one to one, but the student has 2 heads and the teacher 4"
    with pytest.raises(ConfigError, match=message):
        term.bind(models.students["narrow"], models.teacher)
    term.bind(models.students["wide"], models.teacher)
    loss = attention_score_loss if isinstance(term, AttentionScores) else attention_kl_loss
    student, teacher = jnp.zeros((2, 1, 2, 5, 5)), jnp.zeros((2, 1, 4, 5, 5))
    with pytest.raises(jaxtyping.TypeCheckError):
        loss(student, teacher, *_mask_and_weights())


@pytest.mark.parametrize("loss", [hidden_mse_loss, hidden_cosine_loss])
def test_hidden_losses_need_equal_widths(loss):
    student, teacher = jnp.zeros((2, 3, 5, 16)), jnp.zeros((2, 3, 5, 32))
    with pytest.raises(ValueError, match="student width 16 and teacher width 32"):
        loss(student, teacher, *_mask_and_weights())


@pytest.mark.parametrize(
    ("relation_heads", "teacher_width", "message"),
    [
        (3, 32, "relation_heads=3 must be a positive divisor of the student's width 16"),
        (8, 20, "relation_heads=8 must be a positive divisor of the teacher's width 20"),
        (0, 32, "relation_heads=0 must be a positive divisor of the student's width 16"),
    ],
)
def test_relation_heads_must_divide_both_widths(relation_heads, teacher_width, message):
    student, teacher = jnp.zeros((2, 1, 5, 16)), jnp.zeros((2, 1, 5, teacher_width))
    with pytest.raises(ValueError, match=message):
        value_relation_loss(student, teacher, *_mask_and_weights(), relation_heads=relation_heads)


# ---------------------------------------------------------------------------------------------------------------
# Layer maps.


@pytest.mark.parametrize(
    ("student_layers", "teacher_layers", "expected"),
    [
        (3, 6, ((0, 0), (1, 2), (2, 4), (3, 6))),
        (4, 6, ((0, 0), (1, 1), (2, 3), (3, 4), (4, 6))),
        (3, 3, ((0, 0), (1, 1), (2, 2), (3, 3))),
        (1, 12, ((0, 0), (1, 12))),
    ],
)
def test_uniform_layer_map(student_layers, teacher_layers, expected):
    assert uniform_layer_map(student_layers, teacher_layers) == expected


@pytest.mark.parametrize(("student_layers", "teacher_layers"), [(0, 4), (2, 0), (5, 4)])
def test_uniform_layer_map_rejects_impossible_depths(student_layers, teacher_layers):
    with pytest.raises(LayerMapError, match=f"{student_layers}-layer student"):
        uniform_layer_map(student_layers, teacher_layers)


def test_check_layer_map_accepts_valid_pairs():
    assert check_layer_map([[0, 0], [2, 3], [1, 3]], 2, 4) == ((0, 0), (2, 3), (1, 3))


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([], "the layer map is empty"),
        ([[3, 1]], "student state 3 is out of range; the student has 2 layers"),
        ([[-1, 1]], "student state -1 is out of range"),
        ([[1, 5]], "teacher state 5 is out of range; the teacher has 4 layers"),
        ([[1, 2], [1, 3]], "student state 1 is matched twice"),
        ([[1.0, 2.0]], r"entry \[1.0, 2.0\] is not a pair of ints"),
        ([[True, 2]], r"entry \[True, 2\] is not a pair of ints"),
        ([[1, 2, 3]], r"entry \[1, 2, 3\] is not a pair of ints"),
    ],
)
def test_check_layer_map_errors(pairs, message):
    with pytest.raises(LayerMapError, match=message):
        check_layer_map(pairs, 2, 4)


def test_attention_pairs_drop_the_embeddings_and_count_layers_from_0():
    assert attention_pairs(((0, 0), (1, 2), (2, 4))) == ((0, 1), (1, 3))
    # A student layer matched with the teacher's embeddings has no attention to match either.
    assert attention_pairs(((1, 0), (2, 3))) == ((1, 2),)
