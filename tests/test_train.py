"""The train step: frozen teacher, one trace per shape, equality with the same step in PyTorch, learning."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

import distilbert_eqx as de
from distilbert_eqx.data import Batch
from distilbert_eqx.init import student_from_teacher
from distilbert_eqx.train import (
    LossConfig,
    clip_by_global_norm,
    decay_mask,
    eval_step,
    init_state,
    make_optimizer,
    train_step,
)

LOSSES = LossConfig(temperature=2.0, alpha_ce=1.0, alpha_kl=0.45, alpha_cos=0.1)


def tiny_teacher(seed: int = 0, **overrides) -> de.BertForSequenceClassification:
    config = de.BertConfig(
        vocab_size=overrides.pop("vocab_size", 50), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=32, num_labels=2, **overrides,
    )
    return eqx.nn.inference_mode(de.BertForSequenceClassification(config, key=jax.random.key(seed)))


def random_batch(seed: int, batch: int = 8, seq: int = 12, vocab: int = 50, real_rows: int | None = None) -> Batch:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, seq + 1, size=batch)
    mask = np.arange(seq)[None, :] < lengths[:, None]
    ids = np.where(mask, rng.integers(1, vocab, size=(batch, seq)), 0).astype(np.int32)
    weights = np.ones(batch, np.float32)
    if real_rows is not None:
        weights[real_rows:] = 0.0
    labels = rng.integers(0, 2, size=batch).astype(np.int32)
    return Batch(ids, mask, np.zeros_like(ids), labels, weights)


def copy_tree(tree):
    return jax.tree.map(lambda x: jnp.array(x, copy=True) if eqx.is_array(x) else x, tree)


def test_teacher_is_frozen_and_outside_the_optimizer():
    teacher = tiny_teacher()
    before = copy_tree(teacher)
    student = eqx.nn.inference_mode(student_from_teacher(teacher, [0, 2], key=jax.random.key(1)))
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


def test_compiled_step_does_not_embed_the_teacher():
    """The teacher's weights are inputs of the program: a 40x bigger embedding table barely changes its size."""
    optimizer, _ = make_optimizer(1e-3, 0.01, 0.0, 10)
    sizes = []
    for vocab in (50, 2000):
        teacher = tiny_teacher(vocab_size=vocab)
        student = student_from_teacher(teacher, [0, 2], key=jax.random.key(1))
        state = init_state(eqx.nn.inference_mode(student), optimizer, key=jax.random.key(2))
        lowered = train_step.lower(teacher, state, random_batch(0, vocab=vocab), optimizer, LOSSES)
        sizes.append(len(lowered.as_text()))
    # 1950 extra rows x 32 floats in teacher and student would add >100 kB of constants if they were baked in.
    assert abs(sizes[1] - sizes[0]) < 2000, sizes


def test_one_trace_per_batch_shape():
    teacher = tiny_teacher()
    student = eqx.nn.inference_mode(student_from_teacher(teacher, [0, 2], key=jax.random.key(1)))
    optimizer, _ = make_optimizer(1e-3, 0.01, 0.0, 10)
    state = init_state(student, optimizer, key=jax.random.key(2))
    before = eqx.debug.get_num_traces(train_step)
    for step, seq in enumerate([8, 16, 8, 16, 8]):
        state, _ = train_step(teacher, state, random_batch(step, seq=seq), optimizer, LOSSES)
    assert eqx.debug.get_num_traces(train_step) - before == 2


def test_weight_decay_only_on_matrices():
    student = student_from_teacher(tiny_teacher(), [0, 2], key=jax.random.key(1))
    mask = decay_mask(eqx.filter(student, eqx.is_inexact_array))
    assert mask.layers[0].attention.query.weight and mask.embeddings.word.weight
    assert not mask.layers[0].attention.query.bias and not mask.layers[0].output_norm.weight
    assert not mask.embeddings.norm.bias


def test_dropout_key_advances_and_bfloat16_keeps_float32_master_weights():
    teacher = tiny_teacher()
    student = student_from_teacher(teacher, [0, 2], key=jax.random.key(1), compute_dtype="bfloat16")
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
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(eqx.filter(state.student, eqx.is_inexact_array)))


