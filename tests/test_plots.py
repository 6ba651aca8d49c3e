"""The plot command: a run's metrics.jsonl and a recorded comparison, each to a PNG. Skipped without
matplotlib (an optional extra, ``.[plots]``, which CI's ``.[test]`` leaves out)."""

import json
import sys

import pytest

from distilbert_eqx.errors import UserError
from distilbert_eqx.plots import read_metrics
from helpers import REPO

pytest.importorskip("matplotlib")

sys.path.insert(0, str(REPO / "experiments"))
import plot

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_runs_metrics_are_drawn(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [
        {
            "step": s,
            "epoch": s / 4,
            "loss": 1 / s,
            "loss_ce": 0.5 / s,
            "loss_kl": 0.4 / s,
            "grad_norm": 2.0,
            "lr": 1e-4 * s,
            "examples_per_sec": 10.0,
            "time": "2026-12-06T03:00:00.000+00:00",
        }
        for s in range(1, 5)
    ]
    records.insert(2, {"step": 2, "val_accuracy": 0.8, "val_loss": 0.45, "val_examples": 20})
    records.append({"step": 4, "val_accuracy": 0.85, "val_loss": 0.4, "val_examples": 20})
    lines = [json.dumps(r) for r in records] + ['{"step": 5, "lo']  # a torn last line
    (run / "metrics.jsonl").write_text("\n".join(lines))
    written = plot.main(["run", str(run)])
    assert written == str(run / "metrics.png")
    assert (run / "metrics.png").read_bytes().startswith(PNG)


def test_a_run_without_records_is_refused_in_one_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="holds no train or validation records yet"):
        read_metrics(tmp_path)


def test_a_recorded_comparison_is_drawn(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the comparison file's paths (its records) are relative to the repository
    out = tmp_path / "three_epochs.png"
    plot.main(["comparison", "experiments/comparisons/three_epochs.yaml", "--out", str(out)])
    assert out.read_bytes().startswith(PNG)
    summary = {
        "comparison": "c.yaml",
        "control": "a",
        "pooled_splits": "dev+test",
        "arms": [
            {"arm": "a", "finished_seeds": [1]},
            {
                "arm": "b",
                "finished_seeds": [1],
                "minus_control": {"best": {"difference": 0.5, "interval_95": [-0.1, 1.0]}, "final": None},
            },
        ],
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    plot.main(["comparison", str(tmp_path / "summary.json")])
    assert (tmp_path / "summary.png").read_bytes().startswith(PNG)


@pytest.mark.slow
def test_a_short_runs_log_is_drawn(tmp_path):
    import jax

    import distilbert_eqx as de
    from helpers import original_objective, random_batch, tiny_student, tiny_teacher

    teacher = tiny_teacher()
    optimizer, schedule = de.make_optimizer(1e-3, 0.0, 0.0, 4)
    batches = [random_batch(s) for s in range(4)]
    de.fit(
        teacher,
        tiny_student(teacher),
        original_objective(),
        optimizer,
        batches,
        dev_batches=[random_batch(9)],
        key=jax.random.key(0),
        learning_rate=schedule,
        log_every=1,
        validate_every=2,
        metrics_path=tmp_path / "metrics.jsonl",
    )
    plot.main(["run", str(tmp_path / "metrics.jsonl"), "--out", str(tmp_path / "run.png")])
    assert (tmp_path / "run.png").read_bytes().startswith(PNG)
