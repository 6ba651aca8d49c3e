"""The experiment scripts end to end on a tiny model and a few dozen real SST-2 rows; Ctrl-C and exact resume."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest
import torch
import transformers

import distilbert_eqx as de
from distilbert_eqx import experiment, packing
from distilbert_eqx.config import ConfigError, load_config
from distilbert_eqx.data import DataError, load_text_split, load_tokenizer, tokenize_split
from distilbert_eqx.init import student_from_teacher
from distilbert_eqx.run_lock import OutputDirLock, OutputDirLocked
from distilbert_eqx.train import single_device_steps
from helpers import REPO, flat_weights, make_workspace, max_diff, sst2_dir

sys.path.insert(0, str(REPO / "experiments"))
import distill_sst2
import evaluate as evaluate_script
import finetune_teacher

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A data folder with the first rows of the real splits, and a tiny BERT saved with the real tokenizer."""
    return make_workspace(tmp_path_factory.mktemp("experiment"), {"train": 40, "dev": 20})


def interrupting_steps(interrupt_after: int | None):
    """``make_steps`` for ``train_model`` that sends this process SIGINT during train call ``interrupt_after``
    (counted over every stage's steps), as Ctrl-C would."""
    calls = []

    def make_steps(losses, optimizer):
        steps = single_device_steps(losses, optimizer)

        def train(teacher, state, batch):
            calls.append(1)
            if len(calls) == interrupt_after:
                os.kill(os.getpid(), signal.SIGINT)
            return steps.train(teacher, state, batch)

        return type(steps)(train, steps.evaluate, steps.place, steps.place_state)

    return make_steps


def common(workspace: Path, out: str) -> list[str]:
    settings = {
        "data_dir": workspace / "data",
        "tokenizer_name": workspace / "teacher",
        "teacher_model": workspace / "teacher",
        "max_steps": 2,
        "batch_size": 8,
        "log_every": 1,
        "log_val_every": 2,
        "dtype": "float32",
        "output_dir": workspace / out,
        "max_length": 64,
    }
    return [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]


