"""The comparison runner's library: the comparison file, each run's state, its record, and the summary table.

A comparison file (YAML) names the training script (``distill`` or ``finetune``), its config, the
``output_root``, the ``seeds``, the ``control`` arm, overrides for every run (``set``), the ``arms`` (each a
``name`` and its own ``set``) and optionally ``records``, the folder that keeps one JSON record per finished
run. Every run goes to ``output_root/<arm>/seed<S>``. A run is ``finished`` (a ``summary/steps`` record in its
``metrics.jsonl`` and its final model folder), ``resumable`` (a checkpoint), ``new``, or ``recorded`` (its
record exists, whether or not its folder does). A record holds the run's predictions and labels on dev and
test for its ``best/`` and final models, its summary metrics, its overrides, the teacher's sha256, the
machine, the date and the commit. `summarise` pairs each arm with the control by seed and reports
`paired_difference` on dev+test pooled. ``experiments/compare.py`` is the command that trains the runs (one
subprocess each) and prints the table.
"""

import dataclasses
import datetime
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ..checkpoint import CheckpointManager, atomic_write_text, temp_sibling
from ..config import ConfigError, ExperimentConfig, check_keys, load_config, read_yaml_file
from ..errors import UserError
from ..experiment import evaluate_checkpoint
from ..provenance import git_commit, machine
from .paired import mean_accuracy, paired_difference, pool_splits

# script name -> (training script, the folder its final model is saved to)
SCRIPTS = {"distill": ("distill_sst2.py", "student"), "finetune": ("finetune_teacher.py", "model")}
REQUIRED_KEYS = ("script", "config", "output_root", "seeds", "control", "arms")
FILE_KEYS = (*REQUIRED_KEYS, "set", "records")
ARM_KEYS = ("name", "set")
# Set per run by the runner; an arm that set them too would be silently overridden.
RUNNER_KEYS = ("seed", "output_dir", "job_name", "resume_from_checkpoint")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MODELS = ("best", "final")
SPLITS = ("dev", "test")
PREDICTIONS = "predictions"
FINISHED, RESUMABLE, NEW, RECORDED = "finished", "resumable", "new", "recorded"
DONE = (FINISHED, RECORDED)


class ComparisonError(UserError):
    """The comparison file or the command line is invalid; the message names the key and what is expected."""


class RunsFailed(UserError):
    """Some training runs failed; the others ran, and rerunning the command retries the failed ones."""


@dataclasses.dataclass(frozen=True)
class Arm:
    """One recipe: its name (its folder under ``output_root``) and its config overrides."""

    name: str
    overrides: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A validated comparison file."""

    source: Path
    script: str
    config: str
    output_root: Path
    seeds: tuple[int, ...]
    control: str
    overrides: tuple[str, ...]
    arms: tuple[Arm, ...]
    records: Path | None = None

    @property
    def final_name(self) -> str:
        """The run folder's subfolder that holds the final model."""
        return SCRIPTS[self.script][1]

    def model_folder(self, model: str) -> str:
        """The run folder's subfolder that holds ``model`` (``"best"`` or ``"final"``)."""
        return "best" if model == "best" else self.final_name


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: an arm with one seed, in its own output folder."""

    arm: Arm
    seed: int
    output_dir: Path

    @property
    def label(self) -> str:
        return f"{self.arm.name} seed {self.seed}"


def _fail(where: str, message: str) -> NoReturn:
    raise ComparisonError(f"{where}: {message}")


def _overrides(value: object, where: str) -> tuple[str, ...]:
    """A ``set`` list: strings ``key=value``; the keys this script sets per run are refused."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        _fail(
            where,
            f"set={value!r}; expected a list of key=value strings (quote values with commas or brackets)",
        )
    for override in value:
        name = override.partition("=")[0].strip()
        if name in RUNNER_KEYS:
            _fail(
                where,
                f"set sets {name!r} ({override!r}), which the runner sets for every run "
                f"({', '.join(RUNNER_KEYS)}); remove it",
            )
    return tuple(value)


