"""How the cosine loss spreads its weight over example lengths in one epoch, grouped vs random batches.

    python experiments/cosine_weights.py --config experiments/configs/sst2_minilm_offline.yaml

CE and KL average over a batch's examples, so every example weighs the same however the epoch is batched. The
cosine loss with ``cosine_normalizer: batch_tokens`` averages over the batch's real tokens: an example's
share of its batch's loss is its length over the batch's total length. With random batches that is close to
its share of all the tokens; with ``group_by_length`` (a batch's examples about equally long) it is close to
one example's share. ``train_mean_length`` gives an example ``length / (rows x mean length)`` in every batch.

For each batching and normalizer, prints the share of the epoch's cosine-loss weight carried by the examples
of each length class (tokens, [CLS] and [SEP] included), averaged over the epoch orders of ``--seeds`` seeds;
then each class's share of the examples of train, dev and test. Ends with one JSON line.
"""

import argparse
import json

import numpy as np

from distilbert_eqx.config import (
    COSINE_NORMALIZERS,
    ExperimentConfig,
    add_config_args,
    config_from_args,
    resolved_length_buckets,
)
from distilbert_eqx.data import TokenizedSplit, train_batches
from distilbert_eqx.experiment import _load_splits as load_splits

# Upper edges of the length classes; the last class is everything longer.
EDGES = (8, 24)
CLASSES = ("<= 8", "9-24", "> 24")


def length_class(lengths: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.asarray(EDGES), lengths, side="left")


def cosine_weight_shares(
    config: ExperimentConfig, train: TokenizedSplit, seed: int, group_by_length: bool, normalizer: str
) -> np.ndarray:
    """Share of one epoch's cosine-loss weight per length class (sums to 1)."""
    mean_length = float(train.lengths.mean())
    totals = np.zeros(len(CLASSES))
    batches = train_batches(
        train, config.batch_size, resolved_length_buckets(config), seed=seed, epoch=0,
        group_by_length=group_by_length, group_chunk_batches=config.group_chunk_batches,
    )
    for batch in batches:
        rows = batch.weights > 0
        lengths = batch.attention_mask[rows].sum(axis=1)
        denominator = lengths.sum() if normalizer == "batch_tokens" else rows.sum() * mean_length
        totals += np.bincount(length_class(lengths), weights=lengths / denominator, minlength=len(CLASSES))
    return totals / totals.sum()


def example_shares(split: TokenizedSplit) -> np.ndarray:
    return np.bincount(length_class(split.lengths), minlength=len(CLASSES)) / len(split)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--seeds", type=int, default=3,
                        help="epoch orders to average over (default %(default)s)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    config = config_from_args(args)
    _, splits = load_splits(config, ("train", "dev", "test"))
    rows = []
    for group_by_length in (False, True):
        for normalizer in COSINE_NORMALIZERS:
            shares = np.mean([
                cosine_weight_shares(config, splits["train"], config.seed + s, group_by_length, normalizer)
                for s in range(args.seeds)
            ], axis=0)
            rows.append({"batches": "grouped" if group_by_length else "random", "normalizer": normalizer,
                         "shares": shares.tolist()})
    examples = {name: example_shares(split).tolist() for name, split in splits.items()}

    print(f"Share of one epoch's cosine-loss weight by example length (tokens), batch {config.batch_size}, "
          f"mean of {args.seeds} epoch orders; train mean length {splits['train'].lengths.mean():.2f}\n")
    print("| batches | cosine_normalizer | " + " | ".join(CLASSES) + " |")
    print("|---|---|" + "---:|" * len(CLASSES))
    for row in rows:
        cells = " | ".join(f"{s:.3f}" for s in row["shares"])
        print(f"| {row['batches']} | {row['normalizer']} | {cells} |")
    for name, shares in examples.items():
        label = "train examples (CE and KL, any batching)" if name == "train" else f"{name} examples"
        print(f"| share of {label} | | " + " | ".join(f"{s:.3f}" for s in shares) + " |")
    result = {"classes": list(CLASSES), "seeds": args.seeds, "cosine_weight": rows, "examples": examples}
    print("\n" + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
