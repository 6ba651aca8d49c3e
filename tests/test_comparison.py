"""The paired statistic over seeds and sentences (distilbert_eqx.comparison.paired), and the comparison
runner (distilbert_eqx.comparison.runner, run by experiments/compare.py): its file validation, planning and
summary on fabricated run folders, and one tiny comparison end to end."""

import hashlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import jaxtyping
import numpy as np
import pytest
import yaml

from distilbert_eqx.comparison import mean_accuracy, paired_difference, pool_splits, runner
from distilbert_eqx.provenance import machine
from helpers import REPO, make_workspace

sys.path.insert(0, str(REPO / "experiments"))
import compare

CONFIG = REPO / "experiments/configs/sst2_minilm_offline.yaml"


# paired_difference ------------------------------------------------------------------------------------------


def test_paired_difference_by_hand():
    arm = np.array([[1, 1, 0, 1], [1, 0, 0, 1]], np.float64)
    control = np.array([[1, 0, 0, 1], [0, 0, 1, 1]], np.float64)
    # arm - control = [[0, 1, 0, 0], [1, 0, -1, 0]]: per seed 0.25 and 0, per sentence 0.5, 0.5, -0.5, 0.
    result = paired_difference(arm, control)
    assert (result["seeds"], result["sentences"]) == (2, 4)
    assert result["difference"] == pytest.approx(12.5)
    assert result["se_seeds"] == pytest.approx(100 * np.sqrt(0.125**2 + 0.125**2) / np.sqrt(2))
    deviations = np.array([0.5, 0.5, -0.5, 0]) - 0.125
    assert result["se_sentences"] == pytest.approx(100 * np.sqrt((deviations**2).sum() / 3) / 2)
    low, high = result["interval_95"]
    assert -100 <= low <= result["difference"] <= high <= 100
    assert paired_difference(arm, control) == result  # the bootstrap's seed makes it reproducible


def test_without_seed_variance_the_interval_is_the_sentences_normal_interval():
    rng = np.random.default_rng(0)
    sentences = 1000
    arm_row = (rng.random(sentences) < 0.88).astype(np.float64)
    control_row = (rng.random(sentences) < 0.85).astype(np.float64)
    # Every seed gets the same sentences right, so resampling the seeds changes nothing.
    arm, control = np.tile(arm_row, (3, 1)), np.tile(control_row, (3, 1))
    result = paired_difference(arm, control, resamples=10_000)
    assert result["se_seeds"] == 0
    half_width = 1.96 * result["se_sentences"]
    low, high = result["interval_95"]
    assert low == pytest.approx(result["difference"] - half_width, abs=0.05 * half_width)
    assert high == pytest.approx(result["difference"] + half_width, abs=0.05 * half_width)


def test_without_sentence_variance_the_interval_spans_the_seeds():
    ones, zeros = np.ones(50), np.zeros(50)
    # Seed differences -1, 0, +1, the same on every sentence: a bootstrap of 3 seeds draws all three alike with
    # probability 1/27 > 2.5% each, so the interval reaches the extremes.
    arm = np.stack([zeros, ones, ones])
    control = np.stack([ones, ones, zeros])
    result = paired_difference(arm, control)
    assert result["difference"] == 0 and result["se_sentences"] == 0
    assert result["se_seeds"] == pytest.approx(100 / np.sqrt(3))
    assert result["interval_95"] == [-100, 100]


def test_one_seed_has_no_standard_error_over_seeds():
    arm = np.array([[1, 1, 0, 1]], np.float64)
    control = np.array([[1, 0, 0, 1]], np.float64)
    result = paired_difference(arm, control)
    assert result["seeds"] == 1 and result["se_seeds"] is None
    assert result["difference"] == pytest.approx(25)


