"""What the matmuls of one of our train steps cost alone, in XLA:CPU and in PyTorch, beside the whole steps.

The step is ``step_throughput.py``'s (random models of ``--size``, ``--batch-size`` x ``--seq-len``, fp32,
every token real). Its compiled program is read (``.lower().compile()``, as ``profile_step.py`` does) and every
dot instruction is listed with its operands' shapes, their physical layouts (XLA's layout assignment may have
transposed them) and its dimension numbers; identical problems are counted. Each problem is then timed alone:

  XLA      ``jax.jit`` of one ``lax.dot_general`` on arrays laid out as the step lays them out, so that XLA:CPU
           picks its kernel (YNNPACK by default) as it does inside the step
  PyTorch  the same product as ``torch.mm`` / ``torch.bmm`` on contiguous ``(batch, m, k) x (batch, k, n)``
           operands, the best case for its library

Each problem runs in turns until ``--min-time`` seconds have passed (at least ``--repeats`` times, after one
untimed run); its median counts. An XLA time includes the dispatch of one jitted call (tens of microseconds,
which only the smallest dots notice). The sum over the step's dots, each problem's median times its count, is the
step's matmul floor in that library: what the step would take if nothing but its matmuls ran, one after
another, each on both cores. The same invocation then times the whole step in both frameworks
(``step_throughput.py``'s children, ``--steps`` after ``--warmup``), so that the floors and the steps come from
one hour of this machine, whose speed drifts. The parsed dots' FLOPs are checked against the analytical count
(``_common.step_matmul_flops``).

Why: to say whether a target for the whole step is reachable with XLA:CPU's kernels at all. If XLA's floor
alone is above the target step time, no change to the model code can meet the target (short of doing fewer
FLOPs); whatever the floor leaves between itself and the step is what fusion, layout and scheduling could win.

    python benchmarks/matmul_floor.py                      # mini, 32 x 128
    python benchmarks/matmul_floor.py --size base --steps 5 --warmup 1
    python benchmarks/matmul_floor.py --quick              # smoke run of the script: tiny model

Prints a markdown report and one JSON line; progress goes to stderr.
"""

import argparse
import collections
import json
import math
import os
import re
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from _common import (
    SIZES,
    OursDistiller,
    emit_result,
    fill_defaults,
    log,
    run_child,
    step_matmul_flops,
    synthetic_batch,
)
from profile_step import parse_hlo

STEP_SCRIPT = Path(__file__).resolve().parent / "step_throughput.py"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=tuple(SIZES), help="model pair (default mini)")
    parser.add_argument("--batch-size", type=int, help="default 32")
    parser.add_argument("--seq-len", type=int, help="default 128")
    parser.add_argument("--repeats", type=int, help="timed runs of each problem at least (default 5)")
    parser.add_argument(
        "--min-time", type=float, help="seconds of timed runs per problem at least (default 0.5)"
    )
    parser.add_argument("--steps", type=int, help="timed whole steps per framework (default 10)")
    parser.add_argument("--warmup", type=int, help="untimed whole steps first (default 2)")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=os.cpu_count(),
        help="torch.set_num_threads (default os.cpu_count(), here %(default)s)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run of the script; unless given: --size tiny --batch-size 4 --seq-len 16 "
        "--repeats 2 --min-time 0 --steps 2 --warmup 1",
    )
    parser.add_argument(
        "--child", choices=("xla", "torch"), help="internal: time the problems in one library"
    )
    parser.add_argument("--problems", help="internal: the JSON file of problems for --child torch")
    args = parser.parse_args(argv)
    fill_defaults(
        args,
        {
            "size": "mini",
            "batch_size": 32,
            "seq_len": 128,
            "repeats": 5,
            "min_time": 0.5,
            "steps": 10,
            "warmup": 2,
        },
        {
            "size": "tiny",
            "batch_size": 4,
            "seq_len": 16,
            "repeats": 2,
            "min_time": 0.0,
            "steps": 2,
            "warmup": 1,
        },
    )
    if args.repeats < 1 or args.steps < 1 or args.warmup < 1:
        parser.error("--repeats, --steps and --warmup must be at least 1")
    if args.min_time < 0:
        parser.error(f"--min-time must be at least 0, got {args.min_time}")
    return args


