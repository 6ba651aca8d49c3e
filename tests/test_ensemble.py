"""Several teachers: their probabilities averaged at the KL term's temperature, against a PyTorch formula written
here; the averaged cache trains a student as the mean targets say; losses that keep more than logits refused."""

import numpy as np
import pytest
import torch

from distilbert_eqx.config import ConfigError
from distilbert_eqx.data import TokenizedSplit, indexed_train_batches
from distilbert_eqx.distill import Objective
from distilbert_eqx.distill.ensemble import average_soft_targets, logit_temperatures, mean_probability_logits
from distilbert_eqx.distill.teacher_cache import teacher_cache
from distilbert_eqx.distill.terms import CE, KL, Cos
from helpers import VOCAB, tiny_student, tiny_teacher

BUCKETS = (8, 16)


def _split(examples: int = 24) -> TokenizedSplit:
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 17, size=examples)
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)])
    token_ids = rng.integers(1, VOCAB, size=int(offsets[-1])).astype(np.int32)
    labels = rng.integers(0, 2, size=examples).astype(np.int32)
    return TokenizedSplit("train", labels, offsets, token_ids, np.zeros_like(token_ids), pad_id=0)


def _cache(teacher, split, objective):
    return teacher_cache(teacher, split, objective, batch_size=8, buckets=BUCKETS, log=lambda _: None)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_the_logits_soften_to_the_teachers_mean_probability(temperature):
    logits = np.random.default_rng(1).normal(0, 3, size=(3, 50, 5)).astype(np.float32)
    ours = mean_probability_logits(logits, temperature)
    reference = torch.softmax(torch.tensor(logits, dtype=torch.float64) / temperature, dim=-1).mean(dim=0)
    np.testing.assert_allclose(
        torch.softmax(torch.tensor(ours) / temperature, dim=-1).numpy(), reference.numpy(), rtol=0, atol=1e-12
    )
    # One teacher: its own logits, up to a constant per example (softmax cannot see it).
    alone = mean_probability_logits(logits[:1], temperature)
    shift = alone - logits[0]
    np.testing.assert_allclose(shift, shift[:, :1].repeat(5, axis=1), atol=1e-5)


def test_the_averaged_cache_holds_the_mean_of_two_teachers_and_trains_from_it():
    split = _split()
    first, second = tiny_teacher(seed=0), tiny_teacher(seed=3)
    student = tiny_student(first)
    objective = Objective([CE(1.0), KL(0.5, temperature=2.0)]).bind(student, first)
    caches = [_cache(t, split, objective) for t in (first, second)]
    temperatures = logit_temperatures(objective, caches[0].fields)
    assert temperatures == {"kl.logits": 2.0}
    averaged = average_soft_targets(caches, temperatures)
    assert averaged.key not in (caches[0].key, caches[1].key)
    mean = torch.softmax(
        torch.tensor(np.stack([c.arrays["kl.logits"] for c in caches]), dtype=torch.float64) / 2, -1
    )
    got = torch.softmax(torch.tensor(averaged.arrays["kl.logits"], dtype=torch.float64) / 2, -1)
    np.testing.assert_allclose(got.numpy(), mean.mean(0).numpy(), atol=1e-6)
    assert not np.allclose(caches[0].arrays["kl.logits"], caches[1].arrays["kl.logits"], atol=1e-3)
    stream = indexed_train_batches(split, 8, BUCKETS, seed=0, epoch=0)
    batch = next(averaged.attach(stream))
    assert batch.teacher["kl"]["logits"].shape == (8, 2)


def test_a_loss_keeping_more_than_logits_is_refused_naming_the_term():
    teacher = tiny_teacher()
    objective = Objective([KL(0.5, temperature=2.0), Cos(0.1)]).bind(tiny_student(teacher), teacher)
    with pytest.raises(ConfigError, match="the 'cos' term keeps the teacher's last_hidden_state"):
        logit_temperatures(objective, ["kl.logits", "cos.last_hidden_state"])


def test_caches_of_other_splits_are_not_averaged():
    teacher = tiny_teacher()
    objective = Objective([KL(0.5, temperature=2.0)]).bind(tiny_student(teacher), teacher)
    caches = [_cache(teacher, _split(24), objective), _cache(teacher, _split(16), objective)]
    with pytest.raises(ConfigError, match="other fields or examples"):
        average_soft_targets(caches, {"kl.logits": 2.0})
