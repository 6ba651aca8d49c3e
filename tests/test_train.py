"""The train step: frozen teacher, one trace per shape, gradients and AdamW steps equal to PyTorch's,
learning."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

import distilbert_eqx as de
from distilbert_eqx import hf
from distilbert_eqx.batch import Batch
from distilbert_eqx.init import student_from_teacher
from distilbert_eqx.train import (
    clip_by_global_norm,
    decay_mask,
    eval_step,
    init_state,
    make_optimizer,
    train_step,
)
from helpers import (
    ALPHA_CE,
    ALPHA_COS,
    ALPHA_KL,
    TEMPERATURE,
    VOCAB,
    copy_tree,
    max_diff,
    original_objective,
    random_batch,
    tiny_student,
    tiny_teacher,
)

LOSSES = original_objective()
# Every other layer of a 4-layer teacher, as DistilBERT is made: the student is not a copy of the teacher.
TEACHER_LAYERS = 4
STUDENT_LAYERS = (0, 2)
# The tests that trace train_step are marked slow: even for these tiny models, tracing and compiling one costs
# more than a test of the fast tier may take.


@pytest.mark.slow
def test_teacher_is_frozen_and_outside_the_optimizer():
    teacher = tiny_teacher(num_hidden_layers=TEACHER_LAYERS)
    before = copy_tree(teacher)
    student = tiny_student(teacher, STUDENT_LAYERS)
    optimizer, _ = make_optimizer(1e-3, 0.01, 0.0, 10)
    state = init_state(student, optimizer, key=jax.random.key(2))
    student_shapes = [x.shape for x in jax.tree.leaves(eqx.filter(student, eqx.is_inexact_array))]
    # Adam keeps two moments per student array, and otherwise only scalar step counters: no teacher array.
    moments = [x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert moments == 2 * student_shapes
    for step in range(3):
        state, metrics = train_step(teacher, state, random_batch(step), optimizer, LOSSES)
        assert np.isfinite(float(metrics.loss))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(teacher)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert int(state.step) == 3


@pytest.mark.slow
def test_compiled_step_does_not_embed_the_teacher():
    """The teacher's weights are inputs of the program: a 40x bigger embedding table barely changes its size."""
    optimizer, _ = make_optimizer(1e-3, 0.01, 0.0, 10)
    sizes = []
    for vocab in (50, 2000):
        teacher = tiny_teacher(vocab_size=vocab, num_hidden_layers=TEACHER_LAYERS)
        state = init_state(tiny_student(teacher, STUDENT_LAYERS), optimizer, key=jax.random.key(2))
        lowered = train_step.lower(teacher, state, random_batch(0, vocab=vocab), optimizer, LOSSES)
        sizes.append(len(lowered.as_text()))
    # 1950 extra rows x 32 floats in teacher and student would add >100 kB of constants if they were baked in.
    assert abs(sizes[1] - sizes[0]) < 2000, sizes


@pytest.mark.slow
def test_one_trace_per_batch_shape():
    teacher = tiny_teacher(num_hidden_layers=TEACHER_LAYERS)
    optimizer, _ = make_optimizer(1e-3, 0.01, 0.0, 10)
    state = init_state(tiny_student(teacher, STUDENT_LAYERS), optimizer, key=jax.random.key(2))
    before = eqx.debug.get_num_traces(train_step)
    for step, seq in enumerate([8, 16, 8, 16, 8]):
        state, _ = train_step(teacher, state, random_batch(step, seq=seq), optimizer, LOSSES)
    assert eqx.debug.get_num_traces(train_step) - before == 2


def test_weight_decay_only_on_matrices():
    student = tiny_student(tiny_teacher(num_hidden_layers=TEACHER_LAYERS), STUDENT_LAYERS)
    mask = decay_mask(eqx.filter(student, eqx.is_inexact_array))
    layer = mask.encoder.layers[0]
    assert layer.attention.query_proj.weight and mask.encoder.embeddings.word.weight
    assert not layer.attention.query_proj.bias and not layer.output_norm.weight
    assert not mask.encoder.embeddings.norm.bias