def physical(operand: dict) -> tuple[list[int], dict[int, int]]:
    """An operand's row-major (major to minor) shape, and where each of its logical dimensions went."""
    order = operand["layout"][::-1]
    return [operand["shape"][d] for d in order], {d: order.index(d) for d in order}


def dot_problems(hlo_text: str) -> list[dict]:
    """The step's dot instructions as distinct problems: physical operand shapes, dimension numbers over
    them, the canonical ``(batch, m, k) x (batch, k, n)`` sizes, FLOPs per call, and how many dots share it."""
    instructions, computations = parse_hlo(hlo_text)
    # A dot in a loop body runs more than once per step, and this script counts each dot once. (The step has
    # one loop, the PRNG's key split, with no dot in it.)
    looped, pending = set(), re.findall(r"body=%([\w.\-]+)", hlo_text)
    while pending:
        name = pending.pop()
        if name not in looped:
            looped.add(name)
            pending += [i["calls"] for i in computations.get(name, []) if i["calls"]]
    if any(i["opcode"] == "dot" for name in looped for i in computations.get(name, [])):
        raise SystemExit("the compiled step has a dot inside a loop; this script counts each dot once")
    problems: dict[tuple, dict] = {}
    for dot in (i for i in instructions.values() if i["opcode"] == "dot"):
        lhs, rhs = (instructions[name] for name in dot["operands"][:2])
        if lhs["dtype"] != "f32" or rhs["dtype"] != "f32":
            raise SystemExit(f"dot {dot['name']}: operands {lhs['dtype']} x {rhs['dtype']}, expected f32")
        (lhs_shape, lhs_to), (rhs_shape, rhs_to) = physical(lhs), physical(rhs)
        dims = dot["dot_dims"]
        numbers = [
            [lhs_to[d] for d in dims["lhs_contracting_dims"]],
            [rhs_to[d] for d in dims["rhs_contracting_dims"]],
            [lhs_to[d] for d in dims["lhs_batch_dims"]],
            [rhs_to[d] for d in dims["rhs_batch_dims"]],
        ]
        lhs_free = [d for d in range(len(lhs_shape)) if d not in numbers[0] + numbers[2]]
        rhs_free = [d for d in range(len(rhs_shape)) if d not in numbers[1] + numbers[3]]
        batch = math.prod(lhs_shape[d] for d in numbers[2])
        m, k = math.prod(lhs_shape[d] for d in lhs_free), math.prod(lhs_shape[d] for d in numbers[0])
        n = math.prod(rhs_shape[d] for d in rhs_free)
        key = (tuple(lhs_shape), tuple(rhs_shape), *map(tuple, numbers))
        problem = problems.setdefault(
            key,
            {
                "lhs": lhs_shape,
                "rhs": rhs_shape,
                "dimension_numbers": numbers,
                "batch": batch,
                "m": m,
                "k": k,
                "n": n,
                "flops": 2 * batch * m * k * n,
                "count": 0,
                "default_output_layout": True,
            },
        )
        problem["count"] += 1
        problem["default_output_layout"] &= dot["layout"] == list(range(len(dot["shape"])))[::-1]
    return sorted(problems.values(), key=lambda p: -p["flops"] * p["count"])