def _arm(value: object, where: str) -> Arm:
    if not isinstance(value, Mapping):
        _fail(where, f"{value!r}; expected a mapping with keys {', '.join(ARM_KEYS)}")
    check_keys(value, ARM_KEYS, where, ComparisonError)
    name = value.get("name")
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        _fail(
            where,
            f"name={name!r}; expected a folder name of letters, digits, '.', '_' and '-' that starts "
            "with a letter or digit",
        )
    return Arm(name, _overrides(value.get("set", []), f"{where} ({name})"))


def read_comparison(path: str | Path) -> Comparison:
    """Read and validate a comparison file; every problem is a `ComparisonError` naming the key."""
    path = Path(path)
    try:
        document = read_yaml_file(path, "comparison file")
    except ConfigError as e:
        raise ComparisonError(str(e)) from e
    where = str(path)
    if not isinstance(document, Mapping):
        _fail(where, f"expected a mapping with keys {', '.join(FILE_KEYS)}, got {document!r}")
    check_keys(document, FILE_KEYS, where, ComparisonError)
    for key in REQUIRED_KEYS:
        if key not in document:
            _fail(
                where,
                f"missing key {key!r}; a comparison file has {', '.join(REQUIRED_KEYS)} (and optionally set)",
            )
    script = document["script"]
    if script not in SCRIPTS:
        _fail(where, f"script={script!r}; expected one of {', '.join(SCRIPTS)}")
    for key in ("config", "output_root", "control", "records"):
        if key in document and (not isinstance(document[key], str) or not document[key]):
            _fail(where, f"{key}={document[key]!r}; expected a non-empty string")
    seeds = document["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        _fail(where, f"seeds={seeds!r}; expected a non-empty list of ints >= 0")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        _fail(where, f"seeds={seeds!r} lists {repeated} more than once; each seed is one run per arm")
    arms_value = document["arms"]
    if not isinstance(arms_value, list) or not arms_value:
        _fail(where, f"arms={arms_value!r}; expected a non-empty list of arms (name, set)")
    arms = tuple(_arm(value, f"{where}: arms[{i}]") for i, value in enumerate(arms_value))
    names = [arm.name for arm in arms]
    repeated_names = sorted({n for n in names if names.count(n) > 1})
    if repeated_names:
        _fail(where, f"arm names {repeated_names} appear more than once; each arm needs its own folder")
    if document["control"] not in names:
        _fail(where, f"control={document['control']!r} is not one of the arms ({', '.join(names)})")
    return Comparison(
        source=path,
        script=script,
        config=document["config"],
        output_root=Path(document["output_root"]),
        seeds=tuple(seeds),
        control=document["control"],
        overrides=_overrides(document.get("set", []), where),
        arms=arms,
        records=Path(document["records"]) if "records" in document else None,
    )


def with_control(comparison: Comparison, control: str) -> Comparison:
    """The same comparison reported against another of its arms."""
    names = [arm.name for arm in comparison.arms]
    if control not in names:
        raise ComparisonError(
            f"--control {control}: not an arm of {comparison.source}; its arms: {', '.join(names)}"
        )
    return dataclasses.replace(comparison, control=control)


def select_runs(comparison: Comparison, only: Sequence[str] | None, seeds: Sequence[int] | None) -> list[Run]:
    """The runs to train, seed by seed (each seed's pair completes before the next seed starts)."""
    names = [arm.name for arm in comparison.arms]
    unknown = [name for name in only or () if name not in names]
    if unknown:
        raise ComparisonError(
            f"--only {' '.join(unknown)}: not an arm of {comparison.source}; its arms: {', '.join(names)}"
        )
    missing = [s for s in seeds or () if s not in comparison.seeds]
    if missing:
        raise ComparisonError(
            f"--seeds {' '.join(map(str, missing))}: not in the seeds of {comparison.source} "
            f"({list(comparison.seeds)}); add them there first"
        )
    return [
        Run(arm, seed, comparison.output_root / arm.name / f"seed{seed}")
        for seed in comparison.seeds
        if seeds is None or seed in seeds
        for arm in comparison.arms
        if only is None or arm.name in only
    ]


def _summary_metrics(metrics: Path) -> dict[str, Any]:
    """The run's ``summary/...`` record from ``metrics.jsonl`` (prefix dropped); empty when it has none yet."""
    if not metrics.is_file():
        return {}
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line, written by a killed run
        if isinstance(record, dict) and "summary/steps" in record:
            return {k.removeprefix("summary/"): v for k, v in record.items() if k.startswith("summary/")}
    return {}


def run_status(output_dir: Path, final_name: str) -> str:
    """``finished`` (the summary is logged and the final model saved), ``resumable`` (a checkpoint to continue
    from) or ``new``."""
    if _summary_metrics(output_dir / "metrics.jsonl") and (output_dir / final_name).is_dir():
        return FINISHED
    if CheckpointManager(output_dir / "checkpoints", 1, is_writer=False).latest() is not None:
        return RESUMABLE
    return NEW


def record_path(comparison: Comparison, run: Run) -> Path | None:
    """Where the run's record goes, when the comparison keeps records."""
    return None if comparison.records is None else comparison.records / run.arm.name / f"seed{run.seed}.json"


def status(comparison: Comparison, run: Run) -> str:
    """``recorded`` when the run's record exists, else its folder's `run_status`."""
    record = record_path(comparison, run)
    if record is not None and record.is_file():
        return RECORDED
    return run_status(run.output_dir, comparison.final_name)


def run_overrides(comparison: Comparison, run: Run, extra: Sequence[str], resume: bool) -> list[str]:
    """The run's ``--set`` list: a compilation cache shared by the comparison's runs, then the comparison's,
    the arm's, the command line's overrides and the run's own.

    The seeds of an arm (and arms that differ only in settings the programs do not see) compile the same
    programs; with one persistent cache in ``output_root/xla_cache`` only the first run compiles them. A
    ``compilation_cache_dir`` in ``set`` (``null`` for none) comes later and wins.
    """
    overrides = [
        f"compilation_cache_dir={comparison.output_root / 'xla_cache'}",
        *comparison.overrides,
        *run.arm.overrides,
        *extra,
        f"seed={run.seed}",
        f"output_dir={run.output_dir}",
        f"job_name={run.arm.name}-seed{run.seed}",
    ]
    return [*overrides, "resume_from_checkpoint=true"] if resume else overrides


def run_command(
    comparison: Comparison, run: Run, extra: Sequence[str], status: str, scripts: Path
) -> list[str]:
    """The command that trains (or continues) ``run``: its training script in the folder ``scripts``."""
    script = scripts / SCRIPTS[comparison.script][0]
    overrides = run_overrides(comparison, run, extra, resume=status == RESUMABLE)
    if status == NEW and run.output_dir.exists():
        # A new run starts afresh: what an earlier try left without a checkpoint is replaced, not refused.
        overrides.append("overwrite_output_dir=true")
    return [sys.executable, str(script), "--config", comparison.config, "--set", *overrides]


def check_configs(
    comparison: Comparison, runs: Sequence[Run], extra: Sequence[str]
) -> dict[Run, ExperimentConfig]:
    """Load every run's config, so that a typo in an override fails now rather than hours into the comparison."""
    configs = {}
    for run in runs:
        try:
            configs[run] = load_config(comparison.config, run_overrides(comparison, run, extra, resume=False))
        except ConfigError as e:
            raise ComparisonError(f"{comparison.source}: arm {run.arm.name!r}, seed {run.seed}: {e}") from e
    return configs


def check_teachers(comparison: Comparison, configs: Mapping[Run, ExperimentConfig]) -> None:
    """Refuse, before training anything, a run whose teacher is not the one its seed's recorded runs had.

    The arms of one seed are compared with each other (paired by seed), so they must share a teacher; a teacher
    fine-tuned again on another machine can come out with other weights."""
    if comparison.records is None:
        return
    hashes: dict[str, str | None] = {}
    for run, config in configs.items():
        if status(comparison, run) in DONE:
            continue
        teacher = config.teacher_model
        if not teacher:
            continue
        if teacher not in hashes:
            hashes[teacher] = teacher_sha256(teacher)
        if hashes[teacher] is None:
            continue  # no teacher on disk: the run itself says so
        others = {
            other.arm.name: read_record(path)["teacher_sha256"]
            for other in select_runs(comparison, None, [run.seed])
            if (path := record_path(comparison, other)).is_file()
        }
        differing = {arm: sha for arm, sha in others.items() if sha is not None and sha != hashes[teacher]}
        if differing:
            raise ComparisonError(
                f"{run.label}: its teacher {teacher} has weights of sha256 {hashes[teacher]}, but seed {run.seed}'s "
                f"recorded runs had another teacher ({', '.join(f'{a}: {sha}' for a, sha in differing.items())}). "
                f"The arms of a seed are compared with each other, so they must share a teacher: train other seeds "
                f"(--seeds), use that teacher, or delete seed {run.seed}'s records to train the seed again whole"
            )


def train(
    comparison: Comparison,
    runs: Sequence[Run],
    extra: Sequence[str],
    data_dir: str | None,
    *,
    scripts: Path,
    launch: Callable[[list[str]], int],
) -> list[str]:
    """Train every unfinished run, each by ``launch(command)`` (its exit status) with the training scripts in
    the folder ``scripts``; the failed runs, each with why. Each finished run is recorded at once."""
    pending = [run for run in runs if status(comparison, run) not in DONE]
    failures = []
    for i, run in enumerate(pending, 1):
        # Checked again: another session may have finished this run, or checkpointed it, in the meantime.
        state = status(comparison, run)
        if state in DONE:
            continue
        command = run_command(comparison, run, extra, state, scripts)
        print(f"\n== {run.label}: {state} ({i} of {len(pending)})\n{shlex.join(command)}", flush=True)
        # The run replaces its models, so predictions cached from earlier ones would be stale.
        shutil.rmtree(run.output_dir / PREDICTIONS, ignore_errors=True)
        exit_status = launch(command)
        if exit_status != 0:
            failures.append(f"{run.label} (exit status {exit_status})")
        elif run_status(run.output_dir, comparison.final_name) != FINISHED:
            failures.append(f"{run.label} (stopped before its last step)")
        elif comparison.records is not None:
            write_record(
                comparison, run, extra, data_dir
            )  # now, not after the last run: a session can end first
    return failures


def run_predictions(
    output_dir: Path, model: str, split: str, *, folder: str, data_dir: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """The run's ``model`` (saved in ``folder``)'s prediction for each sentence of ``split``, in dataset order,
    and the labels: from the run's predictions cache, filled first by evaluating the model when missing."""
    path = output_dir / PREDICTIONS / f"{model}_{split}.jsonl"
    if not path.is_file():
        # The run's own settings: its truncation length, padded lengths and eval batch size.
        config = json.loads((output_dir / "config.json").read_text(encoding="utf-8"))
        print(f"evaluating {output_dir / folder} on {split}", flush=True)
        path.parent.mkdir(exist_ok=True)
        partial = temp_sibling(path)
        try:
            evaluate_checkpoint(
                str(output_dir / folder),
                data_dir=data_dir or config["data_dir"],
                split=split,
                dataset_id=config["dataset_id"],
                max_length=config["max_length"],
                batch_size=config.get("eval_batch_size") or config["batch_size"],
                buckets=tuple(config["length_buckets"]) if config.get("length_buckets") else None,
                predictions_out=str(partial),
            )
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return np.array([r["prediction"] for r in rows]), np.array([r["label"] for r in rows])


def teacher_sha256(teacher_model: str | Path | None) -> str | None:
    """The sha256 of a run's teacher weights (its ``teacher_model``'s ``model.safetensors``), if on disk."""
    if not teacher_model:
        return None
    weights = Path(teacher_model) / "model.safetensors"
    if not weights.is_file():
        return None
    digest = hashlib.sha256()
    with weights.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def make_record(
    comparison: Comparison, run: Run, extra: Sequence[str], data_dir: str | None
) -> dict[str, Any]:
    """A finished run's record: what the summary needs (predictions and labels) and what says how it was made."""
    config = json.loads((run.output_dir / "config.json").read_text(encoding="utf-8"))
    predictions: dict[str, dict[str, list[int]]] = {model: {} for model in MODELS}
    labels: dict[str, list[int]] = {}
    for model in MODELS:
        for split in SPLITS:
            predicted, split_labels = run_predictions(
                run.output_dir, model, split, folder=comparison.model_folder(model), data_dir=data_dir
            )
            predictions[model][split] = predicted.tolist()
            labels[split] = split_labels.tolist()
    return {
        "arm": run.arm.name,
        "seed": run.seed,
        "config": comparison.config,
        "overrides": run_overrides(comparison, run, extra, resume=False),
        "summary": _summary_metrics(run.output_dir / "metrics.jsonl"),
        "teacher_sha256": teacher_sha256(config.get("teacher_model")),
        "machine": machine(),
        "recorded": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "predictions": predictions,
        "labels": labels,
    }


def write_record(
    comparison: Comparison, run: Run, extra: Sequence[str], data_dir: str | None
) -> dict[str, Any]:
    """Make the finished run's record and write it (atomically) to its `record_path`."""
    record, path = make_record(comparison, run, extra, data_dir), record_path(comparison, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, separators=(",", ":")) + "\n")
    print(f"recorded {run.label} in {path}", flush=True)
    return record


def read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        for model in MODELS:
            for split in SPLITS:
                if len(record["predictions"][model][split]) != len(record["labels"][split]):
                    raise ValueError(f"{model} {split}: as many predictions as labels expected")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ComparisonError(
            f"cannot read the run record {path}: {e}; delete it to train its run again"
        ) from e
    return record


def summarise(comparison: Comparison, data_dir: str | None, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Mean accuracies per arm and each arm minus the control, over the finished runs of the whole comparison.

    Recorded runs are read from their records; finished runs are evaluated (once, then cached) and, when the
    comparison keeps records, recorded.
    """
    finished = [run for run in select_runs(comparison, None, None) if status(comparison, run) in DONE]
    correct: dict[tuple[str, int, str, str], np.ndarray] = {}
    first_labels: dict[str, tuple[Path, np.ndarray]] = {}
    teachers: dict[str, list[str]] = {}
    teacher_of: dict[tuple[str, int], str | None] = {}
    machines: dict[str, list[str]] = {}
    for run in finished:
        path = record_path(comparison, run)
        if path is not None and path.is_file():
            record, source = read_record(path), path
        elif path is not None:
            record, source = write_record(comparison, run, extra, data_dir), path
        else:
            record, source = make_record(comparison, run, extra, data_dir), run.output_dir
        teachers.setdefault(str(record["teacher_sha256"]), []).append(run.label)
        teacher_of[(run.arm.name, run.seed)] = record["teacher_sha256"]
        machines.setdefault(str(record["machine"]), []).append(run.label)
        for model in MODELS:
            for split in SPLITS:
                labels = np.asarray(record["labels"][split])
                right = np.asarray(record["predictions"][model][split]) == labels
                # Pairing by sentence needs every run scored on the same sentences, in the same order.
                first_source, first = first_labels.setdefault(split, (source, labels))
                if not np.array_equal(labels, first):
                    raise ComparisonError(
                        f"the {split} predictions of {source} and {first_source} have different labels: were "
                        f"they evaluated on different data? Delete their {PREDICTIONS}/ folders (or records) to "
                        "evaluate again"
                    )
                correct[(run.arm.name, run.seed, model, split)] = right.astype(np.float64)

    def stacked(arm: str, seeds: Sequence[int], model: str, split: str) -> np.ndarray:
        return np.stack([correct[(arm, seed, model, split)] for seed in seeds])

    def pooled(arm: str, seeds: Sequence[int], model: str) -> np.ndarray:
        return pool_splits(*(stacked(arm, seeds, model, split) for split in SPLITS))

    finished_seeds = {arm.name: [run.seed for run in finished if run.arm == arm] for arm in comparison.arms}
    rows = []
    for arm in comparison.arms:
        seeds = finished_seeds[arm.name]
        row: dict[str, Any] = {"arm": arm.name, "runs": len(comparison.seeds), "finished_seeds": seeds}
        row["accuracy"] = {
            model: {
                split: mean_accuracy(stacked(arm.name, seeds, model, split)) if seeds else None
                for split in SPLITS
            }
            for model in MODELS
        }
        if arm.name != comparison.control:
            with_control = [seed for seed in seeds if seed in finished_seeds[comparison.control]]
            # A seed is paired only when both runs had the same teacher (see `check_teachers`).
            paired = [
                s for s in with_control if teacher_of[(arm.name, s)] == teacher_of[(comparison.control, s)]
            ]
            row["unpaired_seeds"] = [s for s in with_control if s not in paired]
            row["minus_control"] = {
                model: {
                    "paired_seeds": paired,
                    **paired_difference(
                        pooled(arm.name, paired, model), pooled(comparison.control, paired, model)
                    ),
                }
                if paired
                else None
                for model in MODELS
            }
        rows.append(row)
    return {
        "comparison": str(comparison.source),
        "control": comparison.control,
        "seeds": list(comparison.seeds),
        "pooled_splits": "+".join(SPLITS),
        "arms": rows,
        "teachers": teachers,
        "machines": machines,
    }


def _accuracy_cell(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _difference_cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return ""
    low, high = result["interval_95"]
    seeds = len(result["paired_seeds"])
    return f"{result['difference']:+.2f} ({low:+.2f} to {high:+.2f}), {seeds} seed{'s' if seeds > 1 else ''}"


def print_table(summary: dict[str, Any]) -> None:
    control = summary["control"]
    print(
        f"\nAccuracy in points, mean over the finished seeds. Minus control: each arm minus {control} on "
        f"{summary['pooled_splits']} pooled, paired by seed, with the 95% interval of a bootstrap over seeds and "
        "sentences.\n"
    )
    print(
        "| arm | runs | best dev | best test | final dev | final test | best minus control | final minus control |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for row in summary["arms"]:
        accuracy = row["accuracy"]
        cells = [_accuracy_cell(accuracy[model][split]) for model in MODELS for split in SPLITS]
        if row["arm"] == control:
            differences = ["control", "control"]
        else:
            differences = [_difference_cell(row["minus_control"][model]) for model in MODELS]
        print(
            f"| {row['arm']} | {len(row['finished_seeds'])}/{row['runs']} | {' | '.join(cells)} | "
            f"{' | '.join(differences)} |"
        )
    for row in summary["arms"]:
        if row.get("unpaired_seeds"):
            print(
                f"\n{row['arm']}: seed(s) {', '.join(map(str, row['unpaired_seeds']))} not compared with "
                f"{control}: their runs had different teachers"
            )
    for what, key in (("teacher (weights sha256)", "teachers"), ("machine", "machines")):
        groups = summary.get(key, {})
        if len(groups) > 1:
            print(f"\nThe runs had {len(groups)} different {what}s:")
            for name, labels in groups.items():
                print(f"  {name}: {', '.join(labels)}")
        elif groups:
            print(f"{what}: {next(iter(groups))}")


def print_plan(
    comparison: Comparison, runs: Sequence[Run], extra: Sequence[str], scripts: Path
) -> dict[str, Any]:
    """Print each run's state and the command that would train it; the same as a dict ``{"runs": [...]}``."""
    planned = []
    for run in runs:
        state = status(comparison, run)
        command = None if state in DONE else run_command(comparison, run, extra, state, scripts)
        print(f"{run.label}: {state}" + ("" if command is None else f"\n  {shlex.join(command)}"))
        planned.append({"arm": run.arm.name, "seed": run.seed, "status": state, "command": command})
    return {"runs": planned}