@pytest.mark.slow
def test_dropout_key_advances_and_bfloat16_keeps_float32_master_weights():
    teacher = tiny_teacher(num_hidden_layers=TEACHER_LAYERS)
    # Dropout on and bfloat16 compute, which tiny_student does not offer together.
    student = student_from_teacher(
        teacher, list(STUDENT_LAYERS), key=jax.random.key(1), compute_dtype="bfloat16"
    )
    optimizer, _ = make_optimizer(1e-3, 0.01, 0.0, 10)
    state = init_state(student, optimizer, key=jax.random.key(2))
    keys = [np.asarray(jax.random.key_data(state.key))]
    losses = []
    for _ in range(2):
        # The same batch twice: with dropout on, different keys give different losses.
        state, metrics = train_step(teacher, state, random_batch(0), optimizer, LOSSES)
        keys.append(np.asarray(jax.random.key_data(state.key)))
        losses.append(float(metrics.loss))
    assert not np.array_equal(keys[0], keys[1]) and not np.array_equal(keys[1], keys[2])
    assert all(np.isfinite(losses))
    assert all(
        x.dtype == jnp.float32 for x in jax.tree.leaves(eqx.filter(state.student, eqx.is_inexact_array))
    )


def _record_gradients() -> optax.GradientTransformation:
    """Passes the gradients on unchanged and keeps the latest as its state. Chained in front of the real
    optimizer, it lets a test read the gradients the train step itself computed (before clipping) from
    ``state.opt_state[0]``, without changing the update."""

    def init(params):
        return jax.tree.map(jnp.zeros_like, params)

    def update(updates, state, params=None):
        return updates, updates

    return optax.GradientTransformation(init, update)


def _hf_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    """A tiny random BERT teacher and DistilBERT student, dropout 0.

    Weights are drawn with std 0.05 rather than transformers' 0.02: at 0.02 the attention is nearly uniform,
    so the query and key gradients are tiny differences of large terms (and say little about the attention);
    well above 0.05 the key biases' float32 noise (their exact gradient is 0) nears Adam's eps, which turns
    it into steps of a sizeable fraction of the learning rate.
    """
    torch.manual_seed(0)
    teacher = transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=32,
            attn_implementation="eager",
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            initializer_range=0.05,
        )
    ).eval()
    student = transformers.DistilBertForSequenceClassification(
        transformers.DistilBertConfig(
            vocab_size=VOCAB,
            dim=32,
            n_layers=2,
            n_heads=4,
            hidden_dim=48,
            max_position_embeddings=32,
            attn_implementation="eager",
            dropout=0.0,
            attention_dropout=0.0,
            seq_classif_dropout=0.0,
            initializer_range=0.05,
        )
    ).train()
    return teacher, student


