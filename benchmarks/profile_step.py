"""Where the time of one of our distillation train steps goes: a ``jax.profiler`` trace, summarised by op kind.

The step is ``step_throughput.py``'s (random models of ``--size``, ``--batch-size`` x ``--seq-len``, every token
real, fp32, dropout off). After ``--warmup`` steps, ``--steps`` steps run under ``jax.profiler.trace``. Every
XLA op the trace records is matched, by name, to its instruction in the compiled program (``.lower().compile()``
of the same step) and sorted into a kind:

  dense matmuls      dots with no batch dimension: the Q/K/V/output projections, feed-forward, their gradients
  attention matmuls  dots with batch dimensions (batch, heads): Q K^T and P V, forward and backward
  softmax and mask   other ops on (batch, heads, seq, seq) arrays
  GELU               ops whose source is the feed-forward activation (erf/erfc)
  LayerNorm          ops whose source is ``eqx.nn.LayerNorm``
  optimizer          ops outside the model's vmap: gradient clipping, AdamW, the parameter update
  other              layout copies and transposes, embedding gather/scatter, the losses, ...

For each kind: op time per step (summed over ops; XLA runs independent ops concurrently on the intra-op thread
pool, so the sum exceeds the wall time), the wall time during which at least one op of that kind ran, matmul
GFLOP, and GFLOP/s over that wall time (what the kind achieves with both threads; per-op rates understate it
when two ops share the threads). Then the ``--top`` slowest instructions with their shapes. Also: the step's
wall time, the part of it covered by at least one traced op (XLA:CPU's Eigen matmuls, used when YNNPACK is
off, are not traced), and the minor page faults and system CPU time per step: XLA:CPU allocates a fresh
temporary buffer on every execution, and the kernel zero-fills each of its pages on first touch.

    python benchmarks/profile_step.py                        # mini, 32 x 128
    python benchmarks/profile_step.py --size base --steps 2
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python benchmarks/profile_step.py   # Eigen matmuls

Prints a markdown table and one JSON line. The trace itself stays in ``--trace-dir`` for TensorBoard/Perfetto.
"""

import argparse
import collections
import gzip
import json
import math
import os
import re
import resource
import tempfile
import time
import warnings
from pathlib import Path

from _common import SIZES, OursDistiller, add_default_malloc_option, log, synthetic_batch

KINDS = ("dense matmuls", "attention matmuls", "softmax and mask", "GELU", "LayerNorm", "optimizer", "other")
# Trace events that are not XLA ops: the Python call stack ("$..."), executor and thread-pool bookkeeping.
_NOT_OPS = re.compile(
    r"^\$|Execute|Await|^end: |stop_trace|PjitFunction|Handle inputs|CreateOutputs|DevicePut|"
    r"np\.asarray"
)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\](\S*) ([\w\-]+)\((.*?)\)(.*)$")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=tuple(SIZES), default="mini")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default %(default)s)")
    parser.add_argument("--steps", type=int, default=3, help="traced steps (default %(default)s)")
    parser.add_argument(
        "--top", type=int, default=10, help="slowest instructions to list (default %(default)s)"
    )
    parser.add_argument("--trace-dir", help="where the trace goes (default: a temporary folder)")
    add_default_malloc_option(parser)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    if args.top < 0:
        parser.error(f"--top must be at least 0, got {args.top}")
    return args


def _dims(text: str, key: str) -> list[int]:
    match = re.search(key + r"=\{([\d,]*)\}", text)
    return [int(d) for d in match.group(1).split(",") if d] if match else []


