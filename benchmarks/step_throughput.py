"""Examples/s of one distillation train step: ours (JAX/Equinox) against the same step in PyTorch.

What is measured: one full optimizer step at a fixed shape (``--batch-size`` x ``--seq-len``, default
32 x 128, every token real): teacher forward in inference mode + student forward and backward + AdamW with
gradient clipping at 1.0, loss ``1.0 CE + 0.45 T^2 KL (T=2) + 0.1 cosine(last hidden states)``, fp32 on CPU,
dropout off. Models are random (nothing is downloaded), one pair per ``--sizes`` entry:

  base: BERT 12 layers / 768 hidden / 12 heads / 3072 FFN  ->  DistilBERT 6 layers / 768
  mini: BERT  6 layers / 384 hidden / 12 heads / 1536 FFN  ->  DistilBERT 3 layers / 384

Ours is ``train.train_step`` (one jit region) on a student made by ``init.student_from_teacher``. PyTorch is
eager ``transformers`` (default SDPA attention): ``BertForSequenceClassification`` in eval mode under
``torch.no_grad()`` -> ``DistilBertForSequenceClassification``, ``torch.optim.AdamW``, ``clip_grad_norm_``,
and ``torch.set_num_threads(os.cpu_count())`` unless ``--torch-threads`` says otherwise.

How: each (size, framework) runs in its own child process (this script with ``--framework``): ``--warmup``
untimed steps (the first includes ours' compilation), then ``--steps`` timed steps, each waited for. Ours
first calls ``host_memory.retain_freed_memory``, as the experiment scripts do (``--default-malloc`` skips it).
``--rounds R`` runs every child R times, alternating which framework goes first, and pools the timed steps.
Reported: median / min / max step time; examples/s and the ours/PyTorch ratio of examples/s; matmul FLOP/s
(counted analytically, see ``_common.step_matmul_flops``) as a fraction of this machine's fp32 matmul peak
(the faster of JAX and PyTorch at the best of ``--matmul-repeats`` ``--matmul-size``^2 matmuls, in its own
child of the same run); each child's peak RSS (``getrusage``); and the first-step overhead,
first step minus the steady median, which for ours is the jit compile time. Progress goes to stderr; stdout
gets a markdown report whose last line is one JSON object with every number.

On a GPU (``--device gpu``; defaults then bfloat16, batch 256 x 128, 20 timed steps, 3 warm-up): ours
compiles both models with ``compute_dtype="bfloat16"`` (matmuls in bf16; parameters, softmax, LayerNorm and
AdamW in fp32) and PyTorch runs its forward passes and losses under ``torch.autocast(bfloat16)``. The rate
is then also given as MFU, the matmul FLOP/s over the chip's dense bf16 peak from its data sheet (looked up by
device name in ``_common.DENSE_PEAK_TFLOPS``, or ``--peak-tflops``); the measured ``--matmul-size``^2 bf16
matmul rate is printed beside it. Peak device memory (JAX's ``peak_bytes_in_use``, PyTorch's
``max_memory_allocated``) is reported too. ``--dtype bfloat16`` also works on CPU, against the CPU's bf16
matmul rate.

    python benchmarks/step_throughput.py                   # base and mini, 32 x 128, 10 timed steps
    python benchmarks/step_throughput.py --sizes mini --rounds 3 --steps 20
    python benchmarks/step_throughput.py --device gpu      # bf16, batch 256, MFU
    python benchmarks/step_throughput.py --quick           # smoke run of the script: tiny model, 2 steps
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

from _common import (
    DENSE_PEAK_TFLOPS,
    SIZES,
    OursDistiller,
    TorchDistiller,
    add_default_malloc_option,
    data_sheet_peak_tflops,
    emit_result,
    fill_defaults,
    log,
    max_rss_mib,
    parse_sizes,
    run_child,
    step_matmul_flops,
    summarize,
    synthetic_batch,
)

FRAMEWORKS = ("ours", "torch")
VERSIONED = ("jax", "jaxlib", "equinox", "optax", "torch", "transformers")
LABELS = {"ours": "ours (JAX/Equinox)", "torch": "PyTorch eager"}
# A long schedule, so that the learning rate is neither 0 nor at its end while we time.
SCHEDULE_STEPS = 10_000
DEVICES = {"cpu": ("cpu", "cpu"), "gpu": ("cuda", "gpu")}  # --device -> (JAX_PLATFORMS / torch, JAX backend)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", help="comma-separated subset of base, mini, tiny (default base,mini)")
    parser.add_argument("--frameworks", default="ours,torch", help="comma-separated subset of ours,torch")
    parser.add_argument(
        "--device",
        choices=tuple(DEVICES),
        default="cpu",
        help="where both frameworks run (default cpu); gpu changes the defaults of --dtype, "
        "--batch-size, --steps, --warmup and --matmul-size to bfloat16, 256, 20, 3, 8192",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        help="matmul dtype of the step (default float32 on cpu, bfloat16 on gpu)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="the peak to grade against, in TFLOP/s (default: on gpu in bfloat16, the chip's "
        "data-sheet dense bf16 peak; otherwise the measured matmul peak)",
    )
    parser.add_argument("--batch-size", type=int, help="default 32 (gpu: 256)")
    parser.add_argument("--seq-len", type=int, help="default 128")
    parser.add_argument("--steps", type=int, help="timed steps per child (default 10; gpu: 20)")
    parser.add_argument(
        "--warmup",
        type=int,
        help="untimed steps first, the first one compiles (default 2, gpu: 3; at least 1)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every (size, framework) child this many times, alternating the order of "
        "the frameworks, and pool the timed steps (default 1)",
    )
    parser.add_argument(
        "--matmul-size", type=int, help="n of the n x n @ n x n peak matmul (default 2048; gpu: 8192)"
    )
    parser.add_argument("--matmul-repeats", type=int, help="timed peak matmuls; the best counts (default 10)")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=os.cpu_count(),
        help="torch.set_num_threads (default os.cpu_count(), here %(default)s)",
    )
    add_default_malloc_option(parser)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run of the script; unless given: --sizes tiny --batch-size 4 "
        "--seq-len 16 --steps 2 --warmup 1 --matmul-size 256 --matmul-repeats 3",
    )
    parser.add_argument(
        "--framework",
        choices=(*FRAMEWORKS, "peak"),
        help="internal: run one measurement in this process and print its JSON result",
    )
    parser.add_argument("--size", choices=tuple(SIZES), help="internal: the size for --framework")
    args = parser.parse_args(argv)
    defaults = {
        "sizes": "base,mini",
        "dtype": "float32",
        "batch_size": 32,
        "seq_len": 128,
        "steps": 10,
        "warmup": 2,
        "matmul_size": 2048,
        "matmul_repeats": 10,
    }
    if args.device == "gpu":
        defaults.update(dtype="bfloat16", batch_size=256, steps=20, warmup=3, matmul_size=8192)
    fill_defaults(
        args,
        defaults,
        {
            "sizes": "tiny",
            "batch_size": 4,
            "seq_len": 16,
            "steps": 2,
            "warmup": 1,
            "matmul_size": 256,
            "matmul_repeats": 3,
        },
    )
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--warmup, --steps and --rounds must be at least 1")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error(f"--peak-tflops {args.peak_tflops}: expected a positive number of TFLOP/s")
    return args


# Children: one measurement each.


def time_steps(step, warmup: int, steps: int) -> dict:
    """``warmup`` untimed, then ``steps`` timed calls of ``step()``, which returns the loss once finished."""
    start = time.perf_counter()
    first_loss = step()
    first_step_s = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    times, loss = [], first_loss
    for _ in range(steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    return {"first_step_s": first_step_s, "step_times_s": times, "loss_first": first_loss, "loss_last": loss}


def jax_device(args: argparse.Namespace):
    """JAX's first device, checked to be on ``--device``."""
    import jax

    platforms = os.environ.get("JAX_PLATFORMS")
    try:
        backend = jax.default_backend()
    except (RuntimeError, AssertionError) as error:  # jax asserts when no platform in JAX_PLATFORMS loads
        raise SystemExit(
            f"--device {args.device}: JAX could not start a backend (JAX_PLATFORMS={platforms!r}; "
            f"on a GPU, install jax with its CUDA plugin): {error!r}"
        ) from error
    if backend != DEVICES[args.device][1]:
        raise SystemExit(
            f"--device {args.device}: JAX's default backend is {backend!r} (JAX_PLATFORMS={platforms!r})"
        )
    return jax.devices()[0]


