"""Packing several sentences to a row: every sentence once, nearly every token real, and each sentence's outputs
(logits, every stack the loss terms read, the step's loss and gradients) those of the sentence alone."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import distilbert_eqx as de
from distilbert_eqx import experiment, packing, parallel
from distilbert_eqx.config import ConfigError, config_from_dict
from distilbert_eqx.data import DataError, TokenizedSplit, load_text_split, load_tokenizer, slice_for_process
from distilbert_eqx.distill import Objective
from distilbert_eqx.distill.teacher_cache import teacher_cache
from distilbert_eqx.distill.terms import CE, KL, AttentionKL, AttentionScores, Cos, Hidden, ValueRelation
from distilbert_eqx.train import forward, init_state, make_optimizer, train_step
from helpers import VOCAB, copy_tree, flat_weights, max_diff, minilm_dir, sst2_dir, tiny_student, tiny_teacher

MAX_LENGTH = 16  # the tokenizer's max_length: the one-to-a-row view's width
ROW_LENGTH = 32  # at most the tiny models' 32 positions
SLOTS = 6


def random_split(n: int, seed: int = 0, labelled: bool = False) -> TokenizedSplit:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, MAX_LENGTH + 1, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = rng.integers(1, VOCAB, size=int(offsets[-1])).astype(np.int32)
    types = (rng.random(int(offsets[-1])) < 0.3).astype(np.int32)
    return TokenizedSplit(
        "train",
        rng.integers(0, 2, size=n).astype(np.int32),
        offsets,
        tokens,
        types,
        pad_id=0,
        labelled=(rng.random(n) < 0.5) if labelled else None,
    )


def shape(rows: int) -> packing.PackingSettings:
    return packing.PackingSettings(rows, ROW_LENGTH, SLOTS)


def one_step(split: TokenizedSplit, rows: int = 3, seed: int = 0):
    steps = packing.packed_steps(split.lengths, shape(rows), seed=seed, epoch=0)
    return packing.make_packed_batch(split, steps[0], shape(rows), MAX_LENGTH)


def test_rows_hold_every_example_once_within_their_length_and_slots():
    lengths = np.random.default_rng(0).integers(1, 30, size=500)
    rows = packing.pack_rows(lengths, np.arange(500), 32, 4)
    flat = sorted(i for row in rows for i in row)
    assert flat == list(range(500))
    assert all(sum(lengths[row]) <= 32 and 1 <= len(row) <= 4 for row in rows)


def best_fit_decreasing(lengths: list[int], length: int) -> list[list[int]]:
    """The textbook algorithm, one scan of the open rows per item: the lengths packed into each row."""
    rows: list[list[int]] = []
    for need in sorted(lengths, reverse=True):
        fitting = [row for row in rows if length - sum(row) >= need]
        if fitting:
            min(fitting, key=lambda row: length - sum(row)).append(need)
        else:
            rows.append([need])
    return rows


def test_rows_are_those_of_textbook_best_fit_decreasing():
    lengths = np.random.default_rng(1).integers(1, 30, size=400)
    rows = packing.pack_rows(lengths, np.arange(400), 32, 400)
    # Rows with equal room are interchangeable, so which of them takes an item may differ; the rooms may not.
    ours = sorted(int(lengths[row].sum()) for row in rows)
    assert ours == sorted(sum(row) for row in best_fit_decreasing(lengths.tolist(), 32))


def test_steps_cover_the_epoch_once_and_depend_on_seed_and_epoch():
    lengths = random_split(300).lengths
    steps = packing.packed_steps(lengths, shape(4), seed=1, epoch=0)
    assert sorted(i for step in steps for row in step for i in row) == list(range(300))
    assert all(len(step) == 4 for step in steps[:-1]) and 1 <= len(steps[-1]) <= 4
    assert steps == packing.packed_steps(lengths, shape(4), seed=1, epoch=0)
    assert steps != packing.packed_steps(lengths, shape(4), seed=1, epoch=1)
    assert steps != packing.packed_steps(lengths, shape(4), seed=2, epoch=0)


def test_nearly_every_packed_token_is_real():
    # SST-2-like lengths: mostly short, a long tail.
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.gamma(2.5, 5.5, size=20_000).astype(np.int64) + 3, 3, 66)
    steps = packing.packed_steps(lengths, packing.PackingSettings(8, 128, 32), seed=0, epoch=0)
    real = lengths.sum()
    computed = len(steps) * 8 * 128
    assert real / computed >= 0.95


def test_an_example_longer_than_a_row_is_refused_by_index_and_length():
    with pytest.raises(DataError, match="example 2 has 40 tokens, more than the packed row length 32"):
        packing.pack_rows(np.array([5, 6, 40]), np.arange(3), 32, 4)


def test_the_batch_lists_each_slot_as_a_padded_sentence():
    split = random_split(40, labelled=True)
    steps = packing.packed_steps(split.lengths, shape(3), seed=0, epoch=0)
    batch = packing.make_packed_batch(split, steps[0], shape(3), MAX_LENGTH)
    assert batch.input_ids.shape == (3 * SLOTS, MAX_LENGTH) and batch.packed.input_ids.shape == (
        3,
        ROW_LENGTH,
    )
    assert batch.model_rows == 3
    for r, row in enumerate(steps[0]):
        for s in range(SLOTS):
            sentence = r * SLOTS + s
            if s >= len(row):
                assert batch.weights[sentence] == 0 and batch.attention_mask[sentence].tolist() == [True] + [
                    False
                ] * (MAX_LENGTH - 1)
                continue
            i = row[s]
            tokens = split.token_ids[split.offsets[i] : split.offsets[i + 1]]
            n = len(tokens)
            assert batch.weights[sentence] == 1 and batch.labels[sentence] == split.labels[i]
            assert batch.labelled[sentence] == split.labelled[i]
            np.testing.assert_array_equal(batch.input_ids[sentence, :n], tokens)
            assert batch.attention_mask[sentence].sum() == n
            at = batch.packed.sentence_tokens[r, s, :n]
            np.testing.assert_array_equal(batch.packed.input_ids[r, at], tokens)
            np.testing.assert_array_equal(batch.packed.position_ids[r, at], np.arange(n))
            assert set(batch.packed.segment_ids[r, at]) == {s + 1}
    assert batch.weights.sum() == sum(len(row) for row in steps[0])


def models():
    teacher = tiny_teacher(max_position_embeddings=ROW_LENGTH)
    return {"bert": teacher, "distilbert": tiny_student(teacher)}


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_each_sentence_of_a_packed_row_is_computed_as_alone(model_type):
    model = models()[model_type]
    batch = one_step(random_split(60))
    flags = {"output_hidden_states": True, "output_attention_scores": True, "output_values": True}
    packed = forward(model, batch, key=None, **flags)
    alone = forward(model, batch._replace(packed=None), key=None, **flags)
    real = batch.weights > 0
    mask = batch.attention_mask[real]

    def compare(ours, reference, where):
        """The largest difference where ``where`` holds (elsewhere both are padding's, not meaningful)."""
        return max_diff(
            np.where(where, np.asarray(ours)[real], 0), np.where(where, np.asarray(reference)[real], 0)
        )

    assert max_diff(packed.logits[real], alone.logits[real]) < 1e-5
    tokens = mask[:, None, :, None]
    assert compare(packed.hidden_states, alone.hidden_states, tokens) < 1e-5
    assert compare(packed.values, alone.values, tokens) < 1e-5
    pairs = (mask[:, :, None] & mask[:, None, :])[:, None, None]
    assert compare(packed.attention_scores, alone.attention_scores, pairs) < 1e-5


def test_a_packed_step_is_the_step_on_the_same_sentences_unpacked():
    teacher = models()["bert"]
    student = tiny_student(teacher)
    terms = [CE(1.0), KL(0.5, temperature=2.0), Cos(0.1), Hidden(1.0), AttentionScores(1.0), AttentionKL(1.0)]
    objective = Objective([*terms, ValueRelation(1.0)])
    objective = objective.bind(student, teacher)
    optimizer, _ = make_optimizer(1e-3, 0.01, 0.1, 10)
    batch = one_step(random_split(60, labelled=True))

    def step(batch):
        state = init_state(copy_tree(student), optimizer, key=jax.random.key(0))
        state, metrics = train_step(teacher, state, batch, optimizer, objective)
        return metrics, state.student

    packed_metrics, packed_student = step(batch)
    alone_metrics, alone_student = step(batch._replace(packed=None))
    assert abs(float(packed_metrics.loss) - float(alone_metrics.loss)) < 1e-5
    for name in objective.weights:
        assert abs(float(packed_metrics.terms[name]) - float(alone_metrics.terms[name])) < 1e-5
    assert abs(float(packed_metrics.grad_norm) - float(alone_metrics.grad_norm)) < 1e-4
    updated = [x for x in jax.tree.leaves(eqx.filter(packed_student, eqx.is_inexact_array))]
    reference = [x for x in jax.tree.leaves(eqx.filter(alone_student, eqx.is_inexact_array))]
    assert max(max_diff(a, b) for a, b in zip(updated, reference)) < 1e-5


def test_dropout_on_packed_rows_is_fixed_by_the_key():
    teacher = models()["bert"]
    student = eqx.nn.inference_mode(tiny_student(teacher), value=False)
    batch = one_step(random_split(60))
    out = forward(student, batch, key=jax.random.key(3))
    real = batch.weights > 0
    assert out.logits.shape == (3 * SLOTS, 2) and bool(jnp.all(jnp.isfinite(out.logits)))
    assert max_diff(out.logits, forward(student, batch, key=jax.random.key(3)).logits) == 0.0
    assert max_diff(out.logits[real], forward(student, batch, key=jax.random.key(4)).logits[real]) > 1e-3


def test_every_epoch_has_the_same_number_of_steps_and_a_resumed_stream_continues_it():
    split = random_split(200)
    counts = {
        len(packing.packed_steps(split.lengths, shape(3), seed=s, epoch=e))
        for s in range(3)
        for e in range(3)
    }
    per_epoch = packing.steps_per_epoch(split.lengths, shape(3))
    assert counts == {per_epoch}
    stream = packing.indexed_packed_batches(split, shape(3), MAX_LENGTH, seed=4)
    whole = [next(stream) for _ in range(per_epoch + 3)]
    resumed = packing.indexed_packed_batches(split, shape(3), MAX_LENGTH, seed=4, start_step=per_epoch - 2)
    for (indices, batch), (want_indices, want) in zip(
        [next(resumed) for _ in range(5)], whole[per_epoch - 2 :]
    ):
        np.testing.assert_array_equal(indices, want_indices)
        np.testing.assert_array_equal(batch.packed.input_ids, want.packed.input_ids)
    # The indices name the rows of weight 1, in order.
    indices, batch = whole[0]
    real = np.flatnonzero(batch.weights > 0)
    np.testing.assert_array_equal(batch.labels[real], split.labels[indices])


@pytest.mark.slow
def test_sharded_packed_steps_equal_the_single_device_step_dropout_on():
    teacher = models()["bert"]
    student = eqx.nn.inference_mode(tiny_student(teacher), value=False)
    objective = Objective([CE(1.0), KL(0.5, temperature=2.0), Cos(0.1), Hidden(1.0)]).bind(student, teacher)
    sgd = optax.sgd(1.0)  # weights then differ by the summed gradient differences, element by element
    batches = [one_step(random_split(60, seed=s), rows=4) for s in range(2)]

    state = init_state(copy_tree(student), sgd, key=jax.random.key(5))
    single = []
    for batch in batches:
        state, metrics = train_step(teacher, state, batch, sgd, objective)
        single.append([float(metrics.loss), float(metrics.grad_norm)])
    single_weights = flat_weights(state.student)

    steps = parallel.sharded_steps(parallel.make_mesh(2, "cpu"), objective, sgd)
    state = steps.place_state(init_state(copy_tree(student), sgd, key=jax.random.key(5)))
    sharded = []
    for batch in batches:
        state, metrics = steps.train(steps.place_state(teacher), state, steps.place(batch))
        sharded.append([float(metrics.loss), float(metrics.grad_norm)])
    np.testing.assert_allclose(sharded, single, rtol=0, atol=1e-5)
    assert max_diff(flat_weights(state.student), single_weights) <= 1e-5


def test_evaluation_batches_list_the_split_in_order_in_one_shape():
    split = random_split(50)
    batches = list(packing.packed_eval_batches(split, shape(2), MAX_LENGTH))
    assert {b.packed.input_ids.shape for b in batches} == {(2, ROW_LENGTH)}
    labels = np.concatenate([b.labels[b.weights > 0] for b in batches])
    np.testing.assert_array_equal(labels, split.labels)
    first = np.concatenate([b.input_ids[b.weights > 0, 0] for b in batches])
    np.testing.assert_array_equal(first, split.token_ids[split.offsets[:-1]])
    rows = packing.rows_in_order(split.lengths, ROW_LENGTH, SLOTS)
    assert all(split.lengths[row].sum() <= ROW_LENGTH and len(row) <= SLOTS for row in rows)


def test_packed_batches_carry_the_cached_targets_of_their_own_sentences():
    teacher = models()["bert"]
    student = tiny_student(teacher)
    objective = Objective([KL(0.5, temperature=2.0), Cos(0.1), Hidden(1.0), AttentionScores(1.0)])
    objective = objective.bind(student, teacher)
    split = random_split(60)
    cache = teacher_cache(
        teacher, split, objective, batch_size=8, buckets=(8, MAX_LENGTH), log=lambda _: None
    )
    stream = packing.indexed_packed_batches(split, shape(3), MAX_LENGTH, seed=0)
    for _, batch in zip(range(3), cache.attach(stream)):
        live = objective.teacher_targets(forward(teacher, batch, key=None, **objective.outputs()))
        real = batch.weights > 0
        mask = batch.attention_mask[real]
        for term, kept in live.items():
            for name, value in kept.items():
                cached, value = batch.teacher[term][name][real], np.asarray(value)[real]
                if name == "logits":
                    assert max_diff(cached, value) < 1e-5, (term, name)
                    continue
                where = mask[:, None, :, None] if name == "hidden_states" else mask[:, :, None]
                if name == "attention_scores":
                    where = (mask[:, :, None] & mask[:, None, :])[:, None, None]
                assert max_diff(np.where(where, cached, 0), np.where(where, value, 0)) < 1e-5, (term, name)
                assert np.count_nonzero(batch.teacher[term][name][~real]) == 0


def test_an_unset_row_length_is_the_longest_example_rounded_up_to_8():
    train, dev = random_split(30), random_split(10, seed=1)
    longest = max(train.lengths.max(), dev.lengths.max())
    config = config_from_dict({"packing": {}, "max_length": MAX_LENGTH})
    shape = experiment.packing_shape(config, train, dev)
    assert shape.length == min(-(-longest // 8) * 8, MAX_LENGTH) and shape.length >= longest
    assert shape.rows == 8 and shape.slots == 16
    explicit = config_from_dict({"packing": {"length": 40}})
    assert experiment.packing_shape(explicit, train, dev).length == 40
    example = int(np.argmax(train.lengths))
    message = rf"packing length=8 is shorter than train example {example} \({train.lengths[example]} tokens\)"
    with pytest.raises(ConfigError, match=message):
        experiment.packing_shape(config_from_dict({"packing": {"length": 8}}), train, dev)
    assert experiment.packing_shape(config_from_dict({}), train, dev) is None


def test_each_process_takes_its_packed_rows_with_their_sentences():
    batch = one_step(random_split(80), rows=4)
    halves = [slice_for_process(batch, i, 2) for i in range(2)]
    for i, half in enumerate(halves):
        assert half.model_rows == 2 and len(half.labels) == 2 * SLOTS
        np.testing.assert_array_equal(half.packed.input_ids, batch.packed.input_ids[2 * i : 2 * i + 2])
        np.testing.assert_array_equal(half.labels, batch.labels[2 * i * SLOTS : (2 * i + 2) * SLOTS])
    with pytest.raises(ValueError, match="batch of 4 rows cannot be split evenly across num_processes=3"):
        slice_for_process(batch._replace(labels=batch.labels[:12], weights=batch.weights[:12]), 0, 3)


def test_sentence_batches_pack_in_order_for_evaluation_and_shuffled_for_training():
    tokenizer = load_tokenizer(str(minilm_dir()), 64)
    text = load_text_split("dev", data_dir=sst2_dir())
    sentences, labels = text.sentences[:50], text.labels[:50]
    shape = de.PackingSettings(rows=2, length=64, slots=8)
    ordered = de.sentence_batches(sentences, labels, tokenizer, 32, packing=shape)
    assert {b.packed.input_ids.shape for b in ordered} == {(2, 64)}
    np.testing.assert_array_equal(np.concatenate([b.labels[b.weights > 0] for b in ordered]), labels)
    shuffled = de.sentence_batches(sentences, labels, tokenizer, 32, seed=0, packing=shape)
    assert sum(int(b.weights.sum()) for b in shuffled) == 50
    assert not np.array_equal(np.concatenate([b.labels[b.weights > 0] for b in shuffled]), labels)
    with pytest.raises(ValueError, match="packing.length is None"):
        de.sentence_batches(sentences, labels, tokenizer, 32, packing=de.PackingSettings())
