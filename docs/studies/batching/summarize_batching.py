"""Table of ``compare_batching.sh``'s results: accuracy per seed and arm, means, and paired differences.

    python experiments/summarize_batching.py runs/batching
    python experiments/summarize_batching.py runs/batching --grouped-root runs/batching_cosnorm

Reads ``evaluate.py``'s outputs below ``seed<S>_grouped`` and ``seed<S>_random`` (the grouped runs from
``--grouped-root`` when given, to compare grouped runs of another setting with the same random runs):
``accuracy_{dev,test}.json`` for the ``best/`` checkpoint and ``final_accuracy_{dev,test}.json`` for the last step's ``student/``. ``best/``
is chosen by dev accuracy, so its dev numbers are biased upward (by more for the arm whose validation curve
swings more); the final model's are not, and test is never used for choosing. Seeds without all four files of
a kind are listed as incomplete and left out of that kind's table. Prints a Markdown table per kind, then one
JSON line. The mean of an arm pools its correct predictions over the seeds; the paired difference is grouped
minus random per seed, in points, with its mean and the paired t statistic (n - 1 degrees of freedom). That t
counts the seeds' noise only, not the sampling of the sentences dev and test hold: ``paired_by_sentence.py``
counts both.
Last, where both arms of a seed kept their ``metrics.jsonl``, the mean dev accuracy at each validation step
during training, per arm, and grouped minus random: where in the epoch the arms part.
"""

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

ARMS = ("grouped", "random")
SPLITS = ("dev", "test")
# Checkpoint kind -> prefix of its accuracy files (compare_batching.sh).
CHECKPOINTS = {"best": "", "final": "final_"}


def _runs(root: Path, grouped_root: Path | None) -> Iterator[tuple[str, str, Path]]:
    """``(seed, arm, folder)`` of every ``seed<S>_<arm>`` run folder; grouped runs from ``grouped_root`` if given."""
    for arm, folder in (("grouped", grouped_root or root), ("random", root)):
        for run in sorted(folder.glob(f"seed*_{arm}")):
            match = re.fullmatch(rf"seed(.+)_{arm}", run.name)
            if match is not None and run.is_dir():
                yield match[1], arm, run


def read_results(
    root: Path, prefix: str, grouped_root: Path | None = None
) -> tuple[dict[str, dict[tuple[str, str], dict]], list[str]]:
    """``{seed: {(arm, split): {"accuracy", "n"}}}`` for seeds with all of ``<prefix>accuracy_<split>.json``,
    and the names of the seeds with only some of them. The grouped runs come from ``grouped_root`` when given."""
    found: dict[str, dict[tuple[str, str], dict]] = {}
    for seed, arm, run in _runs(root, grouped_root):
        for split in SPLITS:
            path = run / f"{prefix}accuracy_{split}.json"
            if path.is_file():
                found.setdefault(seed, {})[(arm, split)] = json.loads(path.read_text())
    complete = {s: r for s, r in found.items() if len(r) == len(ARMS) * len(SPLITS)}
    incomplete = sorted(set(found) - set(complete))
    return dict(sorted(complete.items(), key=lambda kv: _seed_key(kv[0]))), incomplete


def read_val_curves(root: Path, grouped_root: Path | None = None) -> dict[str, dict[str, dict[int, float]]]:
    """``{seed: {arm: {step: dev accuracy}}}`` from each run's ``metrics.jsonl`` (the validation during training;
    a step logged twice, as after a resume, keeps its last record), for seeds with both arms' curves."""
    found: dict[str, dict[str, dict[int, float]]] = {}
    for seed, arm, run in _runs(root, grouped_root):
        metrics = run / "metrics.jsonl"
        if not metrics.is_file():
            continue
        records = (json.loads(line) for line in metrics.read_text().splitlines() if line.strip())
        curve = {r["step"]: r["val_accuracy"] for r in records if "val_accuracy" in r}
        if curve:
            found.setdefault(seed, {})[arm] = curve
    both = {s: c for s, c in found.items() if len(c) == len(ARMS)}
    return dict(sorted(both.items(), key=lambda kv: _seed_key(kv[0])))


def curve_summary(curves: dict[str, dict[str, dict[int, float]]]) -> dict:
    """Mean dev accuracy per arm, and mean ``grouped - random`` in points, at the validation steps every run has."""
    steps = sorted(set.intersection(*(set(c) for arms in curves.values() for c in arms.values())))
    means = {arm: [statistics.fmean(curves[s][arm][step] for s in curves) for step in steps] for arm in ARMS}
    return {
        "seeds": list(curves),
        "steps": steps,
        "mean_accuracy": means,
        "mean_difference": [100 * (g - r) for g, r in zip(means["grouped"], means["random"])],
    }


