"""Compile time and steady step time of the distillation step in two checkouts (a change's before and after,
e.g. the layers unrolled against ``jax.lax.scan``): the original recipe's step (CE + KL + cosine, the student's
dropout off unless ``--dropout``), mini and base pairs, batch 32 at the given lengths.

Each measurement is its own child process (a fresh compilation cache), and the checkouts alternate within each
round (before, after, after, before, ...), so a drift of the machine falls on both. Per checkout, size and
shape it prints the median over rounds and the spread (min-max) of: the first call (trace + compile + one step)
and, from ``jax.monitoring``'s events, its tracing + lowering and XLA compile; the steady step (median of
``--steps`` steps); and the compiled program's instruction count.

    git worktree add /tmp/before <commit>
    python benchmarks/compile_and_step.py /tmp/before . --sizes mini base --seq-len 16 128 --rounds 3

``--before-xla-flags`` / ``--after-xla-flags`` add to ``XLA_FLAGS`` for that side's children, so one checkout
given twice compares two compiler settings:

    python benchmarks/compile_and_step.py . . --after-xla-flags=--xla_cpu_use_fusion_emitters=false
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SIZES = {  # teacher layers, hidden, heads, intermediate: benchmarks/_common.py's pairs
    "mini": (6, 384, 12, 1536),
    "base": (12, 768, 12, 3072),
    "tiny": (2, 64, 4, 128),  # for a smoke run of this script; its numbers mean nothing
}

CHILD = r"""
import json, statistics, sys, time
repo, layers, hidden, heads, intermediate, seq, steps, dropout = sys.argv[1], *map(int, sys.argv[2:9])
sys.path.insert(0, repo)
import equinox as eqx, jax, numpy as np
import distilbert_eqx
from distilbert_eqx.batch import Batch
from distilbert_eqx.distill import Objective
from distilbert_eqx.distill.terms import CE, KL, Cos
from distilbert_eqx.init import student_from_teacher
from distilbert_eqx.models import BertConfig, BertForSequenceClassification
from distilbert_eqx.train import init_state, make_optimizer, train_step
assert distilbert_eqx.__file__.startswith(repo), distilbert_eqx.__file__
config = BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                    intermediate_size=intermediate)
kt, ks, kk = jax.random.split(jax.random.key(0), 3)
teacher = eqx.nn.inference_mode(BertForSequenceClassification(config, key=kt))
student = student_from_teacher(teacher, key=ks)
student = student if dropout else eqx.nn.inference_mode(student)
optimizer, _ = make_optimizer(5e-5, 0.01, 0.06, 10_000)
objective = Objective([CE(1.0), KL(0.45, temperature=2.0), Cos(0.1)])
state = init_state(student, optimizer, key=kk)
rng = np.random.default_rng(0)
ids = rng.integers(1000, 30000, (32, seq)).astype(np.int32)
batch = Batch(ids, np.ones((32, seq), bool), np.zeros_like(ids), rng.integers(0, 2, 32).astype(np.int32),
              np.ones(32, np.float32))
jax.block_until_ready(state)
seconds = {}  # jax.monitoring's events of the first call: tracing, lowering to MLIR, XLA's compile
def listen(event, duration, **kwargs):
    seconds[event] = seconds.get(event, 0.0) + duration
jax.monitoring.register_event_duration_secs_listener(listen)
start = time.perf_counter()
state, metrics = train_step(teacher, state, batch, optimizer, objective)
jax.block_until_ready((state, metrics))
first = time.perf_counter() - start
jax.monitoring.unregister_event_duration_listener(listen)
phases = {name: seconds.get(f"/jax/core/compile/{event}", 0.0) for name, event in
          [("trace_s", "jaxpr_trace_duration"), ("lower_s", "jaxpr_to_mlir_module_duration"),
           ("compile_s", "backend_compile_duration")]}
times = []
for _ in range(steps):
    start = time.perf_counter()
    state, metrics = train_step(teacher, state, batch, optimizer, objective)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
text = train_step.lower(teacher, state, batch, optimizer, objective).compile().compiled.as_text()
instructions = sum(" = " in line for line in text.splitlines())
print("RESULT " + json.dumps({"first_s": first, **phases, "step_s": statistics.median(times),
                              "instructions": instructions}))
"""


def measure(repo: Path, size: str, seq: int, steps: int, dropout: bool, xla_flags: str) -> dict:
    argv = [str(repo.resolve()), *map(str, SIZES[size]), str(seq), str(steps), str(int(dropout))]
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip()}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], check=True, capture_output=True, text=True, env=env
    ).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])


def spread(values: list[float], scale: float, digits: int) -> str:
    values = [v * scale for v in values]
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--sizes", nargs="+", default=["mini", "base"], choices=sorted(SIZES))
    parser.add_argument("--seq-len", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--steps", type=int, default=10, help="steady steps timed per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dropout", action="store_true", help="the student's dropout on, as in a real run")
    parser.add_argument("--before-xla-flags", default="", help="added to XLA_FLAGS for the before side")
    parser.add_argument("--after-xla-flags", default="", help="added to XLA_FLAGS for the after side")
    args = parser.parse_args()
    trees = {"before": args.before, "after": args.after}
    flags = {"before": args.before_xla_flags, "after": args.after_xla_flags}
    print(
        "| size | batch x seq | checkout | first call (s) | of which trace + lower (s) | XLA compile (s) | "
        "steady step (ms) | instructions |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        for seq in args.seq_len:
            results: dict[str, list[dict]] = {name: [] for name in trees}
            for round_ in range(args.rounds):
                order = list(trees) if round_ % 2 == 0 else list(trees)[::-1]
                for name in order:
                    results[name].append(
                        measure(trees[name], size, seq, args.steps, args.dropout, flags[name])
                    )
                    print(f"{size} 32x{seq} round {round_ + 1} {name}: {results[name][-1]}", file=sys.stderr)
            for name, runs in results.items():
                first = spread([r["first_s"] for r in runs], 1, 2)
                trace = spread([r["trace_s"] + r["lower_s"] for r in runs], 1, 2)
                compile_ = spread([r["compile_s"] for r in runs], 1, 2)
                step = spread([r["step_s"] for r in runs], 1000, 1)
                print(
                    f"| {size} | 32 x {seq} | {name} | {first} | {trace} | {compile_} | {step} | "
                    f"{runs[0]['instructions']:,} |"
                )


if __name__ == "__main__":
    main()
