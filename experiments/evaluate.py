"""Accuracy of any Hugging Face sequence-classification checkpoint (ours or transformers') on SST-2.

    python experiments/evaluate.py --model runs/distill_minilm/student --data-dir ../shared/data/sst2 --split dev

Prints one JSON line: {"accuracy": ..., "n": ...}.
"""

import argparse
import json

from distilbert_eqx.cli import run_script
from distilbert_eqx.experiment import evaluate_checkpoint


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="folder (config.json + model.safetensors + tokenizer) or hub id"
    )
    parser.add_argument(
        "--data-dir", default=None, help="folder of GLUE TSV files; omit to use the hub's glue/sst2"
    )
    parser.add_argument("--split", default="dev", choices=["train", "dev", "test"])
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--predictions-out", default=None, help="write per-example predictions here (JSON lines)"
    )
    args = parser.parse_args(argv)
    result = evaluate_checkpoint(
        args.model,
        data_dir=args.data_dir,
        split=args.split,
        max_length=args.max_length,
        batch_size=args.batch_size,
        predictions_out=args.predictions_out,
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    raise SystemExit(run_script(main))
