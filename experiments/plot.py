"""Draw a run's metrics, or a comparison's arms minus the control, to PNG (``pip install -e ".[plots]"``).

    python experiments/plot.py run runs/minilm_student_kd [--out FILE.png]
    python experiments/plot.py comparison experiments/comparisons/three_layer.yaml [--out FILE.png]
    python experiments/plot.py comparison runs/compare/three_layer/summary.json [--out FILE.png]

``run`` reads the run folder's ``metrics.jsonl`` and draws the train loss and each loss term, the learning
rate, the gradient norm, and the validation accuracy and loss against steps (default: ``<run>/metrics.png``).
``comparison`` reads a comparison file's finished runs (their records in its ``records`` folder, or their run
folders, evaluated once as ``compare.py --no-run`` does) or a ``summary.json`` that ``compare.py`` wrote, and
draws each arm minus the control with its 95% interval, for ``best/`` and the final model (default: beside the
file, ``<name>.png``).
"""

import argparse
import json
from pathlib import Path

from distilbert_eqx.cli import run_script
from distilbert_eqx.comparison import read_comparison, summarise
from distilbert_eqx.plots import plot_comparison, plot_run


def main(argv: list[str] | None = None) -> str:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="a run's metrics.jsonl against steps")
    run.add_argument("path", type=Path, help="the run folder (or its metrics.jsonl)")
    run.add_argument("--out", type=Path, default=None, help="the PNG (default: <run>/metrics.png)")
    comparison = commands.add_parser("comparison", help="each arm minus the control, with its interval")
    comparison.add_argument("path", type=Path, help="the comparison file (YAML) or a summary.json")
    comparison.add_argument("--out", type=Path, default=None, help="the PNG (default: beside the file)")
    comparison.add_argument("--data-dir", default=None, help="SST-2 folder, for runs not yet evaluated")
    args = parser.parse_args(argv)
    if args.command == "run":
        folder = args.path if args.path.is_dir() else args.path.parent
        written = plot_run(args.path, args.out or folder / "metrics.png")
    else:
        if args.path.suffix == ".json":
            summary = json.loads(args.path.read_text(encoding="utf-8"))
        else:
            summary = summarise(read_comparison(args.path), args.data_dir)
        written = plot_comparison(summary, args.out or args.path.with_suffix(".png"))
    print(written)
    return str(written)


if __name__ == "__main__":
    raise SystemExit(run_script(main))
