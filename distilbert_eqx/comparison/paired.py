"""Paired comparisons of training recipes ("arms") over seeds and sentences.

An arm's accuracy differs from its control's for two reasons besides the recipe: the seed (initialisation,
dropout, batch order) and which sentences the evaluation split happens to hold. More seeds shrink the first
error but not the second, so the paired statistic here counts both: `paired_difference` resamples seeds *and*
sentences. Its inputs are correctness matrices, ``correct[s, i] = 1`` where seed ``s``'s model got sentence
``i`` right and 0 where it got it wrong; row ``s`` of an arm and row ``s`` of its control come from the same
seed. Results are in points (percent), the unit of the results tables.
"""

from typing import Any

import numpy as np
from jaxtyping import Float64

# The sizes are not checked by the annotations ("_seeds"): the functions check them, so that a mismatch is
# reported as which seeds or sentences disagree, not as a generic shape mismatch from the type checker.
Correct = Float64[np.ndarray, "_seeds _sentences"]


def _check_nonempty(name: str, correct: Correct) -> None:
    seeds, sentences = correct.shape
    if seeds < 1 or sentences < 1:
        raise ValueError(
            f"{name} has shape {correct.shape}; expected (seeds, sentences) with at least one seed (row) and one "
            "sentence (column)"
        )


def paired_difference(arm: Correct, control: Correct, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The mean of ``arm - control`` with its uncertainty over seeds and over sentences.

    The standard error over seeds (the paired t's) treats the sentences as fixed; the one over sentences treats
    the seeds as fixed. The bootstrap draws seeds and sentences with replacement at once, so its interval counts
    both errors: the question is whether the arm is better on SST-2 sentences in general, not on these ones.

    **Arguments:**

    - `arm`: ``(seeds, sentences)``, 1 where the arm's model of seed ``s`` got sentence ``i`` right, else 0.
    - `control`: the same for the control, row ``s`` from the same seed as the arm's row ``s``.
    - `resamples`: how many bootstrap samples.
    - `seed`: the bootstrap's random seed, so that a summary is reproducible.

    **Returns:**

    A dict of ``seeds`` and ``sentences`` (the counts), ``difference`` (the mean in points), ``se_seeds`` (the
    standard error of the per-seed accuracy differences; None for one seed), ``se_sentences`` (of the
    per-sentence differences averaged over the seeds; None for one sentence) and ``interval_95`` (the 2.5 and
    97.5 percentiles of the bootstrap), all in points.
    """
    _check_nonempty("arm", arm)
    _check_nonempty("control", control)
    if arm.shape != control.shape:
        raise ValueError(
            f"arm has {arm.shape[0]} seeds x {arm.shape[1]} sentences but control has {control.shape[0]} x "
            f"{control.shape[1]}; pair the same seeds (rows) on the same sentences (columns)"
        )
    if resamples < 1:
        raise ValueError(f"resamples={resamples}; expected an int >= 1")
    diff = arm - control
    seeds, sentences = diff.shape
    per_seed, per_sentence = diff.mean(1), diff.mean(0)
    rng = np.random.default_rng(seed)
    # Resampling counts instead of indices: the mean over a drawn (seed, sentence) grid is then one product.
    seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=resamples)
    sentence_counts = rng.multinomial(sentences, np.full(sentences, 1 / sentences), size=resamples)
    boot = ((seed_counts @ diff) * sentence_counts).sum(1) / (seeds * sentences)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {
        "seeds": seeds,
        "sentences": sentences,
        "difference": 100 * float(diff.mean()),
        "se_seeds": 100 * float(per_seed.std(ddof=1) / np.sqrt(seeds)) if seeds > 1 else None,
        "se_sentences": 100 * float(per_sentence.std(ddof=1) / np.sqrt(sentences)) if sentences > 1 else None,
        "interval_95": [100 * float(low), 100 * float(high)],
    }


def pool_splits(*splits: Correct) -> Float64[np.ndarray, "seeds sentences"]:
    """The splits' sentences side by side (dev then test, say), for one larger sample of SST-2 sentences: the
    split a sentence landed in says nothing about the recipe. Row ``s`` of every split must be the same seed."""
    if not splits:
        raise ValueError("pool_splits needs at least one split")
    seeds = {split.shape[0] for split in splits}
    if len(seeds) > 1:
        shapes = ", ".join(f"{split.shape[0]} x {split.shape[1]}" for split in splits)
        raise ValueError(f"the splits have different numbers of seeds (rows): {shapes}; pool the same seeds")
    return np.concatenate(splits, axis=1)


def mean_accuracy(correct: Correct) -> float:
    """The runs' mean accuracy in points: every run is scored on the same sentences, so the mean of all entries
    is the mean of the per-run accuracies."""
    _check_nonempty("correct", correct)
    return 100 * float(correct.mean())
