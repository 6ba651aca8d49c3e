"""The first thing to run on a machine with an accelerator: our step's MFU, the teacher pass and a short run.

One process, on ``jax.devices()[0]`` (whatever backend JAX picks: a GPU where one is installed, else the
CPU), in three parts, each compiled (and for the step, warmed up) before it is timed, every step waited for:

1. **The base pair's step** at ``--batch-size`` x ``--seq-len`` (default 256 x 128, every token real), once
   per ``--dtypes`` (default bfloat16 and float32). The pair: a random BERT-base teacher (12 layers, hidden
   768, 12 heads, FFN 3072, vocabulary 30522; timing does not depend on the weights) in inference mode, and
   the 6-layer DistilBERT student ``init.student_from_teacher`` builds from it; the original recipe's
   objective (1.0 CE + 0.45 KL at T=2 + 0.1 cosine on the last hidden states) and AdamW
   (``train.make_optimizer``, clip 1.0), stepped by ``train.train_step``, as ``step_throughput.py`` does.
   bfloat16 means both models built with ``compute_dtype="bfloat16"``: matmuls in bf16; parameters, softmax,
   LayerNorm, the losses and AdamW in fp32. The first call (the compilation) is reported apart, then
   ``--warmup`` untimed steps, then ``--steps`` timed ones.

   MFU = model FLOPs per step / median step time / the device's peak. The model FLOPs are the matmul FLOPs
   counted analytically (``_common.step_matmul_flops``): teacher forward + 3 x student forward (the backward
   pass costs two forwards), where one forward is, per layer, ``2 N (4 h^2 + 2 h i)`` for the projections and
   the feed-forward (N = batch x seq tokens, h hidden, i FFN) plus ``4 batch seq^2 h`` for ``Q K^T`` and
   ``P V``, plus the head on the first token. That is 14.3 TFLOP per 256 x 128 step for the base pair. The
   FLOPs XLA reports for the compiled step (``cost_analysis()["flops"]``, every op, elementwise ones
   included, as its cost model counts them) are printed beside it as a check, not used for MFU. The peak is
   the data sheet's dense rate for ``jax.devices()[0].device_kind`` (``_common.DENSE_PEAK_TFLOPS``): bf16
   for bfloat16, TF32 for float32 (XLA:GPU runs float32 dots on TF32 tensor cores under JAX's default
   matmul precision), or ``--peak-tflops`` / ``--peak-tflops-fp32``. On a CPU there is none: MFU is "n/a".

2. **The teacher pass**: ``distill.teacher_cache.teacher_cache`` (in memory) with the ``--run-dtype`` teacher
   over a synthetic split of ``--sentences`` sentences (default 20,000) in length-sorted batches of
   ``--cache-batch-size`` padded to the package's default length buckets: the pass a cached run makes before
   its first step. It runs twice; the first includes one compilation per bucket, the second is the steady
   rate (examples/s) the table reports.

3. **A distillation run** of ``--run-steps`` steps (default 200) at batch ``--run-batch-size`` (default 32,
   the recipe's) in ``--run-dtype`` (default bfloat16), end to end: random batches of the same synthetic
   split, each padded to its length bucket (``data.default_length_buckets``), built on the host, stepped and
   waited for, the teacher run in every step (no cache). Wall time (compilations included, one per bucket
   met), steps/s over it, and the steady steps/s over the steps whose shape had been compiled already.

The synthetic sentences have SST-2-like lengths in tokens ([CLS] and [SEP] included): a log-normal with
median 10 and sigma 0.75, rounded and clipped to [3, min(66, ``--seq-len``)]. That gives mean 13.2 and
quantiles 10/25/50/75/90% of 4/6/10/17/26, where SST-2 train under the bert-base-uncased vocabulary has mean
13.3, 4/6/10/18/27 and at most 66 tokens. The token ids are random.

    python benchmarks/device_check.py                  # on the GPU if JAX has one; sized for < 8 min on an H100
    python benchmarks/device_check.py --dtypes bfloat16 --run-steps 100
    python benchmarks/device_check.py --quick          # CPU smoke run: tiny pair, 8 x 16, 5 steps

``--quick`` changes the defaults to a tiny pair (teacher 2 layers / 64 wide), batch 8 x 16, 5 timed steps,
1 warm-up, 200 sentences, 5 run steps; its numbers mean nothing. Progress goes to stderr; stdout gets one
markdown table, then one JSON line with every number.
"""

import argparse
import gc
import itertools
import json
import os
import statistics
import sys
import time

