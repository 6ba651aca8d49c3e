"""The public API (``distilbert_eqx/__init__.py``): the README's Python example runs as written, and the
step's pitfalls (a teacher in training mode, a donated state) are handled or explained."""

import re
import shutil

import equinox as eqx
import jax
import numpy as np
import pytest

import distilbert_eqx as de
from helpers import REPO, make_workspace, original_objective, random_batch, tiny_student, tiny_teacher


def readme_python_example() -> str:
    """The README's code block under "## Python API"."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.slow
def test_the_readmes_python_example_runs(tmp_path, monkeypatch, capsys):
    # The example's paths, relative to the repository root: the teacher finetune_teacher.py saves, and SST-2.
    (tmp_path / "workspace").mkdir()
    make_workspace(tmp_path / "workspace", {"train": 64, "dev": 16})
    work = tmp_path / "repo"
    (work / "runs/minilm_teacher").mkdir(parents=True)
    shutil.move(tmp_path / "workspace/teacher", work / "runs/minilm_teacher/best")
    (tmp_path / "shared/data").mkdir(parents=True)
    shutil.move(tmp_path / "workspace/data", tmp_path / "shared/data/sst2")
    monkeypatch.chdir(work)
    code = readme_python_example()
    assert len(code.strip().splitlines()) <= 17
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (our own README's example)
    result = namespace["result"]
    assert result.summary["steps"] == 2 and 0 <= result.summary["best_val_accuracy"] <= 1
    assert {"loss", "loss_ce", "loss_kl", "loss_cos", "grad_norm", "lr"} <= set(result.records[0])
    assert de.from_pretrained(work / "runs/notebook/best").config == result.best_student.config
    assert str(result.summary["best_val_accuracy"]) in capsys.readouterr().out


def test_the_step_runs_a_teacher_in_training_mode_without_dropout():
    teacher = tiny_teacher()
    training_teacher = eqx.nn.inference_mode(teacher, value=False)
    student = tiny_student(teacher)
    objective = original_objective().bind(student, teacher)
    optimizer, _ = de.make_optimizer(1e-3, 0.0, 0.0, 10)
    batch = random_batch(0)
    states = [de.init_state(student, optimizer, key=jax.random.key(0)) for _ in range(2)]
    copies = [jax.tree.map(lambda x: x.copy() if eqx.is_array(x) else x, s) for s in states]
    _, from_inference = de.train_step(teacher, copies[0], batch, optimizer, objective)
    _, from_training = de.train_step(training_teacher, copies[1], batch, optimizer, objective)
    np.testing.assert_array_equal(from_inference.loss, from_training.loss)


def test_the_step_donates_the_state_as_its_docstring_says():
    teacher = tiny_teacher()
    student = tiny_student(teacher)
    objective = original_objective().bind(student, teacher)
    optimizer, _ = de.make_optimizer(1e-3, 0.0, 0.0, 10)
    state = de.init_state(student, optimizer, key=jax.random.key(0))
    new_state, _ = de.train_step(teacher, state, random_batch(0), optimizer, objective)
    assert "deleted" in de.train_step.__doc__ and "donated" in de.train_step.__doc__
    with pytest.raises(RuntimeError, match="deleted"):
        state.student.classifier.weight + 0
    assert np.isfinite(np.asarray(new_state.student.classifier.weight)).all()
    accuracy, examples, _ = de.evaluate(new_state.student, [random_batch(1)])
    assert examples == 8 and 0 <= accuracy <= 1


def test_the_train_record_averages_the_losses_since_the_last_one():
    teacher = tiny_teacher()
    optimizer, schedule = de.make_optimizer(1e-3, 0.0, 0.0, 4)
    batches, dev = [random_batch(seed) for seed in range(4)], [random_batch(10)]

    def records(log_every: int) -> list[dict]:
        student = tiny_student(teacher)
        result = de.fit(
            teacher,
            student,
            original_objective(),
            optimizer,
            batches,
            dev_batches=dev,
            key=jax.random.key(0),
            learning_rate=schedule,
            log_every=log_every,
        )
        assert de.evaluate(student, dev)[1] == 8  # the caller's student was not donated
        return [r for r in result.records if "loss" in r]

    every_step, every_two = records(1), records(2)
    with pytest.raises(
        ValueError, match=r"the loss terms \['kl', 'cos'\] compare the student with a teacher"
    ):
        de.fit(
            None,
            tiny_student(teacher),
            original_objective(),
            optimizer,
            batches,
            dev_batches=dev,
            key=jax.random.key(0),
        )
    assert [r["step"] for r in every_two] == [2, 4]
    for i, record in enumerate(every_two):
        pair = every_step[2 * i : 2 * i + 2]
        for key in ("loss", "loss_ce", "loss_kl", "loss_cos"):
            assert record[key] == pytest.approx((pair[0][key] + pair[1][key]) / 2, rel=1e-6)
        assert record["grad_norm"] == pytest.approx(pair[1]["grad_norm"], rel=1e-6)  # the last step's
