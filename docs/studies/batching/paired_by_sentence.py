"""Grouped minus random accuracy of paired runs, with the uncertainty of the seeds *and* of the sentences.

    python experiments/paired_by_sentence.py runs/batching/seed7_grouped runs/batching/seed7_random \
        runs/batching/seed8_grouped runs/batching/seed8_random

``summarize_batching.py``'s paired t statistic treats dev and test as fixed: it asks whether grouping changes
the accuracy *on these 872 (1,821) sentences*, and more seeds make that answer as sharp as we like. Whether it
changes the accuracy on SST-2 sentences in general also depends on which sentences the splits happen to hold,
an error more seeds do not shrink. For each model (``best/``, final ``student/``) and split this script takes
every run's per-sentence predictions (``accuracy_by_length.py``'s, evaluated and cached in the run folder when
missing), pairs the grouped and random runs of each seed (``group_by_length`` and ``seed`` of the run's
config), and reports the mean difference in points with three standard errors: over seeds (the paired t's),
over sentences (of each sentence's difference averaged over the seeds), and a 95% interval from a bootstrap
that resamples both seeds and sentences. ``dev+test`` pools the two splits' sentences. Ends with one JSON line.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from jaxtyping import Float64

from accuracy_by_length import MODELS, add_run_arguments, read_run, run_predictions

ARMS = ("grouped", "random")


def paired_difference(
    grouped: Float64[np.ndarray, "seeds sentences"],
    random: Float64[np.ndarray, "seeds sentences"],
    resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """Mean of ``grouped - random`` (1 = right, 0 = wrong; row s of both is seed s) in points, its standard
    error over seeds (of the per-seed accuracy differences) and over sentences (of the per-sentence differences
    averaged over seeds), and the 2.5 / 97.5 percentiles of a bootstrap drawing seeds and sentences with
    replacement."""
    diff = grouped - random
    seeds, sentences = diff.shape
    per_seed, per_sentence = diff.mean(1), diff.mean(0)
    rng = np.random.default_rng(seed)
    seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=resamples)
    sentence_counts = rng.multinomial(sentences, np.full(sentences, 1 / sentences), size=resamples)
    boot = ((seed_counts @ diff) * sentence_counts).sum(1) / (seeds * sentences)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {
        "seeds": seeds,
        "sentences": sentences,
        "difference": 100 * float(diff.mean()),
        "se_seeds": 100 * float(per_seed.std(ddof=1) / np.sqrt(seeds)) if seeds > 1 else None,
        "se_sentences": 100 * float(per_sentence.std(ddof=1) / np.sqrt(sentences)),
        "interval_95": [100 * float(low), 100 * float(high)],
    }


def pair_runs(runs: list[Path]) -> tuple[dict[int, dict[str, Path]], list[int], dict]:
    """``{seed: {arm: run}}`` for the seeds with both arms, the seeds with only one, and the first run's config;
    two runs of one seed and arm are an error (which one to pair would be a guess)."""
    by_seed: dict[int, dict[str, Path]] = {}
    configs = []
    for run in runs:
        config, arm = read_run(run)
        configs.append(config)
        mine = by_seed.setdefault(config["seed"], {})
        if arm in mine:
            raise SystemExit(f"two {arm} runs of seed {config['seed']}: {mine[arm]} and {run}; pass one")
        mine[arm] = run
    paired = {s: r for s, r in sorted(by_seed.items()) if len(r) == len(ARMS)}
    return paired, sorted(set(by_seed) - set(paired)), configs[0]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default %(default)s)")
    args = parser.parse_args(argv)
    paired, unpaired, first = pair_runs(args.runs)
    if not paired:
        parser.error("no seed has both a grouped and a random run among the given folders")
    data_dir = args.data_dir or first["data_dir"]

    rows = []
    for kind in MODELS:
        correct = {
            (arm, split): np.stack([
                run_predictions(runs[arm], kind, split, data_dir, first["max_length"]).astype(np.float64)
                for runs in paired.values()
            ])
            for arm in ARMS for split in args.splits
        }
        groups = [(split, [split]) for split in args.splits]
        if len(args.splits) > 1:
            groups.append(("+".join(args.splits), list(args.splits)))
        for name, splits in groups:
            grouped, random = (np.concatenate([correct[(arm, s)] for s in splits], axis=1) for arm in ARMS)
            rows.append({"model": kind, "split": name,
                         **paired_difference(grouped, random, resamples=args.resamples)})

    print(f"Grouped minus random, points; seeds {list(paired)}"
          + (f" (unpaired, left out: {unpaired})" if unpaired else "") + "\n")
    print("| model | split | sentences | difference | SE over seeds | SE over sentences | 95% interval |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        se_seeds = "" if r["se_seeds"] is None else f"{r['se_seeds']:.2f}"
        low, high = r["interval_95"]
        print(f"| {r['model']} | {r['split']} | {r['sentences']} | {r['difference']:+.2f} | {se_seeds} | "
              f"{r['se_sentences']:.2f} | {low:+.2f} to {high:+.2f} |")
    result = {"seeds": list(paired), "unpaired": unpaired, "rows": rows}
    print("\n" + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
