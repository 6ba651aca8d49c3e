"""How gradient clipping spreads over example lengths in training runs, e.g. grouped vs random batches.

    python experiments/clipping_by_length.py runs/gradlog/seed4_grouped runs/gradlog/seed4_random

Each run must have been trained with ``log_every: 1``, so that its ``metrics.jsonl`` holds every step's gradient
norm (before clipping). The train step multiplies a batch's gradient by ``min(1, max_grad_norm / norm)``
(``max_grad_norm`` from the run's config; no clipping when it is null). Without clipping every example weighs the
same in an epoch however it is batched; a step that is clipped weighs its examples less. With
``group_by_length`` a batch holds examples of about one length, so if the gradient norm depends on length,
clipping reweighs the length classes.

For each run, rebuilds its batches from its ``config.json`` (same seed, same order) and prints: the share of
steps clipped, by quarter of the run; and by example length class (tokens, [CLS] and [SEP] included), the share
of the examples, the share of the clip-weighted examples (sum over steps of scale x the batch's examples of the
class, normalised), and the median gradient norm of the batches whose examples are mostly of that class. Ends
with one JSON line.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from cosine_weights import CLASSES, length_class  # the same length classes
from distilbert_eqx.config import config_from_dict, resolved_length_buckets
from distilbert_eqx.experiment import _load_splits as load_splits
from distilbert_eqx.loop import _epoch_batches as epoch_batches

QUARTERS = 4


def read_grad_norms(run: Path) -> np.ndarray:
    """Gradient norm of steps 1..N from ``metrics.jsonl``; an error names the first missing step."""
    norms: dict[int, float] = {}
    with open(run / "metrics.jsonl") as f:
        for line in f:
            record = json.loads(line)
            if "grad_norm" in record:
                norms[int(record["step"])] = float(record["grad_norm"])  # a resumed run may repeat a step
    if not norms:
        raise ValueError(f"{run / 'metrics.jsonl'}: no training records with grad_norm")
    last = max(norms)
    missing = [s for s in range(1, last + 1) if s not in norms]
    if missing:
        raise ValueError(
            f"{run / 'metrics.jsonl'}: no record for step {missing[0]} ({len(missing)} of {last} steps missing); "
            "train with --set log_every=1"
        )
    return np.array([norms[s] for s in range(1, last + 1)])


def clipping_by_class(class_counts: np.ndarray, grad_norms: np.ndarray, max_norm: float) -> dict:
    """``class_counts`` (steps, classes): each step's real examples per length class; ``grad_norms`` (steps,)."""
    steps = len(grad_norms)
    scale = np.minimum(1.0, max_norm / grad_norms)
    clipped = grad_norms > max_norm
    quarters = np.array_split(np.arange(steps), QUARTERS)
    dominant = class_counts.argmax(axis=1)
    examples = class_counts.sum(axis=0)
    weighted = (scale[:, None] * class_counts).sum(axis=0)
    return {
        "steps": steps,
        "clipped": float(clipped.mean()),
        "clipped_by_quarter": [float(clipped[q].mean()) for q in quarters],
        "mean_scale": float(scale.mean()),
        "example_share": (examples / examples.sum()).tolist(),
        "clip_weighted_share": (weighted / weighted.sum()).tolist(),
        "median_norm_by_dominant_class": [
            float(np.median(grad_norms[dominant == c])) if (dominant == c).any() else None
            for c in range(len(CLASSES))
        ],
        "batches_by_dominant_class": np.bincount(dominant, minlength=len(CLASSES)).tolist(),
    }


def run_class_counts(run: Path, steps: int) -> tuple[str, np.ndarray, float]:
    """The run's name (from its config), its first ``steps`` batches' real examples per length class, and the
    norm it clipped to (inf for none)."""
    config = config_from_dict(json.loads((run / "config.json").read_text()), where=str(run / "config.json"))
    _, splits = load_splits(config, ("train",))
    batches = epoch_batches(config, splits["train"], resolved_length_buckets(config), 0)
    counts = np.zeros((steps, len(CLASSES)), np.int64)
    for step, batch in zip(range(steps), batches, strict=False):
        lengths = batch.attention_mask[batch.weights > 0].sum(axis=1)
        counts[step] = np.bincount(length_class(lengths), minlength=len(CLASSES))
    arm = "grouped" if config.group_by_length else "random"
    max_norm = np.inf if config.max_grad_norm is None else config.max_grad_norm
    return f"{run.name} ({arm}, seed {config.seed}, max_grad_norm {config.max_grad_norm})", counts, max_norm


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="output_dir of runs trained with log_every=1")
    args = parser.parse_args(argv)
    results = []
    for run in args.runs:
        norms = read_grad_norms(run)
        name, counts, max_norm = run_class_counts(run, len(norms))
        results.append({"run": name, **clipping_by_class(counts, norms, max_norm)})

    print("Gradient clipping by example length class (tokens)\n")
    print("| run | steps | clipped | clipped by quarter | mean scale |")
    print("|---|---:|---:|---|---:|")
    for r in results:
        quarters = " / ".join(f"{q:.2f}" for q in r["clipped_by_quarter"])
        print(f"| {r['run']} | {r['steps']} | {r['clipped']:.3f} | {quarters} | {r['mean_scale']:.3f} |")
    print("\n| run | share | " + " | ".join(CLASSES) + " |")
    print("|---|---|" + "---:|" * len(CLASSES))
    for r in results:
        for label, key in (("examples", "example_share"), ("clip-weighted examples", "clip_weighted_share")):
            print(f"| {r['run']} | {label} | " + " | ".join(f"{s:.3f}" for s in r[key]) + " |")
        cells = " | ".join(
            "" if m is None else f"{m:.2f} ({n})"
            for m, n in zip(r["median_norm_by_dominant_class"], r["batches_by_dominant_class"], strict=True)
        )
        print(f"| {r['run']} | median grad norm (batches) by the batch's main class | {cells} |")
    print("\n" + json.dumps({"classes": list(CLASSES), "runs": results}))
    return results


if __name__ == "__main__":
    main()