def test_step_equals_pytorch(tmp_path):
    """Loss and updated student weights equal the same AdamW step in PyTorch (same weights and batch, no dropout)."""
    hf_teacher, hf_student = _hf_pair()
    hf_teacher.save_pretrained(tmp_path / "teacher")
    hf_student.save_pretrained(tmp_path / "student")
    teacher = eqx.nn.inference_mode(de.from_pretrained(tmp_path / "teacher"))
    student = eqx.nn.inference_mode(de.from_pretrained(tmp_path / "student"))
    lr, wd = 1e-4, 0.01
    optimizer, _ = make_optimizer(lr, wd, 0.0, 100)
    state = init_state(student, optimizer, key=jax.random.key(0))
    batch = random_batch(3, batch=6, vocab=99, real_rows=5)
    state, metrics = train_step(teacher, state, batch, optimizer, LOSSES)

    t = {k: torch.from_numpy(np.asarray(v).astype(np.int64)) for k, v in batch._asdict().items() if k != "weights"}
    real = torch.from_numpy(batch.weights > 0)
    with torch.no_grad():
        t_out = hf_teacher(input_ids=t["input_ids"], attention_mask=t["attention_mask"], output_hidden_states=True)
    s_out = hf_student(input_ids=t["input_ids"], attention_mask=t["attention_mask"], output_hidden_states=True)
    T = LOSSES.temperature
    ce = torch.nn.CrossEntropyLoss()(s_out.logits[real], t["labels"][real])
    kl = torch.nn.KLDivLoss(reduction="batchmean")(
        torch.log_softmax(s_out.logits[real] / T, -1), torch.softmax(t_out.logits[real] / T, -1)
    ) * T**2
    tokens = t["attention_mask"].bool() & real[:, None]
    s_h, t_h = s_out.hidden_states[-1][tokens], t_out.hidden_states[-1][tokens]
    cos = torch.nn.CosineEmbeddingLoss()(s_h, t_h, torch.ones(len(s_h)))
    loss = LOSSES.alpha_ce * ce + LOSSES.alpha_kl * kl + LOSSES.alpha_cos * cos
    no_decay = [p for n, p in hf_student.named_parameters() if p.ndim < 2]
    decay = [p for n, p in hf_student.named_parameters() if p.ndim >= 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, eps=1e-8
    )
    loss.backward()
    torch.nn.utils.clip_grad_norm_(hf_student.parameters(), 1.0)
    opt.step()

    assert abs(float(metrics.loss) - loss.item()) <= 1e-5
    hf_student.save_pretrained(tmp_path / "updated")
    expected = de.from_pretrained(tmp_path / "updated")
    for a, b in zip(jax.tree.leaves(eqx.filter(state.student, eqx.is_array)), jax.tree.leaves(eqx.filter(expected, eqx.is_array))):
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-5


def _hf_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    teacher = transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=32, attn_implementation="eager", hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    ).eval()
    student = transformers.DistilBertForSequenceClassification(
        transformers.DistilBertConfig(
            vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=48, max_position_embeddings=32,
            attn_implementation="eager", dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0,
        )
    ).train()
    return teacher, student


def test_distillation_learns_the_teacher():
    """On a synthetic task labelled by the teacher, the loss falls and the student comes to agree with it."""
    teacher = tiny_teacher(seed=5)
    student = eqx.nn.inference_mode(student_from_teacher(teacher, [0, 2], key=jax.random.key(1)))
    optimizer, _ = make_optimizer(3e-3, 0.0, 0.0, 60)
    state = init_state(student, optimizer, key=jax.random.key(2))
    batches = []
    for i in range(4):
        b = random_batch(100 + i, batch=16)
        labels = np.asarray(jnp.argmax(jax.vmap(teacher)(b.input_ids, b.attention_mask, b.token_type_ids).logits, -1))
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
        with jax.numpy_dtype_promotion("standard"):  # as in train_step: optax computes b1 ** count (float ** int)
            updates, opt_state = optimizer.update(jax.tree.map(jnp.asarray, g), opt_state, ours)
        ours = optax.apply_updates(ours, updates)

    w, b = (torch.nn.Parameter(torch.from_numpy(params[k].copy())) for k in ("w", "b"))
    reference = torch.optim.AdamW(
        [{"params": [w], "weight_decay": weight_decay}, {"params": [b], "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.999), eps=1e-8,
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
