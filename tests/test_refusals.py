"""What the scripts refuse before writing anything: each case is one ``error:`` line on stderr, exit status 2,
and an output folder left as it was (or never made). A tiny BERT teacher and a few real SST-2 rows; only the
run that overwrites a folder trains (slow)."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import transformers

from distilbert_eqx.cli import run_script
from helpers import REPO, make_workspace

sys.path.insert(0, str(REPO / "experiments"))
import distill_sst2
import evaluate as evaluate_script


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("refusals"), {"train": 16, "dev": 8})


def settings(workspace: Path, out: Path, **overrides) -> list[str]:
    values = {
        "data_dir": workspace / "data",
        "tokenizer_name": workspace / "teacher",
        "teacher_model": workspace / "teacher",
        "student_init_layers": "[0]",
        "max_steps": 2,
        "batch_size": 8,
        "dtype": "float32",
        "max_length": 64,
        "output_dir": out,
        **overrides,
    }
    return ["--set", *(f"{k}={v}" for k, v in values.items())]


def refused(main, args: list[str], capsys) -> str:
    """The one line a script prints for a refusal, after checking its exit status."""
    capsys.readouterr()
    status = run_script(main, args)
    err = capsys.readouterr().err
    # The human lines a run prints before its refusal (its dtype, say) go to stderr too; the error is one.
    errors = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert status == 2 and len(errors) == 1 and err.endswith(errors[0] + "\n") and "Traceback" not in err, err
    return errors[0]


def test_an_output_dir_that_is_a_file(workspace, tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    message = refused(distill_sst2.main, settings(workspace, out), capsys)
    assert f"output_dir={str(out)!r} is a file" in message
    assert out.read_text() == "mine"


def fake_run(out: Path) -> dict[str, bytes]:
    """A folder as an interrupted run leaves it: a checkpoint, a log, a config; its files' contents."""
    (out / "checkpoints/step_00000002").mkdir(parents=True)
    (out / "checkpoints/step_00000002/meta.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"step": 2, "loss": 0.69}\n')
    (out / "config.json").write_text("{}")
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def contents(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_a_folder_holding_a_run_is_neither_deleted_nor_mixed_into(workspace, tmp_path, capsys):
    out = tmp_path / "run"
    before = fake_run(out)
    message = refused(distill_sst2.main, settings(workspace, out), capsys)
    assert f"output_dir {out} already holds a run (checkpoints, config.json, metrics.jsonl)" in message
    assert "resume_from_checkpoint=true" in message and "overwrite_output_dir=true" in message
    assert contents(out) == before


@pytest.mark.slow  # it trains (and so compiles) two steps
def test_overwrite_output_dir_replaces_the_run(workspace, tmp_path, capsys):
    out = tmp_path / "run"
    fake_run(out)
    args = settings(workspace, out, overwrite_output_dir="true", log_every=1, dtype="auto")
    summary = distill_sst2.main(args)
    assert summary["steps"] == 2
    # dtype auto: float32 on this CPU, said at start-up and recorded.
    assert "dtype: float32 (auto on cpu)" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert not (out / "checkpoints/step_00000002/meta.json").exists()


def test_resuming_without_a_checkpoint(workspace, tmp_path, capsys):
    out = tmp_path / "mistyped"
    message = refused(distill_sst2.main, settings(workspace, out, resume_from_checkpoint="true"), capsys)
    assert f"no valid checkpoint found in {out / 'checkpoints'}" in message
    assert not out.exists()


def test_use_wandb_without_wandb(workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # importlib then finds no wandb, installed or not
    out = tmp_path / "out"
    message = refused(distill_sst2.main, settings(workspace, out, use_wandb="true"), capsys)
    assert "use_wandb=true, but wandb is not installed" in message
    assert not out.exists()


def test_a_teacher_cache_over_its_limit_writes_nothing(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    args = settings(workspace, out, teacher_cache="memory", teacher_cache_max_gb=1e-9)
    assert "over the limit" in refused(distill_sst2.main, args, capsys)
    assert not out.exists()


def test_student_init_layers_beyond_the_teacher(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    message = refused(distill_sst2.main, settings(workspace, out, student_init_layers="[0,5]"), capsys)
    assert "student_init_layers=[0, 5] names teacher layer 5, but the teacher has 2 layers (0 to 1)" in (
        message
    )
    assert not out.exists()


def test_max_length_beyond_the_position_table(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    message = refused(distill_sst2.main, settings(workspace, out, max_length=256), capsys)
    assert "max_length=256 is longer than the teacher's position table (max_position_embeddings=128)" in (
        message
    )
    assert not out.exists()


def base_model(workspace: Path) -> transformers.BertModel:
    """The workspace teacher without its classification head (pooler kept), as a plain BertModel."""
    return transformers.BertForSequenceClassification.from_pretrained(workspace / "teacher").bert


def test_a_teacher_without_its_head(workspace, tmp_path, capsys):
    teacher = tmp_path / "base_model"
    base_model(workspace).save_pretrained(teacher)
    out = tmp_path / "out"
    message = refused(distill_sst2.main, settings(workspace, out, teacher_model=teacher), capsys)
    assert "has no classification head (classifier.weight, classifier.bias are missing)" in message
    assert not out.exists()


def test_a_tokenizer_of_the_same_size_with_other_tokens(workspace, tmp_path, capsys):
    """Two ids swapped: the sizes agree, the vocabularies do not."""
    tokenizer = tmp_path / "tokenizer"
    shutil.copytree(workspace / "teacher", tokenizer)
    document = json.loads((tokenizer / "tokenizer.json").read_text())
    vocab = document["model"]["vocab"]
    vocab["good"], vocab["bad"] = vocab["bad"], vocab["good"]
    (tokenizer / "tokenizer.json").write_text(json.dumps(document))
    out = tmp_path / "out"
    message = refused(distill_sst2.main, settings(workspace, out, tokenizer_name=tokenizer), capsys)
    assert f"tokenizer_name={str(tokenizer)!r} maps tokens to other ids than the tokenizer saved with" in (
        message
    )
    assert "2 differ, e.g. 'bad'" in message
    assert f"set tokenizer_name={str(workspace / 'teacher')!r}" in message
    assert not out.exists()


def test_a_hub_name_while_offline_names_the_key(workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    args = settings(workspace, out, teacher_model="nobody/no-such-teacher")
    message = refused(distill_sst2.main, args, capsys)
    assert "teacher_model: 'nobody/no-such-teacher' is neither a local folder nor in the hub cache" in message
    assert "set teacher_model to a local folder" in message
    args = settings(workspace, out, tokenizer_name="nobody/no-such-tokenizer")
    message = refused(distill_sst2.main, args, capsys)
    assert "set tokenizer_name to a local folder holding tokenizer.json" in message
    assert not out.exists()


def test_the_offline_config_without_its_teacher_says_which_command_makes_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = REPO / "experiments/configs/sst2_minilm_offline.yaml"
    message = refused(distill_sst2.main, ["--config", str(config)], capsys)
    where = f"(relative paths are read from {tmp_path})"
    assert f"teacher_model='runs/minilm_teacher/best' is not a folder {where}" in message
    command = "python experiments/finetune_teacher.py --config experiments/configs/finetune_minilm_sst2.yaml"
    assert command in message
    assert list(tmp_path.iterdir()) == []


def evaluate_args(model: Path, workspace: Path) -> list[str]:
    return ["--model", str(model), "--data-dir", str(workspace / "data"), "--max-length", "64"]


def test_evaluate_on_a_run_folder_names_its_models(workspace, tmp_path, capsys):
    run = tmp_path / "run"
    fake_run(run)
    shutil.copytree(workspace / "teacher", run / "best")
    message = refused(evaluate_script.main, evaluate_args(run, workspace), capsys)
    assert f"{run} is a training run's folder, not a model (it holds best/): pass its best/" in message


def test_evaluate_refuses_a_truncated_checkpoint_and_a_missing_head(workspace, tmp_path, capsys):
    truncated = tmp_path / "truncated"
    shutil.copytree(workspace / "teacher", truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    message = refused(evaluate_script.main, evaluate_args(truncated, workspace), capsys)
    assert f"{weights} is not a readable safetensors file" in message
    headless = tmp_path / "headless"
    base_model(workspace).save_pretrained(headless)
    message = refused(evaluate_script.main, evaluate_args(headless, workspace), capsys)
    assert "has no classification head" in message and "a random classifier's" in message
