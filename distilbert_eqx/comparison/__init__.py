"""Comparisons of training recipes ("arms") over seeds: the paired statistic (`paired`) and the runner's
library (`runner`: the comparison file, run states, records, the summary table)."""

from .paired import Correct, mean_accuracy, paired_difference, pool_splits
from .runner import (
    Arm,
    Comparison,
    ComparisonError,
    Run,
    RunsFailed,
    check_configs,
    check_teachers,
    print_plan,
    print_table,
    read_comparison,
    select_runs,
    summarise,
    train,
)

__all__ = [
    "Arm",
    "Comparison",
    "ComparisonError",
    "Correct",
    "Run",
    "RunsFailed",
    "check_configs",
    "check_teachers",
    "mean_accuracy",
    "paired_difference",
    "pool_splits",
    "print_plan",
    "print_table",
    "read_comparison",
    "select_runs",
    "summarise",
    "train",
]