def parse_hlo(text: str) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """Instructions by name and each computation's instructions. An instruction: ``name``, ``dtype``,
    ``shape``, ``layout`` (minor-to-major dimension order), ``opcode``, ``operands``, ``op_name``, ``calls``;
    a dot also ``dot_dims``, its lhs/rhs contracting and batch dimensions (``contracting`` and ``batch_dims``
    repeat the lhs contracting dimensions and the number of batch dimensions)."""
    instructions, computations, current = {}, {}, None
    for line in text.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.\-]+) \(", line)
        if header:
            current = computations.setdefault(header.group(1), [])
            continue
        match = _INSTRUCTION.match(line)
        if not match or current is None:
            continue
        name, dtype, dims, layout, opcode, operands, rest = match.groups()
        op_name = re.search(r'op_name="([^"]*)"', rest)
        calls = re.search(r"calls=%([\w.\-]+)", rest)
        shape = [int(d) for d in dims.split(",") if d]
        minor_to_major = re.match(r"\{([\d,]*)", layout)
        dot_dims = {
            key: _dims(rest, key)
            for key in ("lhs_contracting_dims", "rhs_contracting_dims", "lhs_batch_dims", "rhs_batch_dims")
        }
        info = {
            "name": name,
            "dtype": dtype,
            "shape": shape,
            "layout": (
                [int(d) for d in minor_to_major.group(1).split(",") if d]
                if minor_to_major
                else list(range(len(shape)))[::-1]
            ),
            "opcode": opcode,
            "operands": [o.strip().lstrip("%") for o in operands.split(",") if o.strip().startswith("%")],
            "op_name": op_name.group(1) if op_name else "",
            "calls": calls.group(1) if calls else None,
            "dot_dims": dot_dims,
            "contracting": dot_dims["lhs_contracting_dims"],
            "batch_dims": len(dot_dims["lhs_batch_dims"]),
        }
        instructions[name] = info
        current.append(info)
    return instructions, computations


def dots_of(op: dict, computations: dict) -> list[dict]:
    """The dot instructions an op runs: itself, or those inside the computation it calls (a fusion)."""
    if op["opcode"] == "dot":
        return [op]
    return [i for i in computations.get(op["calls"] or "", []) if i["opcode"] == "dot"]


def dot_flops(dot: dict, instructions: dict) -> int:
    lhs = instructions.get(dot["operands"][0]) if dot["operands"] else None
    if lhs is None:
        return 0
    k = math.prod(lhs["shape"][d] for d in dot["contracting"])
    return 2 * math.prod(dot["shape"]) * k


def classify(op: dict, instructions: dict, computations: dict, seq_len: int) -> tuple[str, int]:
    """The kind of one compiled op, and the matmul FLOPs it performs."""
    dots = dots_of(op, computations)
    if dots:
        flops = sum(dot_flops(d, instructions) for d in dots)
        return ("attention matmuls" if any(d["batch_dims"] for d in dots) else "dense matmuls"), flops
    source = op["op_name"]
    if op["calls"]:
        source += " " + " ".join(i["op_name"] for i in computations.get(op["calls"], []))
    shape = op["shape"]
    if len(shape) == 4 and shape[-1] == shape[-2] == seq_len:
        return "softmax and mask", 0
    if "erf" in source:
        return "GELU", 0
    if "LayerNorm" in source:
        return "LayerNorm", 0
    if "vmap" not in source:
        return "optimizer", 0
    return "other", 0


def instruction_summary(op: dict, instructions: dict, computations: dict) -> str:
    """One line for an instruction: output shape, its dots (operand shapes), the other ops fused into it."""
    parts = [f"{op['opcode']} -> {op['shape']}"]
    for dot in dots_of(op, computations):
        operands = [instructions.get(name, {}).get("shape", "?") for name in dot["operands"]]
        parts.append(f"dot {' x '.join(map(str, operands))}" + (" (batched)" if dot["batch_dims"] else ""))
    skip = {"parameter", "bitcast", "broadcast", "constant", "dot"}
    fused = sorted({i["opcode"] for i in computations.get(op["calls"] or "", []) if i["opcode"] not in skip})
    if fused:
        parts.append("with " + ", ".join(fused))
    return "; ".join(parts) + (f" [{op['op_name']}]" if op["op_name"] else "")


def covered(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of intervals."""
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def main(argv=None) -> None:
    args = parse_args(argv)
    import jax

    from distilbert_eqx.batch import Batch
    from distilbert_eqx.train import train_step

    distiller = OursDistiller(SIZES[args.size], 10_000, default_malloc=args.default_malloc)
    batch = Batch(**synthetic_batch(args.batch_size, args.seq_len))
    with warnings.catch_warnings():
        # Equinox silences this for its jitted calls but not for .lower(); the step itself donates as usual.
        warnings.filterwarnings("ignore", "Some donated buffers were not usable")
        lowered = train_step.lower(
            distiller.teacher, distiller.state, batch, distiller.optimizer, distiller.losses
        )
    # Equinox's Compiled wraps jax's; its HLO text names every op the trace names.
    instructions, computations = parse_hlo(lowered.compile().compiled.as_text())
    for _ in range(args.warmup):
        distiller.step(batch)

    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for _ in range(args.steps):
        distiller.step(batch)
    untraced_step_s = (time.perf_counter() - start) / args.steps
    after = resource.getrusage(resource.RUSAGE_SELF)
    faults = (after.ru_minflt - usage.ru_minflt) / args.steps
    system_s = (after.ru_stime - usage.ru_stime) / args.steps
    user_s = (after.ru_utime - usage.ru_utime) / args.steps

    trace_dir = Path(args.trace_dir or tempfile.mkdtemp(prefix="profile_step_"))
    with jax.profiler.trace(str(trace_dir)):
        for _ in range(args.steps):
            distiller.step(batch)
    trace_file = max(trace_dir.rglob("*.trace.json.gz"), key=os.path.getmtime)
    with gzip.open(trace_file) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    executions = sorted(
        (e for e in events if e["name"] == "ThunkExecutor::Execute (wait for completion)"),
        key=lambda e: e["ts"],
    )[-args.steps :]
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in executions]
    ops = [e for e in events if not _NOT_OPS.search(e["name"]) and any(a <= e["ts"] <= b for a, b in windows)]

    time_us, flops, count = collections.Counter(), collections.Counter(), collections.Counter()
    spans, by_instruction = collections.defaultdict(list), collections.Counter()
    unmatched = 0
    for event in ops:
        op = instructions.get(event["name"])
        if op is None:
            unmatched += event["dur"]
            kind, op_flops = "other", 0
        else:
            kind, op_flops = classify(op, instructions, computations, args.seq_len)
        time_us[kind] += event["dur"]
        spans[kind].append((event["ts"], event["ts"] + event["dur"]))
        by_instruction[event["name"]] += event["dur"]
        flops[kind] += op_flops
        count[kind] += 1
    wall_us = sum(b - a for a, b in windows) / args.steps
    covered_us = (
        sum(covered([(e["ts"], e["ts"] + e["dur"]) for e in ops if a <= e["ts"] <= b]) for a, b in windows)
        / args.steps
    )

    steps = args.steps
    rows = []
    for kind in KINDS:
        ms = time_us[kind] / 1e3 / steps
        wall_ms = covered(spans[kind]) / 1e3 / steps
        gflop = flops[kind] / 1e9 / steps
        rows.append(
            {
                "kind": kind,
                "op_ms_per_step": ms,
                "wall_ms_per_step": wall_ms,
                "ops_per_step": count[kind] / steps,
                "matmul_gflop": gflop,
                "gflop_per_s": gflop / (wall_ms / 1e3) if wall_ms and gflop else None,
            }
        )
    slowest = [
        {
            "instruction": name,
            "ms_per_step": us / 1e3 / steps,
            "text": instruction_summary(instructions[name], instructions, computations),
        }
        for name, us in by_instruction.most_common(args.top)
        if name in instructions
    ]
    result = {
        "benchmark": "profile_step",
        "size": args.size,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "steps": steps,
        "step_s_untraced": untraced_step_s,
        "step_s_traced_wall": wall_us / 1e6,
        "covered_by_traced_ops_s": covered_us / 1e6,
        "op_time_total_s": sum(time_us.values()) / 1e6 / steps,
        "unmatched_op_ms_per_step": unmatched / 1e3 / steps,
        "minor_page_faults_per_step": faults,
        "system_cpu_s_per_step": system_s,
        "user_cpu_s_per_step": user_s,
        "kinds": rows,
        "slowest": slowest,
        "trace_dir": str(trace_dir),
    }

    print(
        f"## Our train step, {args.size} pair, {args.batch_size} x {args.seq_len}, fp32 "
        f"(XLA_FLAGS={result['xla_flags'] or '(none)'})\n"
    )
    print(
        f"step {untraced_step_s:.3f} s untraced, {wall_us / 1e6:.3f} s traced; traced ops cover "
        f"{covered_us / 1e6:.3f} s of it; op time summed {result['op_time_total_s']:.3f} s"
    )
    print(
        f"per step: {faults:,.0f} minor page faults ({faults * 4 / 1024:,.0f} MiB first touched), "
        f"system CPU {system_s:.3f} s, user CPU {user_s:.3f} s\n"
    )
    print("| kind | op time / step | wall time / step | ops / step | matmul GFLOP | GFLOP/s over wall time |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        rate = f"{row['gflop_per_s']:.1f}" if row["gflop_per_s"] else ""
        gflop = f"{row['matmul_gflop']:.1f}" if row["matmul_gflop"] else ""
        print(
            f"| {row['kind']} | {row['op_ms_per_step']:.0f} ms | {row['wall_ms_per_step']:.0f} ms "
            f"| {row['ops_per_step']:.0f} | {gflop} | {rate} |"
        )
    if slowest:
        print(f"\nslowest {len(slowest)} instructions (op time per step):")
        for op in slowest:
            print(f"  {op['ms_per_step']:7.1f} ms  {op['instruction']}: {op['text']}")
    if unmatched:
        log(
            f"{unmatched / 1e3 / steps:.0f} ms/step of traced ops had no instruction of that name (counted as other)"
        )
    print()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