def median_time(run, repeats: int, min_time: float) -> float:
    """Median seconds of ``run()`` (which waits for its result) over at least ``repeats`` timed runs and
    ``min_time`` seconds, after one untimed run."""
    run()
    times: list[float] = []
    while len(times) < repeats or sum(times) < min_time:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def child_xla(args: argparse.Namespace) -> dict:
    """Build our step, read its dots, and time each problem with XLA."""
    import jax
    import numpy as np
    from jax import lax

    from distilbert_eqx.batch import Batch
    from distilbert_eqx.train import train_step

    distiller = OursDistiller(SIZES[args.size], 10_000)
    batch = Batch(**synthetic_batch(args.batch_size, args.seq_len))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Some donated buffers were not usable")
        lowered = train_step.lower(
            distiller.teacher, distiller.state, batch, distiller.optimizer, distiller.losses
        )
    problems = dot_problems(lowered.compile().compiled.as_text())
    rng = np.random.default_rng(0)
    for problem in problems:
        lhs_c, rhs_c, lhs_b, rhs_b = problem["dimension_numbers"]
        numbers = ((tuple(lhs_c), tuple(rhs_c)), (tuple(lhs_b), tuple(rhs_b)))
        product = jax.jit(lambda a, b, numbers=numbers: lax.dot_general(a, b, numbers))
        a = jax.device_put(rng.standard_normal(problem["lhs"], np.float32))
        b = jax.device_put(rng.standard_normal(problem["rhs"], np.float32))
        problem["xla_s"] = median_time(
            lambda f=product, a=a, b=b: f(a, b).block_until_ready(), args.repeats, args.min_time
        )
        log(f"[xla] {problem['count']} x {_describe(problem)}: {problem['xla_s'] * 1e3:.2f} ms")
    return {"problems": problems, "hlo_dot_count": sum(p["count"] for p in problems)}


def child_torch(args: argparse.Namespace) -> dict:
    """Time each problem of ``--problems`` as a contiguous ``mm`` / ``bmm`` in PyTorch."""
    import torch

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    problems = json.loads(Path(args.problems).read_text())
    for problem in problems:
        batch, m, k, n = problem["batch"], problem["m"], problem["k"], problem["n"]
        if problem["dimension_numbers"][2]:
            a, b = torch.randn(batch, m, k), torch.randn(batch, k, n)
            problem["torch_s"] = median_time(lambda a=a, b=b: torch.bmm(a, b), args.repeats, args.min_time)
        else:
            a, b = torch.randn(m, k), torch.randn(k, n)
            problem["torch_s"] = median_time(lambda a=a, b=b: torch.mm(a, b), args.repeats, args.min_time)
        log(f"[torch] {problem['count']} x {_describe(problem)}: {problem['torch_s'] * 1e3:.2f} ms")
    return {"problems": problems, "torch_threads": torch.get_num_threads()}


def _describe(problem: dict) -> str:
    prefix = f"{problem['batch']} x " if problem["dimension_numbers"][2] else ""
    return f"{prefix}({problem['m']} x {problem['k']}) @ ({problem['k']} x {problem['n']})"


def _kind(problem: dict) -> str:
    return "attention (batched)" if problem["dimension_numbers"][2] else "dense"


def step_times(args: argparse.Namespace, framework: str) -> dict:
    argv = [
        "--framework",
        framework,
        "--size",
        args.size,
        "--batch-size",
        str(args.batch_size),
        "--seq-len",
        str(args.seq_len),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--torch-threads",
        str(args.torch_threads),
    ]
    result = run_child(STEP_SCRIPT, argv)
    return {"median_s": statistics.median(result["step_times_s"]), "step_times_s": result["step_times_s"]}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child == "xla":
        emit_result(child_xla(args))
        return
    if args.child == "torch":
        emit_result(child_torch(args))
        return
    script = Path(__file__).resolve()
    common = [
        "--size",
        args.size,
        "--batch-size",
        str(args.batch_size),
        "--seq-len",
        str(args.seq_len),
        "--repeats",
        str(args.repeats),
        "--min-time",
        str(args.min_time),
        "--torch-threads",
        str(args.torch_threads),
    ]
    log(f"[parent] {args.size}, {args.batch_size} x {args.seq_len}: the step's dots in XLA")
    problems = run_child(script, [*common, "--child", "xla"])["problems"]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(problems, f)
    try:
        log("[parent] the same problems in PyTorch")
        problems = run_child(script, [*common, "--child", "torch", "--problems", f.name])["problems"]
    finally:
        os.unlink(f.name)
    log("[parent] whole steps: ours, then PyTorch")
    steps = {framework: step_times(args, framework) for framework in ("ours", "torch")}

    size = SIZES[args.size]
    flops = sum(p["flops"] * p["count"] for p in problems)
    expected = step_matmul_flops(size, args.batch_size, args.seq_len)
    floors = collections.defaultdict(float)
    for p in problems:
        for library in ("xla", "torch"):
            floors[library, _kind(p)] += p[f"{library}_s"] * p["count"]
            floors[library, "all"] += p[f"{library}_s"] * p["count"]
    result = {
        "benchmark": "matmul_floor",
        "size": args.size,
        "models": size.describe(),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "cpu_count": os.cpu_count(),
        "torch_threads": args.torch_threads,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "dot_flops": flops,
        "analytical_flops": expected,
        "floor_s": {f"{library}/{kind}": s for (library, kind), s in floors.items()},
        "step_median_s": {framework: s["median_s"] for framework, s in steps.items()},
        "problems": problems,
        "steps": steps,
    }
    print_report(args, result, problems, floors, steps)
    print(json.dumps(result))


