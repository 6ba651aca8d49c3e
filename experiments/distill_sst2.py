"""Distil a BERT teacher into a DistilBERT student on SST-2.

    python experiments/distill_sst2.py --config experiments/configs/FILE.yaml [--set key=value ...] [--debug]

A bad config value, data file or checkpoint is reported in one line (exit status 2); --debug shows the traceback.
"""

import argparse
import json

from distilbert_eqx.cli import run_script
from distilbert_eqx.config import add_config_args, config_from_args
from distilbert_eqx.experiment import distill


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    summary = distill(config_from_args(parser.parse_args(argv)))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    raise SystemExit(run_script(main))
