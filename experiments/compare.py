"""Compare training recipes over seeds: train every arm x seed, evaluate them, report each arm minus the control.

    python experiments/compare.py experiments/comparisons/example.yaml   # train what is missing, then report
    python experiments/compare.py FILE --dry-run    # the commands, and which runs are finished/resumable/new
    python experiments/compare.py FILE --no-run     # train nothing: evaluate and report what has finished
    python experiments/compare.py FILE --only ARM ... --seeds SEED ... [--data-dir DIR]
    python experiments/compare.py FILE --no-run --control ARM   # the same runs, each arm minus ARM

The comparison file names the training script, its config, the ``output_root``, the ``seeds``, the ``control``
arm, overrides for every run (``set``), the ``arms`` (a ``name`` and its ``set``) and optionally ``records``;
``experiments/comparisons/example.yaml`` is one, ``distilbert_eqx.comparison.runner`` says what each part
means. Each run goes to ``output_root/<arm>/seed<S>`` as its own subprocess, seed by seed so that pairs
complete first. A finished or recorded run is skipped, one with checkpoints continues, a failed one is
reported at the end (exit status 2) while the others still run; Ctrl-C stops the current run after its step.

The ``best/`` and final model of every finished run are then evaluated on dev and test (and recorded, with
``records``); the table gives each arm's mean accuracies and the arm minus the control on dev+test pooled,
paired by seed, with a 95% bootstrap interval over seeds and sentences; ``output_root/summary.json`` and the
last line hold the same as JSON. ``--only`` and ``--seeds`` choose what is trained; the report covers all.
``--control`` reports against another arm (e.g. what an added ingredient gives over the arm without it); that
report goes to ``output_root/summary_minus_<ARM>.json``.
"""

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from distilbert_eqx.checkpoint import atomic_write_text
from distilbert_eqx.cli import run_script
from distilbert_eqx.comparison import runner

EXPERIMENTS = Path(__file__).resolve().parent


def launch(command: list[str]) -> int:
    """Run one training command to its end, its output going straight to ours; its exit status.

    The run gets its own process group, so a Ctrl-C at the terminal reaches only this script, which passes one
    SIGINT on: the run then finishes its step, saves a checkpoint and exits, and this script stops after it.
    A second SIGINT to the run could cut that save short.
    """
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, process_group=0)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        print(
            "\nstopping: the run saves a checkpoint first; rerun this command to continue",
            file=sys.stderr,
            flush=True,
        )
        process.wait()
        raise


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("file", type=Path, help="the comparison file (YAML)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="print each run's state and the commands it would run; run and evaluate nothing",
    )
    mode.add_argument(
        "--no-run", action="store_true", help="train nothing: evaluate and report what has finished"
    )
    parser.add_argument("--only", nargs="+", metavar="ARM", default=None, help="train only these arms")
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        metavar="SEED",
        default=None,
        help="train only these of the file's seeds",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="SST-2 folder for training and evaluation (default: each run's config's data_dir)",
    )
    parser.add_argument(
        "--control",
        metavar="ARM",
        default=None,
        help="report each arm minus this arm instead of the file's control (the runs are the same)",
    )
    args = parser.parse_args(argv)
    comparison = runner.read_comparison(args.file)
    file_control = comparison.control
    if args.control is not None:
        comparison = runner.with_control(comparison, args.control)
    runs = runner.select_runs(comparison, args.only, args.seeds)
    extra = [] if args.data_dir is None else [f"data_dir={args.data_dir}"]
    if not args.no_run:
        runner.check_teachers(comparison, runner.check_configs(comparison, runs, extra))
    if args.dry_run:
        return runner.print_plan(comparison, runs, extra, EXPERIMENTS)
    failures = (
        []
        if args.no_run
        else runner.train(comparison, runs, extra, args.data_dir, scripts=EXPERIMENTS, launch=launch)
    )
    summary = {**runner.summarise(comparison, args.data_dir, extra), "failed": failures}
    runner.print_table(summary)
    comparison.output_root.mkdir(parents=True, exist_ok=True)
    name = (
        "summary.json" if comparison.control == file_control else f"summary_minus_{comparison.control}.json"
    )
    atomic_write_text(comparison.output_root / name, json.dumps(summary, indent=2))
    print("\n" + json.dumps(summary))
    if failures:
        raise runner.RunsFailed(
            f"{len(failures)} run(s) failed: {'; '.join(failures)}. Their output is above; rerun the command to "
            "retry them (finished runs are skipped)"
        )
    return summary


if __name__ == "__main__":
    raise SystemExit(run_script(main))