def test_paired_difference_rejects_unpaired_or_empty_inputs():
    two_by_four = np.zeros((2, 4))
    with pytest.raises(ValueError, match="arm has 2 seeds x 4 sentences but control has 3 x 4"):
        paired_difference(two_by_four, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="arm has 2 seeds x 4 sentences but control has 2 x 5"):
        paired_difference(two_by_four, np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"control has shape \(0, 4\); expected .* at least one seed"):
        paired_difference(two_by_four, np.zeros((0, 4)))
    with pytest.raises(ValueError, match="resamples=0"):
        paired_difference(two_by_four, two_by_four, resamples=0)
    with pytest.raises(jaxtyping.TypeCheckError):
        paired_difference(np.zeros(4), np.zeros(4))
    with pytest.raises(jaxtyping.TypeCheckError):
        paired_difference(two_by_four.astype(np.int64), two_by_four)


def test_pool_splits_and_mean_accuracy():
    dev = np.array([[1, 0, 1], [0, 0, 1]], np.float64)
    test = np.array([[1, 1], [0, 1]], np.float64)
    np.testing.assert_array_equal(pool_splits(dev, test), [[1, 0, 1, 1, 1], [0, 0, 1, 0, 1]])
    with pytest.raises(ValueError, match="different numbers of seeds"):
        pool_splits(dev, test[:1])
    assert mean_accuracy(dev) == pytest.approx(50)
    with pytest.raises(ValueError, match="at least one seed"):
        mean_accuracy(np.zeros((0, 3)))


# The runner on fabricated run folders ----------------------------------------------------------------------

LABELS = {"dev": [0, 1, 1, 0, 1, 0], "test": [1, 0, 0, 1]}


def document(root: Path, **changes) -> dict:
    values = {
        "script": "distill",
        "config": str(CONFIG),
        "output_root": str(root),
        "seeds": [1, 2],
        "control": "labels_only",
        "set": ["max_steps=2"],
        "arms": [
            {"name": "labels_only", "set": ["alpha_kl=0", "alpha_cos=0"]},
            {"name": "original", "set": []},
        ],
    }
    return values | changes


def write_comparison(tmp_path: Path, values: dict) -> Path:
    path = tmp_path / "comparison.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def correctness(arm: str, seed: int, model: str, split: str) -> np.ndarray:
    """A fabricated run's per-sentence right (1) / wrong (0), different for every arm, seed, model and split."""
    rng = np.random.default_rng([len(arm), seed, len(model), len(split)])
    return (rng.random(len(LABELS[split])) < 0.6).astype(np.float64)


def fabricate_run(
    out: Path, arm: str, seed: int, final: str = "student", labels=LABELS, teacher: Path | None = None
) -> None:
    """A finished run's folder: its config, a summary record, its models' folders and its predictions cached."""
    for folder in ("best", final, "predictions"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"teacher_model": str(teacher or out / "no-teacher")}))
    records = [{"step": 2, "loss": 0.5}, {"step": 2, "summary/steps": 2, "summary/wall_time_sec": 3.5}]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for model in runner.MODELS:
        for split in runner.SPLITS:
            right = correctness(arm, seed, model, split)
            rows = [{"prediction": y if ok else 1 - y, "label": y} for y, ok in zip(labels[split], right)]
            text = "".join(json.dumps(r) + "\n" for r in rows)
            (out / "predictions" / f"{model}_{split}.jsonl").write_text(text)


def expected_difference(arm: str, seeds: list[int], model: str, control: str = "labels_only") -> dict:
    def pooled(name):
        return np.concatenate(
            [np.stack([correctness(name, s, model, split) for s in seeds]) for split in runner.SPLITS], axis=1
        )

    return {"paired_seeds": seeds, **paired_difference(pooled(arm), pooled(control))}


