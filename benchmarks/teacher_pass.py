"""The teacher-output cache's one pass over SST-2 train, in length-sorted bucketed batches (what a run does today)
and in packed rows, alternating over rounds: whether packing should batch the pass.

    python benchmarks/teacher_pass.py --rounds 3                        # buckets (batch 128) vs packed 16 x 72 x 16
    python benchmarks/teacher_pass.py --arms buckets:128 packed:32x72x16 packed:8x128x32 --examples 20000

Each (round, arm) runs in a fresh process: the pass's wall time includes its compilations, as a run's does. The
teacher is the 3-epoch MiniLM teacher (6 x 384; ``--weights`` for another Hugging Face folder), and the cache
keeps what ``epoch_time.py``'s variant f keeps (logits for KL, last hidden states for the cosine term). Prints,
per arm, the median and spread (min-max) over rounds of the pass's seconds, its compile seconds and programs,
and the computed tokens that were real; and the largest difference between the arms' cached values. Then one
JSON line with every number.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "runs" / "minilm_teacher_3ep" / "best"
TRAIN = REPO.parent / "shared" / "data" / "sst2" / "train.tsv"


def parse_arm(arm: str):
    """``buckets:BATCH`` or ``packed:RxLxS`` (rows x length x slots)."""
    kind, _, shape = arm.partition(":")
    numbers = shape.split("x") if shape else []
    if all(n.isdigit() and int(n) > 0 for n in numbers):
        if kind == "buckets" and len(numbers) <= 1:
            return {"batch_size": int(shape or 128), "packing": None}
        if kind == "packed" and len(numbers) == 3:
            return {"batch_size": 128, "packing": tuple(int(n) for n in numbers)}
    raise SystemExit(
        f"arm {arm!r}: expected buckets:BATCH (e.g. buckets:128) or packed:RxLxS (e.g. packed:16x72x16)"
    )


def child(args: argparse.Namespace) -> None:
    import numpy as np

    from distilbert_eqx import data
    from distilbert_eqx.compilations import Compilations
    from distilbert_eqx.distill import Objective
    from distilbert_eqx.distill.teacher_cache import teacher_cache
    from distilbert_eqx.distill.terms import CE, KL, Cos
    from distilbert_eqx.hf import from_pretrained
    from distilbert_eqx.host_memory import retain_freed_memory
    from distilbert_eqx.packing import PackingSettings

    retain_freed_memory()
    import equinox as eqx
    import jax

    settings = parse_arm(args.child)
    tokenizer = data.load_tokenizer(str(args.weights), 128)
    split = data.tokenize_split(data.read_glue_tsv(args.train, "train"), tokenizer)
    if args.examples:
        split = split.take(args.examples)
    teacher = eqx.nn.inference_mode(from_pretrained(args.weights, num_labels=2, key=jax.random.key(0)))
    objective = Objective([CE(0.5), KL(0.5, temperature=2.0), Cos(0.1)])
    packing = None if settings["packing"] is None else PackingSettings(*settings["packing"])
    start = time.perf_counter()
    with Compilations() as compiled:
        cache = teacher_cache(
            teacher,
            split,
            objective,
            batch_size=settings["batch_size"],
            buckets=data.default_length_buckets(128),
            packing=packing,
            log=lambda _: None,
        )
    seconds = time.perf_counter() - start
    if packing is None:
        order = np.sort(split.lengths)
        computed = sum(
            settings["batch_size"]
            * data.bucket_length(
                int(order[i : i + settings["batch_size"]].max()), data.default_length_buckets(128)
            )
            for i in range(0, len(order), settings["batch_size"])
        )
    else:
        from distilbert_eqx.packing import pack_rows

        rows = len(pack_rows(split.lengths, np.arange(len(split)), packing.length, packing.slots))
        computed = -(-rows // packing.rows) * packing.rows * packing.length
    if args.save:
        np.savez(args.save, **{name: np.asarray(array, np.float32) for name, array in cache.arrays.items()})
    print(
        json.dumps(
            {
                "seconds": seconds,
                "compile_s": compiled.compile_seconds,
                "programs": compiled.count,
                "real_tokens": float(split.lengths.sum() / computed),
                "examples": len(split),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arms", nargs="+", default=["buckets:128", "packed:16x72x16"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--examples", type=int, default=0, help="the first N train sentences (default: all)")
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--train", type=Path, default=TRAIN)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: expected at least 1")
    for arm in args.arms:
        parse_arm(arm)
    results: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.rounds):
            for i, arm in enumerate(args.arms):
                command = [sys.executable, __file__, "--child", arm, "--examples", str(args.examples)]
                command += ["--weights", str(args.weights), "--train", str(args.train)]
                if round_ == 0:
                    command += ["--save", f"{folder}/{i}.npz"]
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                results[arm].append(json.loads(out.strip().splitlines()[-1]))
                print(f"round {round_ + 1}, {arm}: {results[arm][-1]}", file=sys.stderr, flush=True)
        import numpy as np

        reference = np.load(f"{folder}/0.npz")
        differences = {}
        for i, arm in enumerate(args.arms[1:], start=1):
            other = np.load(f"{folder}/{i}.npz")
            differences[arm] = max(float(np.abs(reference[k] - other[k]).max()) for k in reference.files)

    def spread(values: list[float], fmt: str) -> str:
        return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"

    print(
        f"{datetime.date.today()}, {os.cpu_count()} cores, "
        f"{results[args.arms[0]][0]['examples']} sentences, {args.rounds} alternating rounds"
    )
    print("| arm | pass (s) | compiling (s) | programs | real tokens | max difference from the first arm |")
    print("|---|---:|---:|---:|---:|---:|")
    for arm, runs in results.items():
        print(
            f"| {arm} | {spread([r['seconds'] for r in runs], '.1f')} | "
            f"{spread([r['compile_s'] for r in runs], '.1f')} | {runs[0]['programs']} | "
            f"{runs[0]['real_tokens']:.1%} | {differences.get(arm, 0.0):.2e} |"
        )
    print(json.dumps({"rounds": args.rounds, "results": results, "max_difference": differences}))


if __name__ == "__main__":
    main()