def _torch_loss(teacher: torch.nn.Module, student: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """``LOSSES`` from the formulas, over the rows with positive weight (all weigh 1 here): mean
    cross-entropy, ``T**2`` times the mean ``KL(teacher || student)`` of the softened distributions, and the
    mean of ``1 - cos`` over the real tokens of the last hidden states."""
    ids, mask = (torch.from_numpy(x.astype(np.int64)) for x in (batch.input_ids, batch.attention_mask))
    real = torch.from_numpy(batch.weights > 0)
    with torch.no_grad():
        t_out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    s_out = student(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    s_logits, t_logits = s_out.logits[real], t_out.logits[real]
    labels = torch.from_numpy(batch.labels.astype(np.int64))[real]
    T = TEMPERATURE
    ce = -torch.log_softmax(s_logits, -1).gather(1, labels[:, None]).mean()
    t_log_probs = torch.log_softmax(t_logits / T, -1)
    kl = T**2 * (t_log_probs.exp() * (t_log_probs - torch.log_softmax(s_logits / T, -1))).sum(-1).mean()
    tokens = mask.bool() & real[:, None]
    s_h, t_h = s_out.hidden_states[-1][tokens], t_out.hidden_states[-1][tokens]
    cos = (1 - (s_h * t_h).sum(-1) / (s_h.norm(dim=-1) * t_h.norm(dim=-1))).mean()
    return ALPHA_CE * ce + ALPHA_KL * kl + ALPHA_COS * cos


# Tolerances of the PyTorch comparison, float32 on both sides; the worst the test measured in brackets.
# Absolute, on a loss of about 0.8, where float32 resolves 6e-8 [1.2e-7].
STEP_LOSS_TOL = 1e-6
# Relative: each gradient tensor to 1e-5 of its scale (below) [1.5e-6, a query or key weight], and
# StepMetrics.grad_norm to 1e-5 of torch's [2.3e-7].
GRAD_RTOL = 1e-5
# Absolute: 1% of what one AdamW step at lr=1e-3 moves a weight [1.2e-7, one float32 ulp of a LayerNorm gain].
STEP_WEIGHT_TOL = 1e-5


def _gradient_scale(name: str, grads: dict[str, np.ndarray]) -> float:
    """The size against which the gradient ``name`` is compared: its largest entry, except for a key bias.

    A key bias's exact gradient is 0 (one constant added to all of a query's scores leaves its softmax as it
    is), so both sides hold float32 noise [~1e-11] of terms that cancel; those terms are the size of the key
    weight's gradient entries [~1e-4], so that is its scale [noise 1.8e-7 of it].
    """
    return float(np.max(np.abs(grads[name.replace("k_lin.bias", "k_lin.weight")])))


def test_gradients_clipped_adamw_steps_equal_pytorch(tmp_path):
    """Five steps of ``train_step`` against PyTorch from the same weights on the same batches (no dropout, one
    padding row each): the loss, every gradient, the pre-clip global gradient norm and every weight after each
    step equal those of the formulas' loss in torch, ``clip_grad_norm_`` and ``torch.optim.AdamW`` (weight
    decay on >= 2-D tensors only) under ``transformers``' linear warm-up/decay schedule.

    ``max_grad_norm`` is below every step's gradient norm, so every step clips; since the norms differ from
    step to step, clipping changes Adam's moments and so the weights, not only the first update's scale.
    """
    lr, weight_decay, warmup_ratio, total_steps, max_grad_norm = 1e-3, 0.1, 0.25, 8, 0.05
    hf_teacher, hf_student = _hf_pair()
    hf_teacher.save_pretrained(tmp_path / "teacher")
    hf_student.save_pretrained(tmp_path / "student")
    teacher = eqx.nn.inference_mode(de.from_pretrained(tmp_path / "teacher"))
    student = eqx.nn.inference_mode(de.from_pretrained(tmp_path / "student"))
    adamw, _ = make_optimizer(lr, weight_decay, warmup_ratio, total_steps, max_grad_norm)
    optimizer = optax.chain(_record_gradients(), adamw)
    state = init_state(student, optimizer, key=jax.random.key(0))

    names = hf.weight_map(hf.DISTILBERT, student.num_layers)
    params = dict(hf_student.named_parameters())
    assert set(names) == set(params), "every torch parameter, and nothing else, is compared"
    torch_optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params.values() if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params.values() if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    warmup = int(warmup_ratio * total_steps)

    def lr_factor(step: int) -> float:
        """transformers.get_linear_schedule_with_warmup's fraction of the peak learning rate."""
        return step / warmup if step < warmup else max(0.0, (total_steps - step) / (total_steps - warmup))

    schedule = torch.optim.lr_scheduler.LambdaLR(torch_optimizer, lr_factor)

    for step in range(5):
        batch = random_batch(20 + step, batch=6, real_rows=5)
        state, metrics = train_step(teacher, state, batch, optimizer, LOSSES)
        loss = _torch_loss(hf_teacher, hf_student, batch)
        torch_optimizer.zero_grad()
        loss.backward()
        expected_grads = {name: p.grad.numpy().copy() for name, p in params.items()}
        norm = float(torch.nn.utils.clip_grad_norm_(list(params.values()), max_grad_norm))
        torch_optimizer.step()
        schedule.step()

        assert norm > max_grad_norm, f"step {step} did not clip (gradient norm {norm})"
        assert abs(float(metrics.loss) - loss.item()) <= STEP_LOSS_TOL, step
        assert abs(float(metrics.grad_norm) - norm) <= GRAD_RTOL * norm, step
        grads, _ = state.opt_state[0]  # (student, projection)
        for name, get in names.items():
            scale = _gradient_scale(name, expected_grads)
            assert max_diff(get(grads), expected_grads[name]) <= GRAD_RTOL * scale, (step, name)
            weight = params[name].detach().numpy()
            assert max_diff(get(state.student), weight) <= STEP_WEIGHT_TOL, (step, name)


@pytest.mark.slow
def test_distillation_learns_the_teacher():
    """On a synthetic task labelled by the teacher, the loss falls and the student comes to agree with it."""
    teacher = tiny_teacher(seed=5, num_hidden_layers=TEACHER_LAYERS)
    optimizer, _ = make_optimizer(3e-3, 0.0, 0.0, 60)
    state = init_state(tiny_student(teacher, STUDENT_LAYERS), optimizer, key=jax.random.key(2))
    batches = []
    for i in range(4):
        b = random_batch(100 + i, batch=16)
        labels = np.asarray(
            jnp.argmax(jax.vmap(teacher)(b.input_ids, b.attention_mask, b.token_type_ids).logits, -1)
        )
        batches.append(b._replace(labels=labels.astype(np.int32)))

    def agreement(model) -> float:
        counts = [eval_step(eqx.nn.inference_mode(model), b)[0] for b in batches]
        return sum(float(c.correct) for c in counts) / sum(float(c.total) for c in counts)

    start_agreement = agreement(state.student)
    losses = []
    for step in range(60):
        state, metrics = train_step(teacher, state, batches[step % 4], optimizer, LOSSES)
        losses.append(float(metrics.loss))
    # The floor is not 0: the hard labels are the argmax of a near-uniform random teacher.
    assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:8])
    final_agreement = agreement(state.student)
    print(f"agreement {start_agreement:.3f} -> {final_agreement:.3f}")
    assert final_agreement >= 0.95 and final_agreement > start_agreement


