"""Process wall time of a cold short run of the offline config (``sst2_minilm_offline.yaml``, 20 steps, live
teacher, validation at the end): what a researcher waits for before the first numbers, mostly compiling on a
small machine. Given several checkouts it alternates them over rounds (A, B, B, A, ...) and prints, per
checkout, the median and spread (min-max) of the wall time and, where the checkout reports it, of the seconds
spent compiling and the number of programs compiled.

    python benchmarks/cold_run.py .                                  # this checkout
    python benchmarks/cold_run.py /tmp/before . --rounds 3           # two checkouts, alternating
    python benchmarks/cold_run.py . --set teacher_model=runs/minilm_teacher_3ep/best \\
        tokenizer_name=runs/minilm_teacher_3ep/best
    python benchmarks/cold_run.py . --arm "" --arm "packing={rows: 4}"    # one checkout, two configs

Every checkout runs with this checkout as its working directory (the config's relative paths: ``../shared``,
the teacher under ``runs/``), its own package first on ``PYTHONPATH``, and a fresh output folder. ``--arm
OVERRIDE`` (repeatable) runs each checkout once per arm, with that one override added (``""``: none).
"""

import argparse
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


def cold_run(tree: Path, steps: int, overrides: list[str]) -> dict:
    """One run of ``tree``'s distill script in a fresh process; its wall time, and what it says it compiled."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(tree / "experiments" / "distill_sst2.py"), "--config", CONFIG, "--set"]
        command += [f"max_steps={steps}", f"output_dir={out}/run", "do_checkpoint=false", *overrides]
        env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{tree}: exit {done.returncode}\n{done.stderr[-3000:]}")
    found = COMPILED.search(done.stderr)
    result = {
        "wall_s": wall,
        "accuracy": json.loads(done.stdout.strip().splitlines()[-1])["final_val_accuracy"],
    }
    if found:
        result |= {"programs": int(found.group(1)), "compile_s": float(found.group(2))}
    return result


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", type=Path, nargs="+", help="checkouts to run (each with experiments/)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", help="more config overrides")
    parser.add_argument("--arm", action="append", dest="arms", help="one arm's extra override (repeatable)")
    args = parser.parse_args()
    arms = [(tree, arm) for tree in args.trees for arm in args.arms or [""]]
    results: dict[tuple[Path, str], list[dict]] = {arm: [] for arm in arms}
    for round_ in range(args.rounds):
        for tree, extra in arms if round_ % 2 == 0 else arms[::-1]:
            runs = results[(tree, extra)]
            runs.append(cold_run(tree, args.steps, [*args.overrides, *([extra] if extra else [])]))
            print(f"round {round_ + 1} {tree} {extra}: {runs[-1]}", file=sys.stderr, flush=True)
    print(
        f"| checkout | arm | wall time (s) | compiling (s) | programs | dev accuracy after {args.steps} steps |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for (tree, extra), runs in results.items():
        compile_s = spread([r["compile_s"] for r in runs]) if "compile_s" in runs[0] else "not reported"
        programs = runs[0].get("programs", "not reported")
        wall = spread([r["wall_s"] for r in runs])
        print(f"| {tree} | {extra or '-'} | {wall} | {compile_s} | {programs} | {runs[0]['accuracy']:.4f} |")


if __name__ == "__main__":
    main()