def test_finetune_evaluate_distill_scripts(workspace, capsys):
    summary = finetune_teacher.main(
        common(workspace, "ft")
        + [
            "--set",
            "alpha_kl=0",
            "--set",
            "alpha_cos=0",
            "--set",
            "do_checkpoint=true",
            "--set",
            "checkpoint_every=1",
        ]
    )
    assert summary["steps"] == 2
    out = workspace / "ft"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert {"loss", "loss_ce", "lr", "examples_per_sec"} <= set(records[0])
    assert any("val_accuracy" in r for r in records)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]

    predictions = workspace / "predictions.jsonl"
    capsys.readouterr()
    result = evaluate_script.main(
        [
            "--model",
            str(out / "model"),
            "--data-dir",
            str(workspace / "data"),
            "--split",
            "dev",
            "--predictions-out",
            str(predictions),
        ]
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert result["n"] == len(rows) == 20
    assert result["accuracy"] == pytest.approx(np.mean([r["prediction"] == r["label"] for r in rows]))
    assert [r["label"] for r in rows] == load_text_split("dev", data_dir=workspace / "data").labels.tolist()

    capsys.readouterr()
    summary = distill_sst2.main(
        common(workspace, "kd")
        + ["--set", f"teacher_model={out / 'model'}", "--set", "student_init_layers=[0,1]"]
    )
    assert summary["steps"] == 2
    # Human lines on stderr, the JSON result alone on stdout (a CI log gets lines, not a redrawn bar).
    captured = capsys.readouterr()
    assert json.loads(captured.out) == summary
    log = captured.err
    assert "\r" not in log
    for start in (
        "devices: 1 of ",
        "data: 40 train examples, 20 dev; batch 8, 2 steps = 0.40 epochs of 5",
        "loss: ",
        "teacher outputs: the live teacher every step",
    ):
        assert f"\n{start}" in f"\n{log}", (start, log)
    assert "(student/teacher 1.00)" in log  # both models hold the tiny teacher's two layers
    assert "step 2/2: loss " in log and "(mean of 1 steps)" in log and "step 2: val_accuracy " in log
    records = [json.loads(line) for line in (workspace / "kd" / "metrics.jsonl").read_text().splitlines()]
    assert all("time" in r for r in records)
    assert any("val_loss" in r and r["val_loss"] > 0 for r in records)
    written = json.loads((workspace / "kd" / "config.json").read_text())
    assert written["provenance"]["versions"]["jax"] == jax.__version__ and "commit" in written["provenance"]
    assert load_config(workspace / "kd" / "config.json").seed == written["seed"]  # still a config file
    student = transformers.AutoModelForSequenceClassification.from_pretrained(workspace / "kd" / "student")
    assert isinstance(student, transformers.DistilBertForSequenceClassification)
    assert (workspace / "kd" / "best" / "tokenizer.json").is_file()


def _student_and_teacher(workspace: Path):
    teacher = de.from_pretrained(workspace / "teacher")
    student = student_from_teacher(teacher, [0, 1], key=jax.random.key(1))
    return student, eqx.nn.inference_mode(teacher)


def _splits(workspace: Path):
    tokenizer = load_tokenizer(str(workspace / "teacher"), 64)
    return {
        s: tokenize_split(load_text_split(s, data_dir=workspace / "data"), tokenizer)
        for s in ("train", "dev")
    }


@pytest.mark.parametrize("max_grad_norm", [None, 0.25])
def test_fit_gives_the_optimizer_the_max_grad_norm_of_the_config(workspace, monkeypatch, max_grad_norm):
    value = "null" if max_grad_norm is None else max_grad_norm
    config = load_config(
        None,
        [
            f"data_dir={workspace / 'data'}",
            "max_length=64",
            f"output_dir={workspace / 'gradclip'}",
            f"max_grad_norm={value}",
        ],
    )
    given = []

    class Stop(Exception):
        pass

    def make_optimizer(*args, **kwargs):
        given.append(args)
        raise Stop

    monkeypatch.setattr(experiment, "make_optimizer", make_optimizer)
    with pytest.raises(Stop):
        experiment.train_model(
            config, *_student_and_teacher(workspace), _splits(workspace), key=jax.random.key(7)
        )
    assert given[0][-1] == max_grad_norm


def _resumable(workspace: Path) -> list[str]:
    """The resume tests' runs: batches of 8, dropout on, a checkpoint every 4 steps, validation as often."""
    return [
        f"data_dir={workspace / 'data'}",
        f"tokenizer_name={workspace / 'teacher'}",
        "batch_size=8",
        "log_every=1",
        "log_val_every=4",
        "do_checkpoint=true",
        "checkpoint_every=4",
        "dtype=float32",
        "max_length=64",
        "learning_rate=1e-3",
    ]


def _train(config, student, teacher, splits, interrupt_after: int | None) -> dict:
    """``train_model`` with the tests' run key, a SIGINT during train call ``interrupt_after``: its summary."""
    return experiment.train_model(
        config,
        student,
        teacher,
        splits,
        key=jax.random.key(7),
        make_steps=interrupting_steps(interrupt_after),
    )


def _train_and_load(workspace: Path, splits, overrides: list[str], out: str, interrupt_after: int | None):
    """`_train` on the workspace's student and teacher with these overrides into ``workspace / out``: its
    summary, and the saved student if the run finished."""
    config = load_config(None, [*overrides, f"output_dir={workspace / out}"])
    student, teacher = _student_and_teacher(workspace)
    summary = _train(config, student, teacher, splits, interrupt_after)
    saved = workspace / out / "student"
    return summary, de.from_pretrained(saved) if saved.is_dir() else None


def test_ctrl_c_then_resume_equals_uninterrupted_run(workspace):
    """Dropout on, 2 epochs of 5 batches: stopped by SIGINT after 3 steps and resumed, the weights are identical,
    and the resumed run's summary counts the first process's time (from its checkpoint) and says where it resumed."""
    overrides = [*_resumable(workspace), "num_epochs=2"]
    splits = _splits(workspace)

    def run(out: str, *, resume: bool, interrupt_after: int | None):
        overriding = [*overrides, f"resume_from_checkpoint={resume}"]
        return _train_and_load(workspace, splits, overriding, out, interrupt_after)

    full, a = run("uninterrupted", resume=False, interrupt_after=None)
    stopped, _ = run("resumed", resume=False, interrupt_after=3)
    resumed_dir = workspace / "resumed"
    assert stopped == {"interrupted": True, "steps": 3}
    meta_file = resumed_dir / "checkpoints" / "step_00000003" / "meta.json"
    meta = json.loads(meta_file.read_text())
    assert meta["metadata"]["wall_time_sec"] > 0  # the first process's fit-loop time
    # Stand-in for a first process that ran 1000 s: the resumed run's wall time must carry it.
    meta["metadata"]["wall_time_sec"] = 1000.0
    meta_file.write_text(json.dumps(meta))
    resumed, b = run("resumed", resume=True, interrupt_after=None)
    assert full["steps"] == resumed["steps"] == 10
    assert resumed["resumed_at_step"] == 3 and "resumed_at_step" not in full
    assert 1000.0 < resumed["wall_time_sec"] < 1000.0 + full["wall_time_sec"] + 60
    for x, y in zip(
        jax.tree.leaves(eqx.filter(a, eqx.is_array)), jax.tree.leaves(eqx.filter(b, eqx.is_array))
    ):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    logged = [json.loads(line)["step"] for line in (resumed_dir / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in logged if s <= 3][:3] == [1, 2, 3] and 4 in logged


def test_a_cached_teacher_run_resumed_after_ctrl_c_equals_the_live_teacher_run(workspace, capsys):
    """Dropout on, 2 epochs of 5 batches, the hidden-state loss on too: the run reading the teacher's outputs from
    the disk cache, stopped by SIGINT after 3 steps and resumed (reading the cache again), trains the student that
    the live teacher does. The two runs' teacher outputs differ by rounding (the cache's pass batches the
    sentences otherwise), which AdamW magnifies in parameters with near-zero gradients: over six random
    teachers the largest difference ran from 1e-7 to 2e-5, in at most four of the million parameters, so the
    workspace's teacher is seeded (``make_workspace``): the bound is this teacher's (1.6e-6 against 1e-5)."""
    overrides = [
        *_resumable(workspace),
        "num_epochs=2",
        "alpha_hidden=1.0",
        f"teacher_cache_dir={workspace / 'cache'}",
    ]
    splits = _splits(workspace)

    def run(out: str, *extra: str, interrupt_after: int | None = None):
        return _train_and_load(workspace, splits, [*overrides, *extra], out, interrupt_after)

    _, live = run("live_teacher")
    stopped, _ = run("cached_teacher", "teacher_cache=disk", interrupt_after=3)
    assert stopped == {"interrupted": True, "steps": 3}
    first = capsys.readouterr().err
    assert (
        "teacher cache (float32, 40 examples): cos.last_hidden_state" in first
        and "teacher cache: saved" in first
    )
    _, cached = run("cached_teacher", "teacher_cache=disk", "resume_from_checkpoint=true")
    assert "teacher cache: reading" in capsys.readouterr().err
    assert max_diff(flat_weights(cached), flat_weights(live)) <= 1e-5
    metrics = [
        json.loads(line) for line in (workspace / "cached_teacher" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any("loss_hidden" in m for m in metrics)


def test_a_packed_cached_run_resumed_after_ctrl_c_equals_the_uninterrupted_run(workspace, capsys):
    """Sentences packed into rows of 64 tokens (2 rows a step), dropout on, the hidden-state loss on, the teacher
    read from the disk cache, 2 epochs: stopped by SIGINT after 3 steps and resumed, the run trains the very
    student of the uninterrupted run; every train step has one shape. (That packed batches carry the cached
    targets of their own sentences: test_packing.py.)"""
    overrides = [
        *_resumable(workspace),
        "num_epochs=2",
        "alpha_hidden=1.0",
        "packing={rows: 2, length: 64, slots: 8}",
        "teacher_cache=disk",
        f"teacher_cache_dir={workspace / 'packed_cache'}",
    ]
    splits = _splits(workspace)
    per_epoch = packing.steps_per_epoch(splits["train"].lengths, packing.PackingSettings(2, 64, 8))

    def run(out: str, *extra: str, interrupt_after: int | None = None):
        return _train_and_load(workspace, splits, [*overrides, *extra], out, interrupt_after)

    full_summary, full = run("packed_full")
    assert full_summary["steps"] == 2 * per_epoch
    err = capsys.readouterr().err
    assert (
        f"packed 2 x 64 tokens a step (up to 8 sentences a row), {2 * per_epoch} steps = 2.00 epochs" in err
    )
    assert "jit(train_step) x1 " in err  # one shape, one program
    assert "jit(_kept) x1 " in err  # the teacher pass packs too: one program
    stopped, _ = run("packed_resumed", interrupt_after=3)
    assert stopped == {"interrupted": True, "steps": 3}
    _, resumed = run("packed_resumed", "resume_from_checkpoint=true")
    for x, y in zip(
        jax.tree.leaves(eqx.filter(full, eqx.is_array)), jax.tree.leaves(eqx.filter(resumed, eqx.is_array))
    ):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_two_teachers_distil_their_mean_probabilities_and_a_cosine_loss_is_refused(workspace, capsys):
    """``ensemble_teachers``: a second random teacher beside the workspace's; the run caches both teachers'
    logits, trains on their mean probabilities and names both in the model card. With the cosine loss on (it
    reads hidden states, which do not average) the run stops before any teacher pass."""
    import transformers

    second = workspace / "second_teacher"
    if not second.is_dir():
        config = transformers.BertConfig.from_pretrained(workspace / "teacher")
        torch.manual_seed(5)
        transformers.BertForSequenceClassification(config).save_pretrained(second)
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            (second / name).write_bytes((workspace / "teacher" / name).read_bytes())
    both = ["--set", f"ensemble_teachers=[{second}]", "--set", "teacher_cache=memory"]
    with pytest.raises(ConfigError, match="the 'cos' term keeps the teacher's last_hidden_state"):
        distill_sst2.main(common(workspace, "ensemble_cos") + both + ["--set", "student_init_layers=[0,1]"])
    assert "teacher cache:" not in capsys.readouterr().err
    summary = distill_sst2.main(
        common(workspace, "ensemble") + both + ["--set", "student_init_layers=[0,1]", "--set", "alpha_cos=0"]
    )
    assert summary["steps"] == 2
    err = capsys.readouterr().err
    assert err.count("teacher cache (float32, 40 examples): kl.logits") == 2
    assert "teacher outputs: a memory cache of the mean probabilities of 2 teachers" in err
    card = (workspace / "ensemble" / "student" / "README.md").read_text()
    assert f"`{workspace / 'teacher'}` and `{second}`" in card


def test_bad_inputs_fail_before_writing_anything(workspace, tmp_path):
    base = common(workspace, "unused")
    missing = base + ["--set", f"data_dir={tmp_path / 'nowhere'}", "--set", f"output_dir={tmp_path / 'out1'}"]
    with pytest.raises(DataError, match="train.tsv"):
        distill_sst2.main(missing + ["--set", "student_init_layers=[0,1]"])
    assert not (tmp_path / "out1").exists()

    other = transformers.DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=4, hidden_dim=48)
    transformers.DistilBertForSequenceClassification(other).save_pretrained(tmp_path / "small_vocab")
    mismatch = base + [
        "--set",
        f"student_model={tmp_path / 'small_vocab'}",
        "--set",
        f"output_dir={tmp_path / 'out2'}",
    ]
    with pytest.raises(DataError, match="vocabularies differ"):
        distill_sst2.main(mismatch)
    assert not (tmp_path / "out2").exists()


def test_reproduce_offline_runs_the_three_models_and_prints_their_table(workspace, tmp_path, capsys):
    import reproduce_offline

    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "dev"):
        (data / f"{split}.tsv").write_text((workspace / "data" / f"{split}.tsv").read_text())
    (data / "test.tsv").write_text("\n".join((sst2_dir() / "test.tsv").read_text().splitlines()[:17]) + "\n")
    rows = reproduce_offline.main(
        [
            "--quick",
            "--data-dir",
            str(data),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--set",
            "max_steps=2",
            "log_every=1",
            "log_val_every=2",
            "batch_size=8",
        ]
    )
    assert [r["model"] for r in rows] == [
        "MiniLM-L6 teacher, fine-tuned",
        "3-layer student, distilled",
        "3-layer student, labels only",
    ]
    assert all(r["steps"] == 2 and 0 <= r["dev"] <= 1 and 0 <= r["test"] <= 1 for r in rows)
    quick = tmp_path / "runs" / "quick"
    # The students were distilled from the fine-tuned teacher of this run, not from the raw MiniLM.
    kd = json.loads((quick / "minilm_student_kd" / "config.json").read_text())
    assert kd["teacher_model"] == str(quick / "minilm_teacher" / "best")
    control = json.loads((quick / "minilm_student_ce" / "config.json").read_text())
    assert control["alpha_kl"] == control["alpha_cos"] == 0
    assert json.loads((quick / "results.json").read_text()) == rows
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == ["| " + r["model"] for r in rows]


def test_saved_models_carry_label_names_and_a_model_card(workspace):
    distill_sst2.main(common(workspace, "card") + ["--set", "student_init_layers=[0]"])
    for folder in ("best", "student"):
        saved = workspace / "card" / folder
        config = json.loads((saved / "config.json").read_text())
        assert config["id2label"] == {"0": "negative", "1": "positive"}
        card = (saved / "README.md").read_text()
        assert card.startswith("---\n") and "SST-2 dev accuracy when saved: " in card
        assert "layers [0] of" in card


def _script(args: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def test_a_second_run_of_a_config_compiles_nothing_new(workspace, tmp_path):
    """With compilation_cache_dir set, the second run's programs (train steps, evaluation, per bucket) are all
    in the cache the first one wrote: it adds no entry."""
    cache = tmp_path / "jax_cache"
    args = [
        str(REPO / "experiments/distill_sst2.py"),
        *common(workspace, "unused"),
        "--set",
        f"compilation_cache_dir={cache}",
        "--set",
        "student_init_layers=[0,1]",
    ]

    def run(out: str) -> set[str]:
        result = _script([*args, "--set", f"output_dir={tmp_path / out}"])
        assert result.returncode == 0, result.stderr[-3000:]
        return {p.name for p in cache.iterdir()}

    first = run("first")
    assert len(first) >= 2  # a train step and an evaluation at least
    assert run("second") == first


def test_scripts_report_a_user_error_in_one_line_and_write_nothing(tmp_path):
    out = tmp_path / "out"
    args = ["experiments/distill_sst2.py", "--set", f"output_dir={out}", "batch_size=0"]
    done = _script(args)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: batch_size=0 is invalid; expected an int >= 1"]
    assert not out.exists()
    debug = _script([*args, "--debug"])
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
    missing = _script(
        ["experiments/evaluate.py", "--model", str(tmp_path / "nowhere"), "--data-dir", str(tmp_path)]
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith("error: checkpoint path")


def test_a_second_run_on_a_held_output_dir_fails_naming_the_holder(workspace):
    out = workspace / "held"
    with OutputDirLock(out), pytest.raises(OutputDirLocked, match=f"pid {os.getpid()} "):
        distill_sst2.main(common(workspace, "held") + ["--set", "student_init_layers=[0]"])
    # The first run's folder is untouched: no config, log or checkpoint of the second.
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    summary = distill_sst2.main(common(workspace, "held") + ["--set", "student_init_layers=[0]"])
    assert summary["steps"] == 2


def test_finetune_refuses_distillation_weights(workspace):
    with pytest.raises(ConfigError, match="label loss alone"):
        finetune_teacher.main(common(workspace, "ft_bad"))
    assert not (workspace / "ft_bad").exists()


def test_two_stage_narrow_student_resumes_exactly_in_either_stage(workspace):
    """A random-init student half the teacher's width, every layer loss through the learned projection, two
    stages (3 intermediate steps, then CE + KL), dropout on: stopped by SIGINT in stage 1 (after step 2) and
    resumed, it finishes stage 1 and runs stage 2 exactly as the uninterrupted run does (the stage, like the
    data order and the schedule, follows from the step). The logged terms follow the stages, and the saved
    student is a plain DistilBERT without the projection."""
    overrides = [
        f"data_dir={workspace / 'data'}",
        f"tokenizer_name={workspace / 'teacher'}",
        f"teacher_model={workspace / 'teacher'}",
        "batch_size=8",
        "max_steps=7",
        "log_every=1",
        "log_val_every=4",
        "do_checkpoint=true",
        "checkpoint_every=4",
        "dtype=float32",
        "max_length=64",
        "learning_rate=1e-3",
        "student_init_layers=null",
        "student_num_layers=1",
        "student_hidden_size=16",
        "student_intermediate_size=24",
        "alpha_hidden=1.0",
        "alpha_attention_scores=0.1",
        "alpha_attention_kl=1.0",
        "alpha_value_relation=1.0",
        "intermediate_steps=3",
        "length_buckets=[64]",
    ]
    splits = _splits(workspace)
    teacher = eqx.nn.inference_mode(de.from_pretrained(workspace / "teacher"))

    def run(out: str, *, resume: bool, interrupt_after: int | None):
        config = load_config(
            None, overrides + [f"output_dir={workspace / out}", f"resume_from_checkpoint={resume}"]
        )
        student = experiment.random_student_from_config(config, teacher, key=jax.random.key(1))
        return _train(config, student, teacher, splits, interrupt_after)

    assert run("two_stage_full", resume=False, interrupt_after=None)["steps"] == 7
    assert run("two_stage_resumed", resume=False, interrupt_after=2) == {"interrupted": True, "steps": 2}
    assert run("two_stage_resumed", resume=True, interrupt_after=None)["steps"] == 7
    a = de.from_pretrained(workspace / "two_stage_full" / "student")
    b = de.from_pretrained(workspace / "two_stage_resumed" / "student")
    for x, y in zip(
        jax.tree.leaves(eqx.filter(a, eqx.is_array)), jax.tree.leaves(eqx.filter(b, eqx.is_array))
    ):
        assert np.array_equal(np.asarray(x), np.asarray(y))

    records = [
        json.loads(line) for line in (workspace / "two_stage_full" / "metrics.jsonl").read_text().splitlines()
    ]
    terms = {r["step"]: {k for k in r if k.startswith("loss_")} for r in records if "loss" in r}
    first = {"loss_cos", "loss_hidden", "loss_attention_scores", "loss_attention_kl", "loss_value_relation"}
    assert all(terms[s] == first for s in (1, 2, 3)) and all(
        terms[s] == {"loss_ce", "loss_kl"} for s in (4, 5, 6, 7)
    )
    assert [r["stage"] for r in records if "loss" in r] == [1, 1, 1, 2, 2, 2, 2]
    _, info = transformers.DistilBertForSequenceClassification.from_pretrained(
        workspace / "two_stage_full" / "student", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    card = (workspace / "two_stage_full" / "student" / "README.md").read_text()
    assert "hidden-state mse 1.0" in card and "two stages, the first 3 steps without CE and KL" in card


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["student_num_heads=8", "alpha_attention_kl=1.0"], "compares attention heads one to one.*8 heads"),
        (["hidden_projection=false"], "differs from the teacher's 32.*hidden_projection"),
        (["alpha_hidden=1.0", "layer_map=[[0,0],[1,5]]"], "layer_map: .*teacher state 5 is out of range"),
        (["alpha_value_relation=1.0", "relation_heads=3"], "relation_heads=3 does not divide"),
    ],
)
def test_layer_loss_settings_that_cannot_work_fail_before_training(workspace, settings, message):
    config = load_config(
        None,
        [
            f"data_dir={workspace / 'data'}",
            "max_length=64",
            f"output_dir={workspace / 'never'}",
            "student_init_layers=null",
            "student_num_layers=1",
            "student_hidden_size=16",
            *settings,
        ],
    )
    teacher = eqx.nn.inference_mode(de.from_pretrained(workspace / "teacher"))
    student = experiment.random_student_from_config(config, teacher, key=jax.random.key(1))
    with pytest.raises(ConfigError, match=message):
        experiment.train_model(config, student, teacher, _splits(workspace), key=jax.random.key(0))
    assert not (workspace / "never").exists()


def test_a_transfer_set_run_resumed_after_ctrl_c_equals_the_live_teacher_run(workspace, capsys):
    """The train split and its variants (augment), the teacher's logits and last states read from the disk cache
    (KL on every row, the cosine on the labelled rows only), stopped by SIGINT and resumed: the student equals
    the one trained with the live teacher, uninterrupted, over the same pool."""
    overrides = [
        *_resumable(workspace),
        "max_steps=8",
        "augment={copies: 2}",
        f"augment_dir={workspace / 'augment'}",
        f"teacher_cache_dir={workspace / 'pool_cache'}",
    ]
    tokenizer = load_tokenizer(str(workspace / "teacher"), 64)

    def run(out: str, *extra: str, interrupt_after: int | None = None):
        """The pool as the script makes it (or reads it back), then the run: summary, pool, saved student."""
        _, teacher = _student_and_teacher(workspace)
        splits = _splits(workspace)
        config = load_config(None, [*overrides, *extra])
        splits["train"] = experiment._with_augmented_pool(config, splits["train"], tokenizer, teacher)
        summary, student = _train_and_load(workspace, splits, [*overrides, *extra], out, interrupt_after)
        return summary, splits["train"], student

    _, pool, live = run("pool_live")
    assert int(pool.labelled.sum()) == 40 and len(pool) > 40  # the originals, then their variants
    assert "augment: training on 40 labelled examples and" in capsys.readouterr().err
    stopped, _, _ = run("pool_cached", "teacher_cache=disk", interrupt_after=3)
    assert stopped == {"interrupted": True, "steps": 3}
    out = capsys.readouterr().err
    assert "augment: read" in out  # the pool made by the first run, reused
    cached_line = next(line for line in out.splitlines() if line.startswith("teacher cache (float32"))
    assert f"{len(pool)} examples" in cached_line
    _, _, cached = run("pool_cached", "teacher_cache=disk", "resume_from_checkpoint=true")
    assert max_diff(flat_weights(cached), flat_weights(live)) <= 1e-5
