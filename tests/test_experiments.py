"""The experiment scripts end to end on a tiny model and a few dozen real SST-2 rows; Ctrl-C and exact resume."""

import json
import os
import signal
import sys
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest
import transformers

import distilbert_eqx as de
from distilbert_eqx import loop
from distilbert_eqx.config import ExperimentConfig, load_config
from distilbert_eqx.data import DataError, TokenizedSplit, load_text_split, load_tokenizer, tokenize_split
from distilbert_eqx.init import student_from_teacher
from distilbert_eqx.loop import fit, single_device_steps
from paths import REPO, minilm_dir, shared_dir

sys.path.insert(0, str(REPO / "experiments"))
import accuracy_by_length  # noqa: E402
import clipping_by_length  # noqa: E402
import cosine_weights  # noqa: E402
import distill_sst2  # noqa: E402
import evaluate as evaluate_script  # noqa: E402
import finetune_teacher  # noqa: E402
import padding_by_chunk  # noqa: E402
import paired_by_sentence  # noqa: E402
import summarize_batching  # noqa: E402


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A data folder with the first rows of the real splits, and a tiny BERT saved with the real tokenizer."""
    tokenizer = minilm_dir()
    if tokenizer is None:
        pytest.skip("MiniLM tokenizer not found (set DISTILBERT_EQX_MINILM or run .ci/run)")
    root = tmp_path_factory.mktemp("experiment")
    data = root / "data"
    data.mkdir()
    for split, rows in (("train", 40), ("dev", 20)):
        lines = (shared_dir() / f"data/sst2/{split}.tsv").read_text().splitlines()[: rows + 1]
        (data / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=128,
    )
    teacher = root / "teacher"
    transformers.BertForSequenceClassification(config).save_pretrained(teacher)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (teacher / name).write_bytes((tokenizer / name).read_bytes())
    return root


def common(workspace: Path, out: str) -> list[str]:
    settings = {
        "data_dir": workspace / "data", "tokenizer_name": workspace / "teacher", "teacher_model": workspace / "teacher",
        "max_steps": 2, "batch_size": 8, "log_every": 1, "log_val_every": 2, "dtype": "float32",
        "output_dir": workspace / out, "max_length": 64,
    }
    return [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]


def test_finetune_evaluate_distill_scripts(workspace, capsys):
    summary = finetune_teacher.main(
        common(workspace, "ft") + ["--set", "alpha_kl=0", "--set", "alpha_cos=0", "--set", "do_checkpoint=true",
                                   "--set", "checkpoint_every=1"]
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
        ["--model", str(out / "model"), "--data-dir", str(workspace / "data"), "--split", "dev",
         "--predictions-out", str(predictions)]
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert result["n"] == len(rows) == 20
    assert result["accuracy"] == pytest.approx(np.mean([r["prediction"] == r["label"] for r in rows]))
    assert [r["label"] for r in rows] == load_text_split("dev", data_dir=workspace / "data").labels.tolist()

    summary = distill_sst2.main(
        common(workspace, "kd") + ["--set", f"teacher_model={out / 'model'}", "--set", "student_init_layers=[0,1]"]
    )
    assert summary["steps"] == 2
    student = transformers.AutoModelForSequenceClassification.from_pretrained(workspace / "kd" / "student")
    assert isinstance(student, transformers.DistilBertForSequenceClassification)
    assert (workspace / "kd" / "best" / "tokenizer.json").is_file()


def _student_and_teacher(workspace: Path):
    teacher = de.from_pretrained(workspace / "teacher")
    student = student_from_teacher(teacher, [0, 1], key=jax.random.key(1))
    return student, eqx.nn.inference_mode(teacher)


def _splits(workspace: Path):
    tokenizer = load_tokenizer(str(workspace / "teacher"), 64)
    return {s: tokenize_split(load_text_split(s, data_dir=workspace / "data"), tokenizer) for s in ("train", "dev")}


@pytest.mark.parametrize("normalizer", ["batch_tokens", "train_mean_length"])
def test_fit_gives_the_cosine_loss_the_normalizer_of_the_config(workspace, normalizer):
    config = load_config(None, [f"data_dir={workspace / 'data'}", "max_length=64", f"cosine_normalizer={normalizer}",
                                f"output_dir={workspace / 'cosine'}"])
    splits = _splits(workspace)
    given = []

    class Stop(Exception):
        pass

    def make_steps(losses, optimizer):
        given.append(losses)
        raise Stop

    with pytest.raises(Stop):
        fit(config, *_student_and_teacher(workspace), splits, key=jax.random.key(7), make_steps=make_steps)
    mean_length = splits["train"].offsets[-1] / len(splits["train"])
    expected = None if normalizer == "batch_tokens" else pytest.approx(mean_length, rel=1e-12)
    assert given[0].cosine_tokens_per_example == expected


@pytest.mark.parametrize("max_grad_norm", [None, 0.25])
def test_fit_gives_the_optimizer_the_max_grad_norm_of_the_config(workspace, monkeypatch, max_grad_norm):
    value = "null" if max_grad_norm is None else max_grad_norm
    config = load_config(None, [f"data_dir={workspace / 'data'}", "max_length=64",
                                f"output_dir={workspace / 'gradclip'}", f"max_grad_norm={value}"])
    given = []

    class Stop(Exception):
        pass

    def make_optimizer(*args):
        given.append(args)
        raise Stop

    monkeypatch.setattr(loop, "make_optimizer", make_optimizer)
    with pytest.raises(Stop):
        fit(config, *_student_and_teacher(workspace), _splits(workspace), key=jax.random.key(7))
    assert given[0][-1] == max_grad_norm


def eight_of_each_length() -> TokenizedSplit:
    """A training split of eight examples each of lengths 4, 6, 12, 16, 20, 30, 40, 50 (tokens all 1)."""
    lengths = np.repeat([4, 6, 12, 16, 20, 30, 40, 50], 8)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return TokenizedSplit("train", np.zeros(len(lengths), np.int32), offsets, np.ones(offsets[-1], np.int32),
                          np.zeros(offsets[-1], np.int32), 0)


def test_cosine_weights_by_length_class():
    """Eight examples of each of the lengths 4, 6, 12, 16, 20, 30, 40, 50 in batches of 8. Grouped, each batch
    holds one length, so the token average weighs examples equally (the example shares); train_mean_length gives
    the token shares with either batching; random batches with the token average give neither."""
    split = eight_of_each_length()
    config = ExperimentConfig(batch_size=8)
    lengths = split.lengths
    examples = np.array([2, 3, 3]) / 8  # <= 8: 4, 6; 9-24: 12, 16, 20; > 24: 30, 40, 50
    tokens = np.array([4 + 6, 12 + 16 + 20, 30 + 40 + 50]) / lengths.reshape(8, 8)[:, 0].sum()
    assert cosine_weights.example_shares(split) == pytest.approx(examples, abs=1e-12)

    def shares(grouped, normalizer):
        return cosine_weights.cosine_weight_shares(config, split, 3, grouped, normalizer)

    assert shares(True, "batch_tokens") == pytest.approx(examples, abs=1e-12)
    assert shares(True, "train_mean_length") == pytest.approx(tokens, abs=1e-12)
    assert shares(False, "train_mean_length") == pytest.approx(tokens, abs=1e-12)
    random_batches = shares(False, "batch_tokens")
    assert np.abs(random_batches - examples).max() > 0.05 and np.abs(random_batches - tokens).max() > 1e-3


def test_clipping_by_length_class_by_hand():
    """Four steps of two examples: norms 0.5 and 1.0 are not clipped, 2.0 and 4.0 are scaled by 1/2 and 1/4."""
    counts = np.array([[2, 0, 0], [0, 2, 0], [0, 0, 2], [1, 1, 0]])
    r = clipping_by_length.clipping_by_class(counts, np.array([0.5, 2.0, 4.0, 1.0]), 1.0)
    assert r["steps"] == 4 and r["clipped"] == 0.5 and r["clipped_by_quarter"] == [0, 1, 1, 0]
    assert r["mean_scale"] == pytest.approx((1 + 0.5 + 0.25 + 1) / 4)
    assert r["example_share"] == pytest.approx([3 / 8, 3 / 8, 2 / 8])
    assert r["clip_weighted_share"] == pytest.approx(np.array([2 + 1, 2 * 0.5 + 1, 2 * 0.25]) / 5.5)
    # The last step's classes tie; it counts as its first (<= 8), with norm 1.0 beside the first step's 0.5.
    assert r["median_norm_by_dominant_class"] == pytest.approx([0.75, 2.0, 4.0])
    assert r["batches_by_dominant_class"] == [2, 1, 1]


def test_clipping_by_length_rebuilds_a_runs_batches(workspace, tmp_path, capsys):
    """A grouped run of 7 steps over 5 batches per epoch: the script reads every step's norm and finds each step's
    examples; the first epoch's 5 batches hold every training example once (checked against the tokenized split)."""
    run = workspace / "clip"
    distill_sst2.main(common(workspace, "clip") + ["--set", "max_steps=7", "--set", "group_by_length=true",
                                                      "--set", "student_init_layers=[0,1]",
                                                      # One shape to compile: the lengths still vary.
                                                      "--set", "length_buckets=[64]", "--set", "log_val_every=7"])
    norms = clipping_by_length.read_grad_norms(run)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert norms.tolist() == [r["grad_norm"] for r in logged if "grad_norm" in r]
    _, counts, max_norm = clipping_by_length.run_class_counts(run, len(norms))
    assert max_norm == 1.0
    assert counts.shape == (7, 3) and (counts.sum(axis=1) == 8).all()
    lengths = _splits(workspace)["train"].lengths
    assert counts[:5].sum(axis=0).tolist() == np.bincount(clipping_by_length.length_class(lengths), minlength=3).tolist()
    (result,) = clipping_by_length.main([str(run)])
    assert result["steps"] == 7
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"][0]["steps"] == 7

    sparse = tmp_path / "sparse"
    sparse.mkdir()
    (sparse / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "grad_norm": 1.0}) for s in (1, 2, 4)))
    with pytest.raises(ValueError, match="no record for step 3"):
        clipping_by_length.read_grad_norms(sparse)