def child_ours(args: argparse.Namespace) -> dict:
    from distilbert_eqx.batch import Batch

    device = jax_device(args)
    distiller = OursDistiller(
        SIZES[args.size], SCHEDULE_STEPS, default_malloc=args.default_malloc, compute_dtype=args.dtype
    )
    batch = Batch(**synthetic_batch(args.batch_size, args.seq_len))
    rss_setup = max_rss_mib()
    result = time_steps(lambda: distiller.step(batch), args.warmup, args.steps)
    stats = device.memory_stats() if args.device == "gpu" else None
    return {
        **result,
        "rss_after_setup_mib": rss_setup,
        "peak_rss_mib": max_rss_mib(),
        "peak_device_mib": stats["peak_bytes_in_use"] / 2**20 if stats else None,
        "device_name": device.device_kind,
        "num_traces": OursDistiller.num_traces(),
        "retained_freed_memory": distiller.retained_freed_memory,
    }


def child_torch(args: argparse.Namespace) -> dict:
    import torch

    torch_device = DEVICES[args.device][0]
    distiller = TorchDistiller(
        SIZES[args.size], SCHEDULE_STEPS, args.torch_threads, device=torch_device, dtype=args.dtype
    )
    arrays = synthetic_batch(args.batch_size, args.seq_len)
    fields = [arrays[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels")]
    rss_setup = max_rss_mib()
    result = time_steps(lambda: distiller.step(*fields), args.warmup, args.steps)
    on_gpu = torch_device == "cuda"
    return {
        **result,
        "rss_after_setup_mib": rss_setup,
        "peak_rss_mib": max_rss_mib(),
        "peak_device_mib": torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None,
        "device_name": torch.cuda.get_device_name() if on_gpu else "cpu",
        "torch_threads": torch.get_num_threads(),
    }


def best_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def child_peak(args: argparse.Namespace) -> dict:
    """Best-of-n n x n matmul FLOP/s, in ``--dtype`` on ``--device``, in JAX and in PyTorch."""
    import jax
    import jax.numpy as jnp
    import torch

    device = jax_device(args)
    n = args.matmul_size
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.dtype(args.dtype))
    b = jax.random.normal(kb, (n, n), jnp.dtype(args.dtype))
    matmul = jax.jit(jnp.matmul)
    jax_s = best_time(lambda: matmul(a, b).block_until_ready(), args.matmul_repeats)
    torch.set_num_threads(args.torch_threads)
    torch_device = DEVICES[args.device][0]
    ta, tb = (torch.randn(n, n, device=torch_device, dtype=getattr(torch, args.dtype)) for _ in range(2))
    sync = torch.cuda.synchronize if torch_device == "cuda" else lambda: None

    def torch_matmul():
        torch.mm(ta, tb)
        sync()

    torch_s = best_time(torch_matmul, args.matmul_repeats)
    flops = 2 * n**3
    return {
        "n": n,
        "dtype": args.dtype,
        "device_name": device.device_kind,
        "jax_flops": flops / jax_s,
        "torch_flops": flops / torch_s,
        "jax_best_s": jax_s,
        "torch_best_s": torch_s,
    }


def run_as_child(args: argparse.Namespace) -> None:
    if args.framework != "peak" and args.size is None:
        raise SystemExit("--framework ours/torch needs --size")
    log(
        f"[child] {args.framework} {args.size or ''}: {args.batch_size} x {args.seq_len}, "
        f"warmup {args.warmup}, steps {args.steps}"
    )
    run = {"ours": child_ours, "torch": child_torch, "peak": child_peak}[args.framework]
    emit_result({"framework": args.framework, "size": args.size, **run(args)})


# Parent: runs the children and reports.


def child_argv(args: argparse.Namespace, framework: str, size: str | None) -> list[str]:
    argv = [
        "--framework",
        framework,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--batch-size",
        str(args.batch_size),
        "--seq-len",
        str(args.seq_len),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--matmul-size",
        str(args.matmul_size),
        "--matmul-repeats",
        str(args.matmul_repeats),
        "--torch-threads",
        str(args.torch_threads),
    ]
    argv += ["--default-malloc"] if args.default_malloc else []
    return argv + (["--size", size] if size else [])


def combine_rounds(runs: list[dict], batch: int, flops: int, peak_flops: float) -> dict:
    """Pool the timed steps of every round of one (size, framework)."""
    times = [t for r in runs for t in r["step_times_s"]]
    stats = summarize(times)
    median = stats["median_s"]
    first = statistics.median(r["first_step_s"] for r in runs)
    out = {
        **stats,
        "examples_per_s": batch / median,
        "examples_per_s_min": batch / stats["max_s"],
        "examples_per_s_max": batch / stats["min_s"],
        "flops_per_s": flops / median,
        "fraction_of_matmul_peak": flops / median / peak_flops,
        "first_step_s": first,
        "first_step_overhead_s": first - median,
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "peak_device_mib": max(r["peak_device_mib"] or 0 for r in runs) or None,
        "rss_after_setup_mib": max(r["rss_after_setup_mib"] for r in runs),
        "loss_last": runs[-1]["loss_last"],
        "rounds": len(runs),
        "step_times_s": times,
    }
    if "num_traces" in runs[0]:
        out["num_traces"] = max(r["num_traces"] for r in runs)
    if "retained_freed_memory" in runs[0]:
        out["retained_freed_memory"] = all(r["retained_freed_memory"] for r in runs)
    return out


def main() -> None:
    args = parse_args()
    if args.framework is not None:
        run_as_child(args)
        return
    script = Path(__file__).resolve()
    sizes = parse_sizes(args.sizes)
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if not frameworks or any(f not in FRAMEWORKS for f in frameworks):
        raise SystemExit(f"--frameworks {args.frameworks!r}: expected a comma-separated subset of ours,torch")

    platforms = DEVICES[args.device][0]
    log(
        f"[parent] {args.dtype} matmul peak on {args.device} ({args.matmul_size}^2, "
        f"best of {args.matmul_repeats})"
    )
    # JAX and PyTorch share the GPU in the peak child: JAX must not take most of its memory up front.
    peak = run_child(
        script,
        child_argv(args, "peak", None),
        {"JAX_PLATFORMS": platforms, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
    )
    peak["reference_flops"], peak["reference"] = reference_peak(args, peak)
    runs: dict[tuple[str, str], list[dict]] = {}
    for round_index in range(args.rounds):
        order = frameworks if round_index % 2 == 0 else frameworks[::-1]
        for size in sizes:
            for framework in order:
                log(f"[parent] round {round_index + 1}/{args.rounds}: {size.name} / {framework}")
                argv = child_argv(args, framework, size.name)
                result = run_child(script, argv, {"JAX_PLATFORMS": platforms})
                runs.setdefault((size.name, framework), []).append(result)

    results = {}
    for size in sizes:
        flops = step_matmul_flops(size, args.batch_size, args.seq_len)
        entry = {"models": size.describe(), "flops_per_step": flops}
        for framework in frameworks:
            entry[framework] = combine_rounds(
                runs[size.name, framework], args.batch_size, flops, peak["reference_flops"]
            )
        if len(frameworks) == 2:
            ours_rate, torch_rate = entry["ours"]["examples_per_s"], entry["torch"]["examples_per_s"]
            entry["ratio_ours_over_torch"] = ours_rate / torch_rate
        results[size.name] = entry

    print_report(args, peak, results, frameworks)
    print(
        json.dumps(
            {
                "benchmark": "step_throughput",
                "device": args.device,
                "device_name": peak["device_name"],
                "dtype": args.dtype,
                "batch_size": args.batch_size,
                "seq_len": args.seq_len,
                "warmup": args.warmup,
                "steps": args.steps,
                "rounds": args.rounds,
                "cpu_count": os.cpu_count(),
                "torch_threads": args.torch_threads,
                "machine": platform.machine(),
                "python": platform.python_version(),
                "versions": {name: version(name) for name in VERSIONED},
                "matmul_peak": peak,
                "results": results,
            }
        )
    )


def reference_peak(args: argparse.Namespace, peak: dict) -> tuple[float, str]:
    """The FLOP/s that "% of peak" is of, and where it comes from.

    ``--peak-tflops`` if given; on a GPU in bf16, the chip's data-sheet dense bf16 peak (MFU); otherwise the
    machine's measured peak, the faster library's, so that neither framework is graded against its own matmul.
    """
    if args.peak_tflops is not None:
        return args.peak_tflops * 1e12, f"--peak-tflops {args.peak_tflops:g}"
    if args.device == "gpu" and args.dtype == "bfloat16":
        name = peak["device_name"]
        tflops = data_sheet_peak_tflops(name, "bfloat16")
        if tflops is not None:
            return tflops * 1e12, f"{name} data-sheet dense bf16 peak, {tflops:g} TFLOP/s (MFU)"
        raise SystemExit(
            f"no data-sheet bf16 peak known for {name!r} (known: "
            f"{', '.join(k for k, _ in DENSE_PEAK_TFLOPS)}); pass --peak-tflops"
        )
    return max(peak["jax_flops"], peak["torch_flops"]), "measured matmul peak, the faster of JAX and PyTorch"


def print_report(args: argparse.Namespace, peak: dict, results: dict, frameworks: list[str]) -> None:
    if args.device == "cpu":
        where = f"CPU ({os.cpu_count()} cores; PyTorch with {args.torch_threads} threads)"
    else:
        where = peak["device_name"]
    print(
        f"## Distillation train step, batch {args.batch_size} x length {args.seq_len}, {args.dtype}, "
        f"{where}\n"
    )
    print(
        f"{args.steps} timed steps per child after {args.warmup} warm-up, {args.rounds} round(s). "
        f"{args.dtype} matmul ({peak['n']}^2, best of {args.matmul_repeats}): JAX "
        f"{peak['jax_flops'] / 1e9:.1f} GFLOP/s, PyTorch {peak['torch_flops'] / 1e9:.1f} GFLOP/s. "
        f"'% of peak' is of {peak['reference_flops'] / 1e9:.1f} GFLOP/s: {peak['reference']}.\n"
    )
    on_gpu = args.device == "gpu"
    print(
        "| size | framework | step median (ms) | min (ms) | max (ms) | examples/s | matmul GFLOP/s "
        "| % of peak | peak RSS (MiB) |"
        + (" peak device memory (MiB) |" if on_gpu else "")
        + " first step (s) | first-step overhead (s) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if on_gpu else "") + "---:|---:|")
    for name, entry in results.items():
        for framework in frameworks:
            r = entry[framework]
            device_memory = f" {r['peak_device_mib']:.0f} |" if on_gpu else ""
            print(
                f"| {name} | {LABELS[framework]} | {r['median_s'] * 1e3:.1f} | {r['min_s'] * 1e3:.1f} | "
                f"{r['max_s'] * 1e3:.1f} | {r['examples_per_s']:.1f} | {r['flops_per_s'] / 1e9:.1f} | "
                f"{100 * r['fraction_of_matmul_peak']:.1f} | {r['peak_rss_mib']:.0f} |{device_memory} "
                f"{r['first_step_s']:.2f} | {r['first_step_overhead_s']:.2f} |"
            )
    print()
    for name, entry in results.items():
        line = f"- {name}: {entry['models']}, {entry['flops_per_step'] / 1e9:.3g} GFLOP of matmuls per step"
        if "ratio_ours_over_torch" in entry:
            line += f"; ours/PyTorch examples/s = {entry['ratio_ours_over_torch']:.2f}x"
        if "ours" in entry:
            line += f"; ours traced {entry['ours']['num_traces']} time(s) per child"
        print(line)
    print(
        "\nexamples/s is at the median step. First-step overhead = first step - median step: ours' jit "
        "compilation; PyTorch's one-off allocations. Peak RSS is each child process's max RSS.\n"
    )


if __name__ == "__main__":
    sys.exit(main())
