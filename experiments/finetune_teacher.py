"""Fine-tune a BERT checkpoint on SST-2 with the label loss (how the offline teacher is made).

    python experiments/finetune_teacher.py --config experiments/configs/FILE.yaml [--set key=value ...] [--debug]

A bad config value, data file or checkpoint is reported in one line (exit status 2); --debug shows the traceback.
"""

import argparse
import json

from distilbert_eqx.cli import run_script
from distilbert_eqx.config import add_config_args, config_from_args
from distilbert_eqx.experiment import finetune


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    summary = finetune(config_from_args(parser.parse_args(argv)))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    raise SystemExit(run_script(main))