def test_accuracy_by_length_class_by_hand():
    """Lengths 5, 8 | 9 | 25, 30: right 1 of 2, 1 of 1, 1 of 2; without the 9 the middle class is empty."""
    correct = np.array([True, False, True, True, False])
    r = accuracy_by_length.accuracy_by_class(correct, np.array([5, 8, 9, 30, 25]))
    assert r == {"accuracy": [0.5, 1.0, 0.5], "counts": [2, 1, 2], "overall": 0.6}
    r = accuracy_by_length.accuracy_by_class(correct[[0, 1, 3, 4]], np.array([5, 8, 30, 25]))
    assert r["accuracy"] == [0.5, None, 0.5] and r["counts"] == [2, 0, 2]


def test_accuracy_by_length_of_a_run(workspace, capsys):
    """A 2-step run: the script's overall dev accuracy of best/ is evaluate.py's, its classes count every dev
    sentence by its tokenized length, and a second call reads the saved predictions without the models."""
    run = workspace / "bylength"
    distill_sst2.main(common(workspace, "bylength") + ["--set", "student_init_layers=[0,1]"])
    expected = evaluate_script.main(["--model", str(run / "best"), "--data-dir", str(workspace / "data")])
    result = accuracy_by_length.main([str(run), "--splits", "dev"])
    best, final = result["rows"]
    assert (best["model"], best["arm"], best["split"]) == ("best", "random", "dev") and final["model"] == "final"
    assert best["overall"] == pytest.approx(expected["accuracy"])
    lengths = _splits(workspace)["dev"].lengths
    assert result["counts"]["dev"] == best["counts"] == np.bincount(
        accuracy_by_length.length_class(lengths), minlength=3).tolist()
    assert sum(best["counts"]) == 20
    mean_best = result["means"][0]
    assert mean_best["accuracy"] == best["accuracy"] and mean_best["runs"] == 1
    for folder in ("best", "student"):
        (run / folder / "model.safetensors").unlink(missing_ok=True)
    capsys.readouterr()
    assert accuracy_by_length.main([str(run), "--splits", "dev"])["rows"] == result["rows"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == result["rows"]


def test_padding_by_chunk():
    """Eight examples each of lengths 4, 6, 12, 16, 20, 30, 40, 50, batches of 8: a chunk of the whole epoch gives
    batches of one length (std 0, padded to each length's bucket); a chunk of one batch pads as random batches."""
    split = eight_of_each_length()
    config = ExperimentConfig(batch_size=8, length_buckets=(8, 16, 32, 64, 128))
    whole = padding_by_chunk.epoch_uniformity(config, split, 8)
    assert whole["within_batch_std"] == 0.0
    assert whole["mean_padded_length"] == pytest.approx(np.mean([8, 8, 16, 16, 32, 32, 64, 64]))
    one, random_batches = (padding_by_chunk.epoch_uniformity(config, split, c) for c in (1, None))
    assert one["mean_padded_length"] == random_batches["mean_padded_length"] > whole["mean_padded_length"]
    assert one["within_batch_std"] == pytest.approx(random_batches["within_batch_std"])
    assert one["within_batch_std"] > 5


def test_ctrl_c_then_resume_equals_uninterrupted_run(workspace):
    """Dropout on, 2 epochs of 5 batches: stopped by SIGINT after 3 steps and resumed, the weights are identical."""
    overrides = [
        f"data_dir={workspace / 'data'}", "batch_size=8", "num_epochs=2", "log_every=1", "log_val_every=4",
        "do_checkpoint=true", "checkpoint_every=4", "dtype=float32", "max_length=64", "learning_rate=1e-3",
    ]
    splits = _splits(workspace)

    def run(out: str, *, resume: bool, interrupt_after: int | None):
        config = load_config(None, overrides + [f"output_dir={workspace / out}", f"resume_from_checkpoint={resume}"])
        student, teacher = _student_and_teacher(workspace)

        def make_steps(losses, optimizer):
            steps = single_device_steps(losses, optimizer)
            calls = []

            def train(teacher, state, batch):
                calls.append(1)
                if len(calls) == interrupt_after:
                    os.kill(os.getpid(), signal.SIGINT)
                return steps.train(teacher, state, batch)

            return type(steps)(train, steps.evaluate, steps.place, steps.place_state)

        summary = fit(config, student, teacher, splits, key=jax.random.key(7), make_steps=make_steps)
        return summary, workspace / out

    full, full_dir = run("uninterrupted", resume=False, interrupt_after=None)
    stopped, resumed_dir = run("resumed", resume=False, interrupt_after=3)
    assert stopped == {"interrupted": True, "steps": 3}
    assert (resumed_dir / "checkpoints" / "step_00000003").is_dir()
    resumed, _ = run("resumed", resume=True, interrupt_after=None)
    assert full["steps"] == resumed["steps"] == 10
    a = de.from_pretrained(full_dir / "student")
    b = de.from_pretrained(resumed_dir / "student")
    for x, y in zip(jax.tree.leaves(eqx.filter(a, eqx.is_array)), jax.tree.leaves(eqx.filter(b, eqx.is_array))):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    logged = [json.loads(line)["step"] for line in (resumed_dir / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in logged if s <= 3][:3] == [1, 2, 3] and 4 in logged


def test_bad_inputs_fail_before_writing_anything(workspace, tmp_path):
    base = common(workspace, "unused")
    missing = base + ["--set", f"data_dir={tmp_path / 'nowhere'}", "--set", f"output_dir={tmp_path / 'out1'}"]
    with pytest.raises(DataError, match="train.tsv"):
        distill_sst2.main(missing + ["--set", "student_init_layers=[0,1]"])
    assert not (tmp_path / "out1").exists()

    other = transformers.DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=4, hidden_dim=48)
    transformers.DistilBertForSequenceClassification(other).save_pretrained(tmp_path / "small_vocab")
    mismatch = base + ["--set", f"student_model={tmp_path / 'small_vocab'}", "--set", f"output_dir={tmp_path / 'out2'}"]
    with pytest.raises(DataError, match="vocabularies differ"):
        distill_sst2.main(mismatch)
    assert not (tmp_path / "out2").exists()


def test_summarize_batching_pools_seeds_and_pairs_differences(tmp_path, capsys):
    # Seeds 42, 1, 2 and 3 of the README's grouped-vs-random table, as correct predictions out of 872 (dev) and
    # 1821 (test); seed 9 lacks one file, so it is incomplete and left out.
    counts = {"42": (766, 774, 1610, 1612), "1": (770, 770, 1611, 1611), "2": (768, 772, 1613, 1613),
              "3": (760, 769, 1615, 1610), "9": (700, 700, 1500, None)}
    for seed, (g_dev, r_dev, g_test, r_test) in counts.items():
        for arm, dev, test in (("grouped", g_dev, g_test), ("random", r_dev, r_test)):
            run = tmp_path / f"seed{seed}_{arm}"
            run.mkdir()
            for split, correct, n in (("dev", dev, 872), ("test", test, 1821)):
                if correct is not None:
                    (run / f"accuracy_{split}.json").write_text(json.dumps({"accuracy": correct / n, "n": n}))
                if seed == "1":  # the final checkpoints' files, for one seed only
                    (run / f"final_accuracy_{split}.json").write_text(json.dumps({"accuracy": 0.5, "n": n}))
    (tmp_path / "notes.txt").write_text("not a run")

    summaries = summarize_batching.main([str(tmp_path)])
    summary = summaries["best"]

    assert summary["seeds"] == ["1", "2", "3", "42"]
    assert summary["dev"]["mean_accuracy"]["grouped"] == pytest.approx(3064 / 3488)
    assert summary["dev"]["mean_accuracy"]["random"] == pytest.approx(3085 / 3488)
    assert summary["test"]["mean_accuracy"]["random"] == pytest.approx(6446 / 7284)
    # By hand, in sentences: differences 0, -4, -9, -8; mean -5.25; squared deviations 27.5625 + 1.5625 +
    # 14.0625 + 7.5625 = 50.75, sample sd sqrt(50.75 / 3) = 4.1130, t = -5.25 / (4.1130 / 2) = -2.5529.
    dev = summary["dev"]["paired"]
    assert dev["differences"] == pytest.approx([0.0, -400 / 872, -900 / 872, -800 / 872])
    assert dev["mean_difference"] == pytest.approx(-525 / 872)
    assert dev["t"] == pytest.approx(-2.5529, abs=1e-4)
    assert dev["df"] == 3
    out = capsys.readouterr().out
    assert "best: incomplete seeds, left out: 9" in out
    assert "final: incomplete" not in out
    assert summaries["final"]["seeds"] == ["1"]
    assert summaries["final"]["dev"]["paired"] == {"differences": [0.0], "mean_difference": 0.0}
    assert "| 3 | 87.16 | 88.19 | 88.69 | 88.41 |" in out
    assert "| mean | 87.84 | 88.45 | 88.54 | 88.50 |" in out

    with pytest.raises(SystemExit, match="no seed with all"):
        summarize_batching.main([str(tmp_path / "seed9_grouped")])

    # The grouped runs of another setting, in their own folder, against the same random runs.
    other = tmp_path / "other"
    (other / "seed3_grouped").mkdir(parents=True)
    for split, correct, n in (("dev", 769, 872), ("test", 1610, 1821)):
        (other / "seed3_grouped" / f"accuracy_{split}.json").write_text(json.dumps({"accuracy": correct / n, "n": n}))
    summary = summarize_batching.main([str(tmp_path), "--grouped-root", str(other)])["best"]
    assert summary["seeds"] == ["3"]
    assert summary["dev"]["paired"]["differences"] == [0.0]
    assert "| 3 | 88.19 | 88.19 | 88.41 | 88.41 |" in capsys.readouterr().out


def test_summarize_batching_validation_curves(tmp_path, capsys):
    """Seeds 1 and 2 have both arms' metrics.jsonl; seed 3 only the grouped one, so it is left out. Seed 1's
    grouped run was resumed (step 1000 logged twice: the last record counts) and seed 2's random run validated
    at step 250 too (not every run has it, so it is dropped)."""
    curves = {
        ("1", "grouped"): [(500, 0.80), (1000, 0.70), (1000, 0.84)],
        ("1", "random"): [(500, 0.78), (1000, 0.86)],
        ("2", "grouped"): [(500, 0.82), (1000, 0.85)],
        ("2", "random"): [(250, 0.5), (500, 0.80), (1000, 0.87)],
        ("3", "grouped"): [(500, 0.9), (1000, 0.9)],
    }
    for (seed, arm), points in curves.items():
        run = tmp_path / f"seed{seed}_{arm}"
        run.mkdir()
        lines = [json.dumps({"step": 1, "loss": 0.3})]  # a training record: no val_accuracy
        lines += [json.dumps({"step": step, "val_accuracy": acc, "val_examples": 872}) for step, acc in points]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        for split in ("dev", "test"):
            (run / f"accuracy_{split}.json").write_text(json.dumps({"accuracy": 0.5, "n": 100}))
    summary = summarize_batching.main([str(tmp_path)])["val_curve"]
    assert summary["seeds"] == ["1", "2"] and summary["steps"] == [500, 1000]
    assert summary["mean_accuracy"]["grouped"] == pytest.approx([0.81, 0.845])
    assert summary["mean_accuracy"]["random"] == pytest.approx([0.79, 0.865])
    assert summary["mean_difference"] == pytest.approx([2.0, -2.0])
    assert "| grouped - random | +2.00 | -2.00 |" in capsys.readouterr().out


def test_paired_by_sentence_by_hand():
    """Two seeds, four sentences: differences [0, 1, 0, 0] and [0, 0, 1, -1], mean 1/8. Per seed 1/4 and 0:
    sample sd sqrt(1/32), SE 1/8. Per sentence 0, 1/2, 1/2, -1/2: sample sd sqrt(0.6875 / 3), SE half that."""
    grouped = np.array([[1, 1, 0, 0], [1, 0, 1, 0]], np.float64)
    random = np.array([[1, 0, 0, 0], [1, 0, 0, 1]], np.float64)
    r = paired_by_sentence.paired_difference(grouped, random)
    assert (r["seeds"], r["sentences"]) == (2, 4)
    assert r["difference"] == pytest.approx(12.5)
    assert r["se_seeds"] == pytest.approx(12.5)
    assert r["se_sentences"] == pytest.approx(100 * np.sqrt(0.6875 / 3) / 2)
    low, high = r["interval_95"]
    assert low < 12.5 < high
    assert paired_by_sentence.paired_difference(grouped[:1], random[:1])["se_seeds"] is None


def test_paired_by_sentence_bootstrap_draws_sentences_and_seeds():
    """Seeds that agree: the interval is the sentences' (about +-1.96 SE). Sentences that agree within each
    seed: the sentence SE is 0 and the interval spans the seeds' differences."""
    rng = np.random.default_rng(1)
    diff = rng.integers(-1, 2, size=3000).astype(np.float64)
    grouped, random = np.tile(np.maximum(diff, 0), (3, 1)), np.tile(np.maximum(-diff, 0), (3, 1))
    r = paired_by_sentence.paired_difference(grouped, random, resamples=4000)
    assert r["se_seeds"] == 0
    low, high = r["interval_95"]
    assert high - low == pytest.approx(2 * 1.96 * r["se_sentences"], rel=0.1)
    per_seed = np.array([0.0, 0.5, 1.0])
    grouped, random = np.repeat(per_seed[:, None], 500, axis=1), np.zeros((3, 500))
    r = paired_by_sentence.paired_difference(grouped, random)
    assert r["se_sentences"] == 0 and r["difference"] == pytest.approx(50)
    low, high = r["interval_95"]
    assert 0 <= low < 50 < high <= 100 and high - low > 40


def test_paired_by_sentence_of_runs(tmp_path, capsys):
    """Run folders with saved predictions (no models needed): seeds 1 and 2 pair, seed 3 has no random run."""
    dev_labels = [0, 1, 1, 0, 1]
    right = {  # which of the 5 dev sentences each run gets right, best/ and final student/
        (1, True): ([1, 1, 1, 0, 1], [1, 1, 1, 1, 1]), (1, False): ([1, 1, 0, 0, 1], [1, 1, 1, 1, 0]),
        (2, True): ([1, 0, 1, 1, 1], [0, 0, 1, 1, 1]), (2, False): ([1, 0, 1, 1, 1], [1, 0, 1, 1, 1]),
        (3, True): ([0, 0, 0, 0, 0], [0, 0, 0, 0, 0]),
    }
    runs = []
    for (seed, grouped), models in right.items():
        run = tmp_path / f"seed{seed}_{'grouped' if grouped else 'random'}"
        run.mkdir()
        config = {"seed": seed, "group_by_length": grouped, "data_dir": "unused", "max_length": 16}
        (run / "config.json").write_text(json.dumps(config))
        for prefix, hits in zip(("", "final_"), models):
            rows = [{"prediction": y if hit else 1 - y, "label": y} for y, hit in zip(dev_labels, hits)]
            (run / f"{prefix}predictions_dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append(str(run))
    result = paired_by_sentence.main([*runs, "--splits", "dev"])
    assert result["seeds"] == [1, 2] and result["unpaired"] == [3]
    best, final = result["rows"]
    assert (best["model"], best["split"], final["model"]) == ("best", "dev", "final")
    # best/: seed 1 +1 sentence of 5, seed 2 0; final: seed 1 +1, seed 2 -1.
    assert best["difference"] == pytest.approx(100 * (1 / 5 + 0) / 2)
    assert final["difference"] == pytest.approx(0)
    assert final["se_seeds"] == pytest.approx(20)  # sd of +20 and -20 points is 20 * sqrt(2), over sqrt(2)
    assert "| best | dev | 5 | +10.00 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="two grouped runs of seed 1"):
        paired_by_sentence.main([runs[0], runs[0], "--splits", "dev"])
