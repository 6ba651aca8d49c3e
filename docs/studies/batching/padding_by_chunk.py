"""Padding and batch uniformity of one grouped training epoch, by ``group_chunk_batches``.

    python experiments/padding_by_chunk.py --config experiments/configs/sst2_minilm_offline.yaml --set seed=4

``group_by_length`` sorts the shuffled examples by length within chunks of ``group_chunk_batches`` batches. Big
chunks give batches of nearly one length (least padding); small ones give batches closer to random ones. For
each chunk size in ``--chunks`` and for random batches, prints the mean padded length per example of epoch 0
(the config's seed, batch size and buckets) and the mean over batches of the standard deviation of the real
lengths within a batch. Ends with one JSON line.
"""

import argparse
import json

import numpy as np

from distilbert_eqx.config import ExperimentConfig, add_config_args, config_from_args, resolved_length_buckets
from distilbert_eqx.data import TokenizedSplit, padding_stats, train_batches
from distilbert_eqx.experiment import _load_splits as load_splits

CHUNKS = (100, 50, 25, 10, 5, 2)


def epoch_uniformity(config: ExperimentConfig, train: TokenizedSplit, chunk: int | None) -> dict:
    """Mean padded length and mean within-batch length std of epoch 0; ``chunk`` None means random batches."""
    batches = list(train_batches(
        train, config.batch_size, resolved_length_buckets(config), seed=config.seed, epoch=0,
        group_by_length=chunk is not None, group_chunk_batches=chunk or 1,
    ))
    stats = padding_stats(batches)
    spread = [float(b.attention_mask[b.weights > 0].sum(axis=1).std()) for b in batches]
    return {"chunk": chunk, "mean_padded_length": stats.mean_padded_length, "within_batch_std": float(np.mean(spread))}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--chunks", type=int, nargs="+", default=CHUNKS,
                        help="group_chunk_batches values (default %(default)s)")
    args = parser.parse_args(argv)
    if min(args.chunks) < 1:
        parser.error(f"--chunks must all be at least 1, got {args.chunks}")
    config = config_from_args(args)
    _, splits = load_splits(config, ("train",))
    rows = [epoch_uniformity(config, splits["train"], chunk) for chunk in (*args.chunks, None)]

    print(f"One training epoch, seed {config.seed}, batch {config.batch_size}; mean padded length per example "
          "(mean within-batch std of the real lengths)\n")
    print("| group_chunk_batches | " + " | ".join(str(r["chunk"] or "random batches") for r in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    print("| mean padded length | "
          + " | ".join(f"{r['mean_padded_length']:.1f} ({r['within_batch_std']:.2f})" for r in rows) + " |")
    print("\n" + json.dumps({"seed": config.seed, "rows": rows}))
    return rows


if __name__ == "__main__":
    main()