def _no_evaluation(*args, **kwargs):
    raise AssertionError("a cached prediction was evaluated again")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(sed=[1]), r"unknown key 'sed' in .*\. Did you mean 'seeds'"),
        (lambda d: d.pop("control"), "missing key 'control'"),
        (
            lambda d: d.update(control="nope"),
            r"control='nope' is not one of the arms \(labels_only, original\)",
        ),
        (lambda d: d["arms"].append({"name": "original"}), r"arm names \['original'\] appear more than once"),
        (lambda d: d["arms"].append({"name": "../up"}), r"arms\[2\]: name='../up'; expected a folder name"),
        (lambda d: d["arms"].append({"name": "a b"}), r"arms\[2\]: name='a b'"),
        (lambda d: d["arms"].append({"set": []}), r"arms\[2\]: name=None"),
        (lambda d: d["arms"].append({"name": "x", "sets": []}), r"'sets' in .*\[2\]\. Did you mean 'set'"),
        (
            lambda d: d["arms"].append({"name": "x", "set": "alpha_kl=0"}),
            r"arms\[2\] \(x\): set='alpha_kl=0'",
        ),
        (lambda d: d.update(arms=[]), "arms=.*expected a non-empty list"),
        (lambda d: d.update(seeds=[]), r"seeds=\[\]; expected a non-empty list of ints >= 0"),
        (lambda d: d.update(seeds=[1, True]), "expected a non-empty list of ints"),
        (lambda d: d.update(seeds=[3, 1, 3]), r"lists \[3\] more than once"),
        (lambda d: d.update(script="train"), "script='train'; expected one of distill, finetune"),
        (lambda d: d.update(output_root=""), "output_root=''; expected a non-empty string"),
        (lambda d: d.update(records=["a"]), r"records=\['a'\]; expected a non-empty string"),
        (lambda d: d.update(set=["seed=3"]), "set sets 'seed' .* remove it"),
        (
            lambda d: d["arms"][1].update(set=["output_dir=elsewhere"]),
            r"arms\[1\] \(original\): set sets 'output_dir'",
        ),
    ],
)
def test_invalid_comparison_files_name_the_key(tmp_path, change, message):
    values = document(tmp_path / "runs")
    change(values)
    with pytest.raises(runner.ComparisonError, match=message):
        runner.read_comparison(write_comparison(tmp_path, values))


def test_a_comparison_file_is_read_as_config_files_are(tmp_path):
    path = write_comparison(tmp_path, document(tmp_path / "runs"))
    path.write_text(path.read_text() + "control: original\n")
    with pytest.raises(runner.ComparisonError, match=r"comparison file .*: key 'control' appears twice"):
        runner.read_comparison(path)
    path.write_bytes(b"script: distill\nconfig: caf\xe9.yaml\n")
    with pytest.raises(runner.ComparisonError, match=r":2: not UTF-8 text"):
        runner.read_comparison(path)


def test_invalid_command_line_selections_and_config_typos_fail_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "launch", lambda command: pytest.fail("launched a run"))
    values = document(tmp_path / "runs")
    path = write_comparison(tmp_path, values)
    with pytest.raises(runner.ComparisonError, match="--only other: not an arm"):
        compare.main([str(path), "--only", "other"])
    with pytest.raises(runner.ComparisonError, match=r"--seeds 7: not in the seeds .* \(\[1, 2\]\)"):
        compare.main([str(path), "--seeds", "1", "7"])
    values["arms"][1]["set"] = ["alpah_kl=0.5"]
    path = write_comparison(tmp_path, values)
    for args in ([], ["--dry-run"]):
        message = "arm 'original', seed 1: unknown config key 'alpah_kl'"
        with pytest.raises(runner.ComparisonError, match=message):
            compare.main([str(path), *args])
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "path", sorted((REPO / "experiments/comparisons").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_comparison_file_reads_and_every_run_config_loads(path, monkeypatch):
    monkeypatch.chdir(REPO)  # its paths are relative to the folder it is run from: the repository's root
    comparison = runner.read_comparison(path)
    runs = runner.select_runs(comparison, None, None)
    assert len(runs) == len(comparison.arms) * len(comparison.seeds)
    runner.check_configs(comparison, runs, [])


def test_run_status_finished_resumable_or_new(tmp_path):
    out = tmp_path / "run"
    assert runner.run_status(out, "student") == runner.NEW
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.7}) + "\n")
    assert runner.run_status(out, "student") == runner.NEW
    # A save in progress (or cut short) is no checkpoint to resume from.
    (out / "checkpoints" / ".tmp-step_00000002-123").mkdir(parents=True)
    assert runner.run_status(out, "student") == runner.NEW
    (out / "checkpoints" / "step_00000001").mkdir()
    assert runner.run_status(out, "student") == runner.RESUMABLE
    (out / "student").mkdir()
    assert runner.run_status(out, "student") == runner.RESUMABLE  # no summary record yet
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 2, "summary/steps": 2}) + "\n" + '{"step": 3, "lo')  # a torn last line
    assert runner.run_status(out, "student") == runner.FINISHED
    assert runner.run_status(out, "model") == runner.RESUMABLE  # a fine-tuning run saves model/