def print_report(args, result, problems, floors, steps) -> None:
    print(
        f"## The matmuls of our train step, {result['models']}, {args.batch_size} x {args.seq_len}, fp32, "
        f"CPU ({os.cpu_count()} cores; PyTorch with {args.torch_threads} threads; "
        f"XLA_FLAGS={result['xla_flags'] or '(none)'})\n"
    )
    print(
        "| dots | kind | problem (physical operands) | GFLOP each | XLA ms | XLA GFLOP/s | PyTorch ms "
        "| PyTorch GFLOP/s |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for p in problems:
        gflop = p["flops"] / 1e9
        lhs_c, rhs_c = p["dimension_numbers"][:2]
        print(
            f"| {p['count']} | {_kind(p)} | {_describe(p)}: {p['lhs']} x {p['rhs']}, contracting {lhs_c} x {rhs_c} "
            f"| {gflop:.3g} "
            f"| {p['xla_s'] * 1e3:.2f} | {gflop / p['xla_s']:.0f} | {p['torch_s'] * 1e3:.2f} "
            f"| {gflop / p['torch_s']:.0f} |"
        )
    odd = sum(p["count"] for p in problems if not p["default_output_layout"])
    if odd:
        print(
            f"\n{odd} dot(s) write a transposed output layout in the step; timed here with the default one."
        )
    match = "equal to" if result["dot_flops"] == result["analytical_flops"] else "DIFFERENT FROM"
    print(
        f"\n{sum(p['count'] for p in problems)} dots, {result['dot_flops'] / 1e9:.2f} GFLOP per step, "
        f"{match} the analytical count ({result['analytical_flops'] / 1e9:.2f} GFLOP).\n"
    )
    print("| | XLA | PyTorch | XLA / PyTorch |")
    print("|---|---:|---:|---:|")
    for kind in ("dense", "attention (batched)", "all"):
        x, t = floors["xla", kind], floors["torch", kind]
        print(f"| matmul floor, {kind} | {x:.3f} s | {t:.3f} s | {x / t:.2f} |")
    ours, torch = steps["ours"]["median_s"], steps["torch"]["median_s"]
    print(f"| whole step (median of {args.steps}) | {ours:.3f} s | {torch:.3f} s | {ours / torch:.2f} |")
    print(
        f"| step minus its library's floor | {ours - floors['xla', 'all']:.3f} s "
        f"| {torch - floors['torch', 'all']:.3f} s | |"
    )
    print(
        f"\nOurs at 1.1x PyTorch's examples/s would be a {torch / 1.1:.3f} s step; XLA's matmuls alone take "
        f"{floors['xla', 'all']:.3f} s ({floors['xla', 'all'] / (torch / 1.1):.2f}x that).\n"
    )


if __name__ == "__main__":
    main()