from _common import (
    SIZES,
    VOCAB_SIZE,
    OursDistiller,
    data_sheet_peak_tflops,
    fill_defaults,
    log,
    max_rss_mib,
    step_matmul_flops,
    summarize,
    synthetic_batch,
)

DTYPES = ("bfloat16", "float32")
# The data-sheet column each compute dtype's matmuls run at (see the module docstring).
PEAK_PRECISION = {"bfloat16": "bfloat16", "float32": "tf32"}
# A long schedule, so that the learning rate is neither 0 nor at its end while the step is timed.
SCHEDULE_STEPS = 10_000
LENGTH_MEDIAN, LENGTH_SIGMA, LONGEST_SENTENCE = 10.0, 0.75, 66


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=tuple(SIZES), help="model pair (default base)")
    parser.add_argument(
        "--dtypes",
        default=",".join(DTYPES),
        help="compute dtypes of the step, comma-separated (default %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, help="step batch (default 256)")
    parser.add_argument(
        "--seq-len", type=int, help="step sequence length, and the longest sentence (default 128)"
    )
    parser.add_argument("--warmup", type=int, help="untimed steps after the compiling call (default 2)")
    parser.add_argument("--steps", type=int, help="timed steps per dtype (default 20)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="bf16 peak to grade against, TFLOP/s (default: the device's data sheet; CPU: none)",
    )
    parser.add_argument(
        "--peak-tflops-fp32",
        type=float,
        help="float32 peak to grade against, TFLOP/s (default: the data sheet's TF32; CPU: none)",
    )
    parser.add_argument(
        "--no-cost-analysis",
        action="store_true",
        help="skip XLA's FLOP count of the step (it lowers and compiles the step once more)",
    )
    parser.add_argument("--sentences", type=int, help="synthetic split size (default 20000)")
    parser.add_argument("--cache-batch-size", type=int, help="teacher pass batch (default 256)")
    parser.add_argument("--run-steps", type=int, help="steps of the distillation run (default 200)")
    parser.add_argument("--run-batch-size", type=int, help="batch of the distillation run (default 32)")
    parser.add_argument(
        "--run-dtype",
        choices=DTYPES,
        default="bfloat16",
        help="compute dtype of the teacher pass and the run (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CPU smoke run; unless given: --size tiny --batch-size 8 --seq-len 16 --steps 5 "
        "--warmup 1 --sentences 200 --cache-batch-size 16 --run-steps 5 --run-batch-size 8",
    )
    args = parser.parse_args(argv)
    fill_defaults(
        args,
        {
            "size": "base",
            "batch_size": 256,
            "seq_len": 128,
            "warmup": 2,
            "steps": 20,
            "sentences": 20_000,
            "cache_batch_size": 256,
            "run_steps": 200,
            "run_batch_size": 32,
        },
        {
            "size": "tiny",
            "batch_size": 8,
            "seq_len": 16,
            "warmup": 1,
            "steps": 5,
            "sentences": 200,
            "cache_batch_size": 16,
            "run_steps": 5,
            "run_batch_size": 8,
        },
    )
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not args.dtypes or any(d not in DTYPES for d in args.dtypes):
        parser.error(f"--dtypes: expected a comma-separated subset of {','.join(DTYPES)}")
    positive = (
        "batch_size",
        "seq_len",
        "steps",
        "sentences",
        "cache_batch_size",
        "run_steps",
        "run_batch_size",
    )
    if any(getattr(args, name) < 1 for name in positive) or args.warmup < 0:
        parser.error("sizes and step counts must be at least 1 (--warmup at least 0)")
    if args.seq_len < 3:
        parser.error(f"--seq-len {args.seq_len}: expected at least 3 ([CLS], a token, [SEP])")
    return args


def synthetic_split(sentences: int, max_length: int, seed: int):
    """A ``data.TokenizedSplit`` of random token ids with SST-2-like lengths (the module docstring's)."""
    import numpy as np

    from distilbert_eqx.data import TokenizedSplit

    rng = np.random.default_rng(seed)
    tokens = np.rint(rng.lognormal(np.log(LENGTH_MEDIAN), LENGTH_SIGMA, size=sentences))
    lengths = np.clip(tokens, 3, min(LONGEST_SENTENCE, max_length)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    token_ids = rng.integers(1000, VOCAB_SIZE, size=int(offsets[-1]), dtype=np.int32)
    token_ids[offsets[:-1]] = 101  # [CLS]
    token_ids[offsets[1:] - 1] = 102  # [SEP]
    return TokenizedSplit(
        name="synthetic",
        labels=rng.integers(0, 2, size=sentences, dtype=np.int32),
        offsets=offsets,
        token_ids=token_ids,
        token_type_ids=np.zeros_like(token_ids),
        pad_id=0,
    )


def xla_flops(distiller: OursDistiller, batch) -> float | None:
    """The FLOPs XLA's cost model gives the compiled step, or ``None`` where the backend reports none."""
    from distilbert_eqx.train import train_step

    lowered = train_step.lower(
        distiller.teacher, distiller.state, batch, distiller.optimizer, distiller.losses
    )
    # Equinox's Compiled wraps JAX's, which holds the cost analysis.
    analysis = lowered.compile().compiled.cost_analysis()
    if isinstance(analysis, list):  # older jax: one dict per program
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops is not None and flops > 0 else None


def time_step(
    args: argparse.Namespace, dtype: str, peak_tflops: float | None, peak_source: str | None
) -> dict:
    """Part 1 for one dtype."""
    from distilbert_eqx.batch import Batch

    size = SIZES[args.size]
    log(f"[step {dtype}] building {size.describe()}")
    distiller = OursDistiller(size, SCHEDULE_STEPS, seed=args.seed, compute_dtype=dtype)
    batch = Batch(**synthetic_batch(args.batch_size, args.seq_len, seed=args.seed))
    start = time.perf_counter()
    distiller.step(batch)
    first_call_s = time.perf_counter() - start
    log(f"[step {dtype}] first call (compiles) {first_call_s:.1f}s")
    for _ in range(args.warmup):
        distiller.step(batch)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = distiller.step(batch)
        times.append(time.perf_counter() - start)
    flops = step_matmul_flops(size, args.batch_size, args.seq_len)
    median = statistics.median(times)
    result = {
        "dtype": dtype,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "first_call_s": first_call_s,
        **summarize(times),
        "step_times_s": times,
        "examples_per_s": args.batch_size / median,
        "matmul_flops": flops,
        "matmul_tflops_per_s": flops / median / 1e12,
        "peak_tflops": peak_tflops,
        "peak_source": peak_source,
        "mfu": flops / median / (peak_tflops * 1e12) if peak_tflops else None,
        "xla_flops": None if args.no_cost_analysis else xla_flops(distiller, batch),
        "loss_last": loss,
        "num_traces": OursDistiller.num_traces(),
    }
    log(f"[step {dtype}] median {median * 1e3:.1f} ms")
    del distiller
    gc.collect()
    return result


def time_teacher_pass(args: argparse.Namespace, split) -> dict:
    """Part 2: the teacher-output cache pass over ``split``, twice (compiling, then steady)."""
    from distilbert_eqx.data import default_length_buckets
    from distilbert_eqx.distill.teacher_cache import teacher_cache

    distiller = OursDistiller(SIZES[args.size], SCHEDULE_STEPS, seed=args.seed, compute_dtype=args.run_dtype)
    buckets = default_length_buckets(args.seq_len)
    passes = []
    for _ in range(2):
        start = time.perf_counter()
        cache = teacher_cache(
            distiller.teacher,
            split,
            distiller.losses,
            batch_size=args.cache_batch_size,
            buckets=buckets,
            log=lambda message: log(f"[teacher pass] {message}"),
        )
        passes.append(time.perf_counter() - start)
    result = {
        "dtype": args.run_dtype,
        "sentences": len(split),
        "batch_size": args.cache_batch_size,
        "buckets": list(buckets),
        "first_pass_s": passes[0],
        "steady_pass_s": passes[1],
        "examples_per_s": len(split) / passes[1],
        "cache_bytes": cache.nbytes,
    }
    del distiller, cache
    gc.collect()
    return result


def time_run(args: argparse.Namespace, split) -> dict:
    """Part 3: ``--run-steps`` steps end to end, host batching included."""
    from distilbert_eqx.data import default_length_buckets, epoch_batches

    distiller = OursDistiller(SIZES[args.size], args.run_steps, seed=args.seed, compute_dtype=args.run_dtype)
    traces_before = OursDistiller.num_traces()
    buckets = default_length_buckets(args.seq_len)
    batches = epoch_batches(split, args.run_batch_size, buckets, seed=args.seed, group_by_length=False)
    seen, steady, first_of_shape, examples = set(), [], [], 0
    start = time.perf_counter()
    for batch in itertools.islice(batches, args.run_steps):
        step_start = time.perf_counter()
        loss = distiller.step(batch)
        elapsed = time.perf_counter() - step_start
        seq = batch.input_ids.shape[1]
        (steady if seq in seen else first_of_shape).append(elapsed)
        seen.add(seq)
        examples += int((batch.weights > 0).sum())
    wall_s = time.perf_counter() - start
    result = {
        "dtype": args.run_dtype,
        "steps": args.run_steps,
        "batch_size": args.run_batch_size,
        "examples": examples,
        "shapes": sorted(seen),
        "wall_s": wall_s,
        "steps_per_s": args.run_steps / wall_s,
        "examples_per_s": examples / wall_s,
        "first_of_shape_s": sum(first_of_shape),
        "steady_steps": len(steady),
        "steady_steps_per_s": len(steady) / sum(steady) if steady else None,
        "traces": OursDistiller.num_traces() - traces_before,
        "loss_last": loss,
    }
    del distiller
    gc.collect()
    return result


def peak_for(args: argparse.Namespace, dtype: str, device) -> tuple[float | None, str | None]:
    """The peak ``dtype``'s step is graded against, in TFLOP/s, and where it comes from."""
    option = "--peak-tflops" if dtype == "bfloat16" else "--peak-tflops-fp32"
    given = args.peak_tflops if dtype == "bfloat16" else args.peak_tflops_fp32
    if given is not None:
        return given, option
    precision = PEAK_PRECISION[dtype]
    tflops = data_sheet_peak_tflops(device.device_kind, precision)
    if tflops is not None:
        return tflops, f"data sheet, dense {precision}"
    if device.platform != "cpu":
        log(
            f"[device check] no data-sheet {precision} peak for {device.device_kind!r} in "
            f"_common.DENSE_PEAK_TFLOPS: MFU n/a unless {option} is given"
        )
    return None, None


def print_table(device: str, steps: list[dict], teacher: dict, run: dict) -> None:
    print(f"## Device check: {device}\n")
    print(
        "| part | dtype | shape | compile / first (s) | steady | rate | matmul TFLOP/s (XLA's FLOPs) | MFU |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for s in steps:
        xla = "n/a" if s["xla_flops"] is None else f"{s['xla_flops'] / s['median_s'] / 1e12:.3g}"
        mfu = "n/a" if s["mfu"] is None else f"{100 * s['mfu']:.1f}% of {s['peak_tflops']:g}"
        print(
            f"| step | {s['dtype']} | {s['batch_size']} x {s['seq_len']} | {s['first_call_s']:.1f} | "
            f"{s['median_s'] * 1e3:.1f} ms ({s['min_s'] * 1e3:.1f}-{s['max_s'] * 1e3:.1f}) | "
            f"{s['examples_per_s']:.1f} ex/s | {s['matmul_tflops_per_s']:.3g} ({xla}) | {mfu} |"
        )
    print(
        f"| teacher pass | {teacher['dtype']} | {teacher['sentences']} sentences, batches of "
        f"{teacher['batch_size']} | {teacher['first_pass_s']:.1f} | {teacher['steady_pass_s']:.2f} s | "
        f"{teacher['examples_per_s']:.0f} ex/s | - | - |"
    )
    steady = "n/a" if run["steady_steps_per_s"] is None else f"{run['steady_steps_per_s']:.2f} steps/s steady"
    print(
        f"| {run['steps']}-step run | {run['dtype']} | {run['batch_size']} x {run['shapes']} | "
        f"{run['first_of_shape_s']:.1f} | {run['wall_s']:.1f} s wall | {run['steps_per_s']:.2f} steps/s "
        f"({steady}) | - | - |"
    )
    print()


def main() -> None:
    args = parse_args()
    import jax

    device = jax.devices()[0]
    device_kind = device.device_kind
    log(f"[device check] {device.platform}: {device_kind}")
    steps = [time_step(args, dtype, *peak_for(args, dtype, device)) for dtype in args.dtypes]
    split = synthetic_split(args.sentences, args.seq_len, args.seed)
    teacher = time_teacher_pass(args, split)
    run = time_run(args, split)
    stats = device.memory_stats() or {}
    print_table(f"{device.platform}, {device_kind}; {SIZES[args.size].describe()}", steps, teacher, run)
    print(
        json.dumps(
            {
                "benchmark": "device_check",
                "platform": device.platform,
                "device_kind": device_kind,
                "size": args.size,
                "models": SIZES[args.size].describe(),
                "jax": jax.__version__,
                "cpu_count": os.cpu_count(),
                "steps": steps,
                "teacher_pass": teacher,
                "run": run,
                "peak_device_mib": stats["peak_bytes_in_use"] / 2**20
                if "peak_bytes_in_use" in stats
                else None,
                "peak_rss_mib": max_rss_mib(),
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