@pytest.mark.parametrize("norm", [0.0, 0.3, 1.0, 7.5])
def test_clip_by_global_norm_equals_torch(norm):
    """Gradients with global norm ``norm`` come out as torch's clip_grad_norm_(max_norm=1) leaves them, and as
    optax.clip_by_global_norm does: unchanged at or under 1, scaled to norm 1 above it; zeros stay zeros."""
    rng = np.random.default_rng(0)
    grads = {"w": rng.normal(size=(5, 3)), "b": rng.normal(size=3), "e": rng.normal(size=(7, 2))}
    total = np.sqrt(sum(np.sum(g**2) for g in grads.values()))
    grads = {k: (g * (norm / total)).astype(np.float32) for k, g in grads.items()}
    clip = clip_by_global_norm(1.0)
    ours, _ = clip.update(jax.tree.map(jnp.asarray, grads), clip.init(grads))
    reference, _ = optax.clip_by_global_norm(1.0).update(jax.tree.map(jnp.asarray, grads), optax.EmptyState())

    params = {k: torch.nn.Parameter(torch.zeros(g.shape)) for k, g in grads.items()}
    for k, p in params.items():
        p.grad = torch.from_numpy(grads[k].copy())
    torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)

    out_norm = float(optax.tree.norm(ours))
    assert out_norm == pytest.approx(min(norm, 1.0), rel=1e-6, abs=0.0)
    for k in grads:
        np.testing.assert_allclose(np.asarray(ours[k]), params[k].grad.numpy(), rtol=2e-6, atol=0)
        np.testing.assert_allclose(np.asarray(ours[k]), np.asarray(reference[k]), rtol=1e-6, atol=0)
    if norm <= 1.0:
        for k in grads:
            np.testing.assert_array_equal(np.asarray(ours[k]), grads[k])


def test_optimizer_schedule_warms_up_then_decays():
    _, schedule = make_optimizer(1e-3, 0.0, 0.1, 100)
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(55)) == pytest.approx(0.5e-3)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("max_grad_norm", [None, 0.5])
def test_optimizer_equals_torch_adamw_with_and_without_clipping(max_grad_norm):
    """Three steps of make_optimizer against torch.optim.AdamW on a matrix (decayed) and a bias (not decayed),
    with gradients of global norm 8, 0.2 and 3: clip_grad_norm_ before each step when ``max_grad_norm`` is set,
    none when it is None. The first step alone could not tell them apart (Adam's first step is scale-free)."""
    lr, weight_decay, total = 1e-2, 0.1, 4
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
    grads = []
    for norm in (8.0, 0.2, 3.0):
        g = {k: rng.normal(size=v.shape) for k, v in params.items()}
        total_norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
        grads.append({k: (x * norm / total_norm).astype(np.float32) for k, x in g.items()})

    optimizer, schedule = make_optimizer(lr, weight_decay, 0.0, total, max_grad_norm)
    ours = jax.tree.map(jnp.asarray, params)
    opt_state = optimizer.init(ours)
    for g in grads:
        with jax.numpy_dtype_promotion(
            "standard"
        ):  # as in train_step: optax computes b1 ** count (float ** int)
            updates, opt_state = optimizer.update(jax.tree.map(jnp.asarray, g), opt_state, ours)
        ours = optax.apply_updates(ours, updates)

    w, b = (torch.nn.Parameter(torch.from_numpy(params[k].copy())) for k in ("w", "b"))
    reference = torch.optim.AdamW(
        [{"params": [w], "weight_decay": weight_decay}, {"params": [b], "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    for step, g in enumerate(grads):
        w.grad, b.grad = torch.from_numpy(g["w"].copy()), torch.from_numpy(g["b"].copy())
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([w, b], max_grad_norm)
        for group in reference.param_groups:
            group["lr"] = float(schedule(step))
        reference.step()
    np.testing.assert_allclose(np.asarray(ours["w"]), w.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours["b"]), b.detach().numpy(), rtol=1e-5, atol=1e-6)
