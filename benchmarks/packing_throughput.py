"""Training throughput of the offline recipe with length buckets and with packed rows (``packing``), alternating
over rounds: what decides between the two (issue 33, item 2).

    python benchmarks/packing_throughput.py --rounds 3                      # buckets vs packed 4 x 128 x 32
    python benchmarks/packing_throughput.py --packed 4x128x32 8x72x16 --steps 600
    python benchmarks/packing_throughput.py --set teacher_model=runs/minilm_teacher_3ep/best \\
        tokenizer_name=runs/minilm_teacher_3ep/best

Every run is ``experiments/distill_sst2.py`` on ``sst2_minilm_offline.yaml`` in a fresh process, ``--steps``
steps, the teacher's logits and last states read from one disk cache (built first, untimed, by a one-step run),
no checkpoints, validation only at the end. Per arm it prints the median and spread (min-max) over rounds of:
- steady sentences/s: the median over the logged windows (every 50 steps) after ``--warm`` steps, so that a
  window with a late compilation (a bucket met for the first time) weighs like any other;
- the process wall time, the programs compiled and the seconds spent compiling;
- the epoch time those sentences/s give for SST-2 train (67,349 sentences);
and each arm's dev accuracy after the run (a check that both trained, not a comparison).
"""

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = "experiments/configs/sst2_minilm_offline.yaml"
COMPILED = re.compile(r"compiled (\d+) programs in ([\d.]+) s")
TRAIN_SENTENCES = 67_349
LOG_EVERY = 50


def arm_overrides(arm: str) -> list[str]:
    """``buckets`` or ``RxLxS`` (packed rows x length x slots) as config overrides."""
    if arm == "buckets":
        return []
    rows, length, slots = (int(x) for x in arm.split("x"))
    return [f"packing={{rows: {rows}, length: {length}, slots: {slots}}}"]


def run(arm: str, steps: int, warm: int, overrides: list[str], cache_dir: str) -> dict:
    """One run in a fresh process: its wall time, what it compiled, and its steady sentences/s."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(REPO / "experiments" / "distill_sst2.py"), "--config", CONFIG, "--set"]
        command += [
            f"max_steps={steps}",
            f"output_dir={out}/run",
            "do_checkpoint=false",
            f"log_every={LOG_EVERY}",
            f"log_val_every={10 * steps}",
            "teacher_cache=disk",
            f"teacher_cache_dir={cache_dir}",
            *overrides,
            *arm_overrides(arm),
        ]
        start = time.perf_counter()
        done = subprocess.run(
            command, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, check=False
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{arm}: exit {done.returncode}\n{done.stderr[-3000:]}")
        records = [json.loads(line) for line in Path(out, "run", "metrics.jsonl").read_text().splitlines()]
    rates = [r["examples_per_sec"] for r in records if "examples_per_sec" in r and r["step"] > warm]
    found = COMPILED.search(done.stderr)
    return {
        "wall_s": wall,
        "sentences_per_s": statistics.median(rates) if rates else None,
        "programs": int(found.group(1)) if found else None,
        "compile_s": float(found.group(2)) if found else None,
        "accuracy": json.loads(done.stdout.strip().splitlines()[-1])["final_val_accuracy"],
    }


def spread(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--packed", nargs="+", default=["4x128x32"], help="packed shapes, rows x length x slots"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--warm", type=int, default=100, help="steps before the windows that count")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", help="more config overrides")
    args = parser.parse_args()
    if args.steps < args.warm + 2 * LOG_EVERY:
        parser.error(f"--steps must leave at least two windows of {LOG_EVERY} steps after --warm")
    arms = ["buckets", *args.packed]
    for arm in args.packed:
        arm_overrides(arm)  # a malformed shape fails before anything runs
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as cache_dir:
        print("building the teacher cache (untimed)", file=sys.stderr, flush=True)
        run("buckets", 1, 0, args.overrides, cache_dir)
        for round_ in range(args.rounds):
            order = arms[round_ % len(arms) :] + arms[: round_ % len(arms)]
            for arm in order if round_ % 2 == 0 else order[::-1]:
                results[arm].append(run(arm, args.steps, args.warm, args.overrides, cache_dir))
                print(f"round {round_ + 1} {arm}: {results[arm][-1]}", file=sys.stderr, flush=True)
    print(
        f"{datetime.date.today()}, {args.rounds} rounds, {args.steps} steps a run, windows after step {args.warm}\n"
    )
    print("| arm | sentences/s | epoch (s) | wall (s) | compiling (s) | programs | dev accuracy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for arm, runs in results.items():
        rates = [r["sentences_per_s"] for r in runs]
        compile_s = [r["compile_s"] for r in runs if r["compile_s"] is not None]
        print(
            f"| {arm} | {spread(rates)} | {spread([TRAIN_SENTENCES / r for r in rates], 0)} | "
            f"{spread([r['wall_s'] for r in runs])} | {spread(compile_s) if compile_s else '-'} | "
            f"{runs[0]['programs']} | {runs[0]['accuracy']:.4f} |"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