def _seed_key(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.isdigit() else (sys.maxsize, seed)


def paired_summary(grouped: list[float], random: list[float]) -> dict:
    """Mean, standard deviation and t statistic of the per-seed differences ``grouped - random`` (points)."""
    diffs = [100 * (g - r) for g, r in zip(grouped, random, strict=True)]
    summary = {"differences": diffs, "mean_difference": statistics.fmean(diffs)}
    if len(diffs) >= 2:
        sd = statistics.stdev(diffs)
        summary["sd"] = sd
        summary["t"] = summary["mean_difference"] / (sd / math.sqrt(len(diffs))) if sd > 0 else None
        summary["df"] = len(diffs) - 1
    return summary


def summarize(results: dict[str, dict[tuple[str, str], dict]]) -> dict:
    """Pooled accuracy per arm and split, and the paired differences per split."""
    out: dict = {"seeds": list(results)}
    for split in SPLITS:
        pooled = {}
        for arm in ARMS:
            rows = [results[s][(arm, split)] for s in results]
            correct = sum(round(r["accuracy"] * r["n"]) for r in rows)
            pooled[arm] = correct / sum(r["n"] for r in rows)
        out[split] = {
            "mean_accuracy": pooled,
            "paired": paired_summary(
                [results[s][("grouped", split)]["accuracy"] for s in results],
                [results[s][("random", split)]["accuracy"] for s in results],
            ),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "root", nargs="?", default="runs/batching", help="compare_batching.sh's output folder"
    )
    parser.add_argument(
        "--grouped-root", default=None,
        help="take the grouped runs (seed<S>_grouped) from this folder instead, e.g. runs of another setting",
    )
    args = parser.parse_args(argv)
    root = Path(args.root)
    grouped_root = None if args.grouped_root is None else Path(args.grouped_root)
    for folder in (root, grouped_root):
        if folder is not None and not folder.is_dir():
            raise SystemExit(f"{folder}: not a folder; expected compare_batching.sh's output (runs/batching)")
    summaries = {}
    for kind, prefix in CHECKPOINTS.items():
        results, incomplete = read_results(root, prefix, grouped_root)
        if incomplete:
            print(f"{kind}: incomplete seeds, left out: {', '.join(incomplete)}")
        if results:
            print(f"\n{kind} checkpoint ({prefix}accuracy_<split>.json)")
            summaries[kind] = print_summary(results)
    if not summaries:
        raise SystemExit(f"{root}: no seed with all of seed<S>_{{grouped,random}}/accuracy_{{dev,test}}.json")
    curves = read_val_curves(root, grouped_root)
    if curves:
        summaries["val_curve"] = print_curves(curves)
    print(json.dumps(summaries))
    return summaries


def print_summary(results: dict[str, dict[tuple[str, str], dict]]) -> dict:
    """Print one kind's table and paired differences; return ``summarize(results)``."""
    summary = summarize(results)
    print("| seed | grouped dev | random dev | grouped test | random test |")
    print("|---|---:|---:|---:|---:|")
    for seed, r in results.items():
        cells = [f"{100 * r[(arm, split)]['accuracy']:.2f}" for split in SPLITS for arm in ARMS]
        print(f"| {seed} | {' | '.join(cells)} |")
    means = [f"{100 * summary[split]['mean_accuracy'][arm]:.2f}" for split in SPLITS for arm in ARMS]
    print(f"| mean | {' | '.join(means)} |")
    for split in SPLITS:
        paired = summary[split]["paired"]
        line = f"{split}: grouped - random, per seed " + ", ".join(f"{d:+.2f}" for d in paired["differences"])
        line += f"; mean {paired['mean_difference']:+.2f} points"
        if paired.get("t") is not None:
            line += f", paired t = {paired['t']:.2f} ({paired['df']} df)"
        print(line)
    return summary


def print_curves(curves: dict[str, dict[str, dict[int, float]]]) -> dict:
    """Print the mean validation curves of both arms; return ``curve_summary(curves)``."""
    summary = curve_summary(curves)
    print(f"\ndev accuracy during training (metrics.jsonl), mean over seeds {', '.join(summary['seeds'])}")
    print("| step | " + " | ".join(str(step) for step in summary["steps"]) + " |")
    print("|---|" + "---:|" * len(summary["steps"]))
    for arm in ARMS:
        print(f"| {arm} | " + " | ".join(f"{100 * a:.2f}" for a in summary["mean_accuracy"][arm]) + " |")
    print("| grouped - random | " + " | ".join(f"{d:+.2f}" for d in summary["mean_difference"]) + " |")
    return summary


if __name__ == "__main__":
    main()
