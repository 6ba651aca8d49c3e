"""Accuracy by sentence length of distillation runs' students on SST-2 dev and test, by arm (grouped or random).

    python experiments/accuracy_by_length.py runs/gradlog/seed4_grouped runs/gradlog/seed4_random

Where does a student trained on length-grouped batches lose against one trained on random batches? For each run
folder (written by ``distill_sst2.py``), evaluates its ``best/`` and final ``student/`` models on dev and test,
keeping the per-example predictions in the run folder (``{,final_}predictions_<split>.jsonl``; reused when
present), and splits the accuracy by the sentence's length in tokens ([CLS] and [SEP] included; the classes of
``cosine_weights.py``). Prints one row per run, model and split, then the mean per arm (``group_by_length`` of
the run's config), and ends with one JSON line.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from cosine_weights import CLASSES, length_class
from distilbert_eqx.data import load_text_split, load_tokenizer, tokenize_split
from distilbert_eqx.experiment import evaluate_checkpoint

MODELS = {"best": ("best", ""), "final": ("student", "final_")}
SPLITS = ("dev", "test")


def accuracy_by_class(correct: np.ndarray, lengths: np.ndarray) -> dict:
    """Accuracy (None for an empty class) and example count per length class, and overall."""
    classes = length_class(lengths)
    counts = np.bincount(classes, minlength=len(CLASSES))
    hits = np.bincount(classes, weights=correct.astype(float), minlength=len(CLASSES))
    return {
        "accuracy": [float(h / n) if n else None for h, n in zip(hits, counts)],
        "counts": counts.tolist(),
        "overall": float(correct.mean()),
    }


def run_predictions(run: Path, kind: str, split: str, data_dir: str, max_length: int) -> np.ndarray:
    """Whether each example of ``split`` (dataset order) is right, for the run's ``kind`` model."""
    folder, prefix = MODELS[kind]
    path = run / f"{prefix}predictions_{split}.jsonl"
    if not path.is_file():
        partial = path.with_suffix(".partial")
        evaluate_checkpoint(str(run / folder), data_dir=data_dir, split=split, max_length=max_length,
                            predictions_out=str(partial))
        partial.replace(path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return np.array([r["prediction"] == r["label"] for r in rows])


def read_run(run: Path) -> tuple[dict, str]:
    """The run folder's saved config and its arm, ``"grouped"`` or ``"random"`` (its ``group_by_length``)."""
    if not (run / "config.json").is_file():
        raise SystemExit(f"{run} has no config.json; expected the output_dir of a distill_sst2.py run")
    config = json.loads((run / "config.json").read_text())
    return config, "grouped" if config["group_by_length"] else "random"


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The run folders, ``--splits`` and ``--data-dir``: the arguments of the scripts that read runs' predictions."""
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (output_dir of distill_sst2.py)")
    parser.add_argument("--splits", nargs="+", default=SPLITS, choices=SPLITS,
                        help="splits to evaluate (default %(default)s)")
    parser.add_argument("--data-dir", default=None,
                        help="folder of GLUE TSV files (default: the data_dir of the first run's config)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    configs, arms = zip(*map(read_run, args.runs))
    data_dir = args.data_dir or configs[0]["data_dir"]
    max_length = configs[0]["max_length"]
    # Every run's tokenizer is the teacher's; the first run's gives the lengths.
    tokenizer = load_tokenizer(str(args.runs[0] / "best"), max_length)
    lengths = {s: tokenize_split(load_text_split(s, data_dir=data_dir), tokenizer).lengths for s in args.splits}

    rows = []
    for run, config, arm in zip(args.runs, configs, arms):
        for kind in MODELS:
            for split in args.splits:
                correct = run_predictions(run, kind, split, data_dir, max_length)
                rows.append({"run": str(run), "arm": arm, "seed": config["seed"], "model": kind, "split": split,
                             **accuracy_by_class(correct, lengths[split])})
    means = []
    for arm in ("grouped", "random"):
        for kind in MODELS:
            for split in args.splits:
                mine = [r for r in rows if (r["arm"], r["model"], r["split"]) == (arm, kind, split)]
                if mine:
                    # A class empty in one run is empty in all (same split, same tokenizer).
                    per_class = zip(*(r["accuracy"] for r in mine))
                    by_class = [None if a[0] is None else float(np.mean(a)) for a in per_class]
                    means.append({"arm": arm, "model": kind, "split": split, "runs": len(mine),
                                  "accuracy": by_class, "overall": float(np.mean([r["overall"] for r in mine]))})

    counts = {s: np.bincount(length_class(lengths[s]), minlength=len(CLASSES)).tolist() for s in args.splits}
    print("Accuracy (%) by sentence length in tokens; examples per class: "
          + "; ".join(f"{s} {counts[s]}" for s in args.splits) + "\n")
    print("| run | model | split | " + " | ".join(CLASSES) + " | all |")
    print("|---|---|---|" + "---:|" * (len(CLASSES) + 1))
    for r in rows:
        cells = " | ".join("" if a is None else f"{100 * a:.2f}" for a in r["accuracy"])
        print(f"| {r['run']} | {r['model']} | {r['split']} | {cells} | {100 * r['overall']:.2f} |")
    print("\n| arm | runs | model | split | " + " | ".join(CLASSES) + " | all |")
    print("|---|---:|---|---|" + "---:|" * (len(CLASSES) + 1))
    for m in means:
        cells = " | ".join("" if a is None else f"{100 * a:.2f}" for a in m["accuracy"])
        print(f"| {m['arm']} | {m['runs']} | {m['model']} | {m['split']} | {cells} | {100 * m['overall']:.2f} |")
    result = {"classes": list(CLASSES), "counts": counts, "rows": rows, "means": means}
    print("\n" + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