def test_dry_run_lists_each_runs_state_and_command(tmp_path, capsys):
    root = tmp_path / "runs"
    path = write_comparison(tmp_path, document(root, seeds=[1, 2, 3]))
    fabricate_run(root / "labels_only/seed1", "labels_only", 1)
    (root / "original/seed1/checkpoints/step_00000001").mkdir(parents=True)
    plan = compare.main([str(path), "--dry-run", "--seeds", "1", "2", "--data-dir", "/data"])
    assert [(r["arm"], r["seed"], r["status"]) for r in plan["runs"]] == [
        ("labels_only", 1, "finished"),
        ("original", 1, "resumable"),
        ("labels_only", 2, "new"),
        ("original", 2, "new"),
    ]
    assert plan["runs"][0]["command"] is None
    assert plan["runs"][1]["command"] == [
        sys.executable,
        str(REPO / "experiments/distill_sst2.py"),
        "--config",
        str(CONFIG),
        "--set",
        f"compilation_cache_dir={root / 'xla_cache'}",
        "max_steps=2",
        "data_dir=/data",
        "seed=1",
        f"output_dir={root / 'original/seed1'}",
        "job_name=original-seed1",
        "resume_from_checkpoint=true",
    ]
    assert plan["runs"][2]["command"][-6:] == [
        "alpha_kl=0",
        "alpha_cos=0",
        "data_dir=/data",
        "seed=2",
        f"output_dir={root / 'labels_only/seed2'}",
        "job_name=labels_only-seed2",
    ]
    # A new run whose folder an earlier try left without a checkpoint starts afresh over it.
    (root / "original/seed2").mkdir(parents=True)
    (root / "original/seed2/metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n')
    plan = compare.main([str(path), "--dry-run", "--seeds", "2", "--only", "original"])
    assert (plan["runs"][0]["status"], plan["runs"][0]["command"][-1]) == ("new", "overwrite_output_dir=true")
    out = capsys.readouterr().out
    assert "labels_only seed 1: finished\noriginal seed 1: resumable\n" in out
    only = compare.main([str(path), "--dry-run", "--only", "original"])
    assert [(r["arm"], r["seed"]) for r in only["runs"]] == [
        ("original", 1),
        ("original", 2),
        ("original", 3),
    ]
    assert not (root / "summary.json").exists()


def test_failed_runs_are_reported_at_the_end_and_retried_on_the_next_call(tmp_path, monkeypatch, capsys):
    root = tmp_path / "runs"
    path = write_comparison(tmp_path, document(root))
    monkeypatch.setattr(runner, "evaluate_checkpoint", _no_evaluation)
    launched = []
    # labels_only seed 2 stops early with status 0 (as after its own Ctrl-C); original seed 2 crashes.
    broken = {"labels_only/seed2": 0, "original/seed2": 1}

    def launch(command):
        out = Path(next(a for a in command if a.startswith("output_dir=")).removeprefix("output_dir="))
        run = f"{out.parent.name}/{out.name}"
        launched.append((run, command[-1] == "resume_from_checkpoint=true"))
        if run in broken:
            (out / "checkpoints/step_00000001").mkdir(parents=True)
            return broken[run]
        fabricate_run(out, out.parent.name, int(out.name.removeprefix("seed")))
        return 0

    monkeypatch.setattr(compare, "launch", launch)
    with pytest.raises(runner.RunsFailed) as failed:
        compare.main([str(path)])
    assert str(failed.value).startswith(
        "2 run(s) failed: labels_only seed 2 (stopped before its last step); original seed 2 (exit status 1)."
    )
    assert launched == [
        ("labels_only/seed1", False),
        ("original/seed1", False),
        ("labels_only/seed2", False),
        ("original/seed2", False),
    ]
    summary = json.loads((root / "summary.json").read_text())
    assert summary["failed"] == [
        "labels_only seed 2 (stopped before its last step)",
        "original seed 2 (exit status 1)",
    ]
    arms = {row["arm"]: row for row in summary["arms"]}
    assert arms["labels_only"]["finished_seeds"] == arms["original"]["finished_seeds"] == [1]
    assert arms["original"]["minus_control"]["best"] == expected_difference("original", [1], "best")
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == summary
    assert "| original | 1/2 |" in out

    # The next call resumes the two unfinished runs from their checkpoints and skips the finished ones.
    broken.clear()
    launched.clear()
    summary = compare.main([str(path)])
    assert launched == [("labels_only/seed2", True), ("original/seed2", True)]
    arms = {row["arm"]: row for row in summary["arms"]}
    assert "minus_control" not in arms["labels_only"]
    for model in runner.MODELS:
        assert arms["original"]["minus_control"][model] == expected_difference("original", [1, 2], model)
        for split in runner.SPLITS:
            mean = np.mean([correctness("original", s, model, split).mean() for s in (1, 2)])
            assert arms["original"]["accuracy"][model][split] == pytest.approx(100 * mean)
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| original |")]
    best = summary["arms"][1]["minus_control"]["best"]
    low, high = best["interval_95"]
    assert f"| {best['difference']:+.2f} ({low:+.2f} to {high:+.2f}), 2 seeds |" in table[0]

    monkeypatch.setattr(compare, "launch", lambda command: pytest.fail("--no-run launched a run"))
    assert compare.main([str(path), "--no-run"]) == summary


def test_the_summary_pairs_only_the_seeds_both_arms_finished(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    path = write_comparison(tmp_path, document(root, seeds=[1, 2, 3]))
    monkeypatch.setattr(runner, "evaluate_checkpoint", _no_evaluation)
    for arm, seed in [("labels_only", 1), ("labels_only", 2), ("original", 2), ("original", 3)]:
        fabricate_run(root / arm / f"seed{seed}", arm, seed)
    summary = compare.main([str(path), "--no-run"])
    arms = {row["arm"]: row for row in summary["arms"]}
    assert arms["labels_only"]["finished_seeds"] == [1, 2] and arms["original"]["finished_seeds"] == [2, 3]
    assert arms["original"]["minus_control"]["final"] == expected_difference("original", [2], "final")


def test_another_arm_can_be_the_control_of_the_report(tmp_path, monkeypatch, capsys):
    root = tmp_path / "runs"
    arms = document(root)["arms"] + [{"name": "original_more", "set": ["alpha_cos=0"]}]
    path = write_comparison(tmp_path, document(root, arms=arms))
    monkeypatch.setattr(runner, "evaluate_checkpoint", _no_evaluation)
    monkeypatch.setattr(compare, "launch", lambda command: pytest.fail("--no-run launched a run"))
    for arm in ("labels_only", "original", "original_more"):
        for seed in (1, 2):
            fabricate_run(root / arm / f"seed{seed}", arm, seed)
    by_file = compare.main([str(path), "--no-run"])
    capsys.readouterr()
    summary = compare.main([str(path), "--no-run", "--control", "original"])
    assert summary["control"] == "original"
    rows = {row["arm"]: row for row in summary["arms"]}
    assert "minus_control" not in rows["original"]
    for model in runner.MODELS:
        for arm in ("labels_only", "original_more"):
            expected = expected_difference(arm, [1, 2], model, control="original")
            assert rows[arm]["minus_control"][model] == expected
    assert "each arm minus original" in capsys.readouterr().out
    assert json.loads((root / "summary_minus_original.json").read_text()) == summary
    assert json.loads((root / "summary.json").read_text()) == by_file
    with pytest.raises(runner.ComparisonError, match=r"--control orignal: not an arm of .*original_more"):
        compare.main([str(path), "--no-run", "--control", "orignal"])


def test_predictions_from_other_data_are_refused(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    path = write_comparison(tmp_path, document(root, seeds=[1]))
    monkeypatch.setattr(runner, "evaluate_checkpoint", _no_evaluation)
    fabricate_run(root / "labels_only/seed1", "labels_only", 1)
    fabricate_run(root / "original/seed1", "original", 1, labels={**LABELS, "dev": LABELS["dev"][::-1]})
    with pytest.raises(runner.ComparisonError, match="dev predictions of .* have different labels"):
        compare.main([str(path), "--no-run"])


def test_finished_runs_are_recorded_and_a_record_stands_for_its_deleted_run(tmp_path, monkeypatch, capsys):
    root, records = tmp_path / "runs", tmp_path / "records"
    path = write_comparison(tmp_path, document(root, records=str(records)))
    monkeypatch.setattr(runner, "evaluate_checkpoint", _no_evaluation)
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "model.safetensors").write_bytes(b"teacher weights")
    for arm in ("labels_only", "original"):
        for seed in (1, 2):
            fabricate_run(root / arm / f"seed{seed}", arm, seed, teacher=teacher)
    summary = compare.main([str(path), "--no-run"])
    record = json.loads((records / "original/seed2.json").read_text())
    assert record["arm"] == "original" and record["seed"] == 2
    assert record["labels"] == LABELS
    right = np.array(record["predictions"]["best"]["test"]) == np.array(LABELS["test"])
    np.testing.assert_array_equal(right, correctness("original", 2, "best", "test"))
    assert record["summary"] == {"steps": 2, "wall_time_sec": 3.5}
    assert record["overrides"][-2:] == [f"output_dir={root / 'original/seed2'}", "job_name=original-seed2"]
    assert record["teacher_sha256"] == hashlib.sha256(b"teacher weights").hexdigest()
    assert record["machine"] == machine() and record["recorded"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and "model name" in cpuinfo.read_text():
        assert " (family " in record["machine"]  # the CPU's name, not only its architecture
    assert list(summary["teachers"]) == [record["teacher_sha256"]]
    assert len(summary["teachers"][record["teacher_sha256"]]) == 4

    # The run folders are gone (a new machine): the records are the runs, nothing is trained or evaluated again.
    shutil.rmtree(root)
    monkeypatch.setattr(compare, "launch", lambda command: pytest.fail("launched a recorded run"))
    capsys.readouterr()
    assert compare.main([str(path), "--dry-run"])["runs"][0]["status"] == runner.RECORDED
    assert compare.main([str(path)])["arms"] == summary["arms"]
    assert f"teacher (weights sha256): {record['teacher_sha256']}" in capsys.readouterr().out

    # A seed whose arm and control had different teachers is not paired, and the table says so.
    other = json.loads((records / "labels_only/seed1.json").read_text()) | {"teacher_sha256": "other"}
    (records / "labels_only/seed1.json").write_text(json.dumps(other))
    mixed = compare.main([str(path), "--no-run"])
    out = capsys.readouterr().out
    assert "The runs had 2 different teacher (weights sha256)s:\n  other: labels_only seed 1\n" in out
    assert "original: seed(s) 1 not compared with labels_only: their runs had different teachers" in out
    original = mixed["arms"][1]
    assert original["unpaired_seeds"] == [1] and original["finished_seeds"] == [1, 2]
    assert original["minus_control"]["best"] == expected_difference("original", [2], "best")

    (records / "original/seed1.json").write_text('{"arm": "original", "predictions": {}}')
    unreadable = r"cannot read the run record .*original/seed1.json: .*delete it"
    with pytest.raises(runner.ComparisonError, match=unreadable):
        compare.main([str(path), "--no-run"])


def test_a_run_whose_seed_was_recorded_with_another_teacher_is_refused_before_any_run(tmp_path, monkeypatch):
    root, records = tmp_path / "runs", tmp_path / "records"
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "model.safetensors").write_bytes(b"this machine's teacher")
    path = write_comparison(
        tmp_path, document(root, records=str(records), set=["max_steps=2", f"teacher_model={teacher}"])
    )
    monkeypatch.setattr(runner, "evaluate_checkpoint", _no_evaluation)
    elsewhere = tmp_path / "teacher_elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.safetensors").write_bytes(b"another machine's teacher")
    # Seed 1's control was recorded with the other teacher (the run folder is gone, as on a new machine).
    fabricate_run(root / "labels_only/seed1", "labels_only", 1, teacher=elsewhere)
    compare.main([str(path), "--no-run"])
    shutil.rmtree(root)
    launched = []

    def launch(command):
        out = Path(next(a for a in command if a.startswith("output_dir=")).removeprefix("output_dir="))
        launched.append(f"{out.parent.name}/{out.name}")
        fabricate_run(out, out.parent.name, int(out.name.removeprefix("seed")), teacher=teacher)
        return 0

    monkeypatch.setattr(compare, "launch", launch)
    other = hashlib.sha256(b"another machine's teacher").hexdigest()
    with pytest.raises(
        runner.ComparisonError,
        match=rf"original seed 1: its teacher .* sha256 .* seed 1's recorded "
        rf"runs had another teacher \(labels_only: {other}\).*\(--seeds\)",
    ):
        compare.main([str(path)])
    assert launched == []
    # Other seeds train with this teacher.
    compare.main([str(path), "--seeds", "2"])
    assert launched == ["labels_only/seed2", "original/seed2"]


def test_each_run_is_recorded_as_soon_as_it_finishes(tmp_path, monkeypatch):
    root, records = tmp_path / "runs", tmp_path / "records"
    path = write_comparison(tmp_path, document(root, records=str(records)))
    monkeypatch.setattr(runner, "evaluate_checkpoint", _no_evaluation)
    seen = []

    def launch(command):
        seen.append(sorted(str(p.relative_to(records)) for p in records.rglob("*.json")))
        out = Path(next(a for a in command if a.startswith("output_dir=")).removeprefix("output_dir="))
        fabricate_run(out, out.parent.name, int(out.name.removeprefix("seed")))
        return 0

    monkeypatch.setattr(compare, "launch", launch)
    compare.main([str(path)])
    assert seen == [
        [],
        ["labels_only/seed1.json"],
        ["labels_only/seed1.json", "original/seed1.json"],
        ["labels_only/seed1.json", "labels_only/seed2.json", "original/seed1.json"],
    ]


def test_missing_predictions_are_evaluated_with_the_runs_settings_and_cached(tmp_path, monkeypatch):
    out = tmp_path / "run"
    (out / "student").mkdir(parents=True)
    config = {
        "data_dir": "/run/data",
        "dataset_id": "glue/sst2",
        "max_length": 64,
        "batch_size": 32,
        "eval_batch_size": None,
        "length_buckets": [16, 64],
    }
    (out / "config.json").write_text(json.dumps(config))
    calls = []

    def evaluate(model_path, *, predictions_out, **settings):
        calls.append((model_path, settings))
        rows = [{"logits": [0.0, 1.0], "prediction": 1, "label": y} for y in LABELS["dev"]]
        Path(predictions_out).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {"accuracy": 0.5, "n": len(rows)}

    monkeypatch.setattr(runner, "evaluate_checkpoint", evaluate)
    for data_dir in (None, "/other"):
        predictions, labels = runner.run_predictions(out, "final", "dev", folder="student", data_dir=data_dir)
        np.testing.assert_array_equal(labels, LABELS["dev"])
        np.testing.assert_array_equal(predictions, np.ones(len(LABELS["dev"])))
    # The second call read the cache.
    assert calls == [
        (
            str(out / "student"),
            {
                "data_dir": "/run/data",
                "split": "dev",
                "dataset_id": "glue/sst2",
                "max_length": 64,
                "batch_size": 32,
                "buckets": (16, 64),
            },
        )
    ]
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["final_dev.jsonl"]
    runner.run_predictions(out, "best", "test", folder="best", data_dir="/other")
    assert calls[-1][1]["data_dir"] == "/other"


CHILD = """
import pathlib, signal, sys, time
def stop(*_):
    pathlib.Path(sys.argv[1]).write_text("checkpoint saved")
    sys.exit(0)
signal.signal(signal.SIGINT, stop)
pathlib.Path(sys.argv[2]).touch()
time.sleep(60)
"""


def test_ctrl_c_passes_one_sigint_to_the_run_and_waits_for_it(tmp_path, capsys):
    saved, ready = tmp_path / "saved", tmp_path / "ready"
    # A shell starts background jobs with SIGINT ignored, and Python then keeps it ignored: install the
    # default handler (KeyboardInterrupt) so the test does not depend on how pytest was started.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def press_ctrl_c():
        while not ready.exists():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            compare.launch([sys.executable, "-c", CHILD, str(saved), str(ready)])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert saved.read_text() == "checkpoint saved"
    assert "rerun this command to continue" in capsys.readouterr().err


# End to end -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("comparison"), {"train": 40, "dev": 20, "test": 16})


@pytest.mark.slow
def test_a_tiny_comparison_end_to_end(workspace, tmp_path, monkeypatch, capfd):
    # Most of a tiny run is compiling. The arms differ only in batch order, so every run compiles the same
    # programs, and the runner's persistent cache (output_root/xla_cache) shares them between the runs.
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(workspace / "data"),
                "tokenizer_name": str(workspace / "teacher"),
                "teacher_model": str(workspace / "teacher"),
                "student_init_layers": [0],
                "max_length": 64,
                "length_buckets": [64],
                "batch_size": 8,
                "max_steps": 2,
                "log_every": 1,
                "log_val_every": 2,
                "dtype": "float32",
                "do_checkpoint": True,
                "checkpoint_every": 2,
            }
        )
    )
    root = tmp_path / "runs"
    arms = [
        {"name": "random", "set": ["group_by_length=false"]},
        {"name": "grouped", "set": ["group_by_length=true"]},
    ]
    path = write_comparison(tmp_path, document(root, config=str(config), control="random", set=[], arms=arms))
    summary = compare.main([str(path)])
    out = capfd.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == summary
    for arm in ("random", "grouped"):
        for seed in (1, 2):
            run = root / arm / f"seed{seed}"
            saved = json.loads((run / "config.json").read_text())
            assert (saved["seed"], saved["job_name"]) == (seed, f"{arm}-seed{seed}")
            assert saved["group_by_length"] == (arm == "grouped")
            assert sorted(p.name for p in (run / "predictions").iterdir()) == [
                f"{model}_{split}.jsonl" for model in ("best", "final") for split in ("dev", "test")
            ]
    assert any((root / "xla_cache").iterdir()), "the runs share a compilation cache"
    rows = {row["arm"]: row for row in summary["arms"]}
    assert rows["random"]["finished_seeds"] == rows["grouped"]["finished_seeds"] == [1, 2]
    best = rows["grouped"]["minus_control"]["best"]
    assert best["paired_seeds"] == [1, 2] and best["sentences"] == 20 + 16
    assert all(
        0 <= rows[a]["accuracy"][m][s] <= 100
        for a in rows
        for m in ("best", "final")
        for s in ("dev", "test")
    )

    # A second call finds every run finished and every prediction cached.
    monkeypatch.setattr(compare, "launch", lambda command: pytest.fail("launched a finished run"))
    monkeypatch.setattr(runner, "evaluate_checkpoint", _no_evaluation)
    assert compare.main([str(path)]) == summary

    # Killed after its last checkpoint, before saving its final model: the run would be resumed.
    run = root / "grouped/seed2"
    (run / "student").rename(tmp_path / "student_aside")
    assert runner.run_status(run, "student") == runner.RESUMABLE
    plan = compare.main([str(path), "--dry-run", "--only", "grouped", "--seeds", "2"])
    assert plan["runs"][0]["command"][-1] == "resume_from_checkpoint=true"
