"""Hugging Face checkpoint I/O: bad input errors, head-less and masked-LM checkpoints, .bin conversion, label
names and model cards for ``transformers`` pipelines, students ``transformers`` loads cleanly, MiniLM."""

import json
import logging
import os
import sys
import time

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import distilbert_eqx as de
from distilbert_eqx import hub
from distilbert_eqx.hf import HubUnavailable
from helpers import (
    VOCAB,
    hf_forward,
    hf_inputs,
    max_diff,
    minilm_dir,
    our_forward,
    sst2_dir,
    tiny_hf,
    tiny_student,
    tiny_teacher,
)
from test_models import MODEL_TOL


def test_missing_path_and_missing_config(tmp_path):
    with pytest.raises(de.CheckpointError, match="is not a folder"):
        de.from_pretrained(tmp_path / "nope")
    with pytest.raises(de.CheckpointError, match="no config.json"):
        de.from_pretrained(tmp_path)


def test_unknown_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(de.CheckpointError, match=r"unsupported model_type 'gpt2'.*'bert', 'distilbert'"):
        de.from_pretrained(tmp_path)


def test_every_tensor_problem_reported_at_once(tmp_path):
    tiny_hf("bert").save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["bert.encoder.layer.1.attention.self.key.weight"]
    tensors["bert.encoder.layer.0.output.dense.bias"] = np.zeros(5, np.float32)
    tensors["bert.embeddings.word_embeddings.weight"] = tensors[
        "bert.embeddings.word_embeddings.weight"
    ].astype(np.int32)
    tensors["bert.encoder.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(de.CheckpointError) as info:
        de.from_pretrained(tmp_path)
    message = str(info.value)
    assert (
        "missing tensor bert.encoder.layer.1.attention.self.key.weight (expected shape (32, 32))" in message
    )
    assert "tensor bert.encoder.layer.0.output.dense.bias has shape (5,), expected (32,)" in message
    assert "bert.embeddings.word_embeddings.weight has dtype int32" in message
    assert "unexpected tensor bert.encoder.extra.weight" in message


def test_no_weights_file(tmp_path):
    tiny_hf("distilbert").config.save_pretrained(tmp_path)
    with pytest.raises(de.CheckpointError, match="no model.safetensors"):
        de.from_pretrained(tmp_path)


def test_base_model_checkpoint_gets_fresh_head(tmp_path, caplog):
    """A plain BertModel folder (no ``bert.`` prefix, no classifier) loads with a new head, and says so."""
    hf = tiny_hf("bert")
    hf.bert.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="distilbert_eqx.hf"):
        ours = de.from_pretrained(tmp_path, num_labels=3)
    assert "classifier.weight" in caplog.text
    inputs = hf_inputs()
    expected = hf_forward(hf, inputs).hidden_states[-1].numpy()
    assert max_diff(our_forward(ours, inputs).hidden_states[:, -1], expected) <= MODEL_TOL
    assert ours.classifier.weight.shape == (3, 32)


def test_a_missing_head_is_refused_where_it_would_make_the_outputs_meaningless(tmp_path):
    tiny_hf("bert").bert.save_pretrained(tmp_path)
    message = r"no classification head \(classifier\.weight, classifier\.bias are missing\), and a fresh"
    with pytest.raises(de.CheckpointError, match=message + r" random head would make the teacher's logits"):
        de.from_pretrained(tmp_path, refuse_fresh_head="the teacher's logits noise")


def test_a_truncated_safetensors_file_is_a_checkpoint_error(tmp_path):
    tiny_hf("distilbert").save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(de.CheckpointError, match=r"model\.safetensors is not a readable safetensors file"):
        de.from_pretrained(tmp_path)


def test_a_hub_id_fails_at_once_when_the_hub_cannot_be_reached(monkeypatch):
    monkeypatch.setattr(hub, "unreachable", lambda: "no connection to the hub: test")
    started = time.perf_counter()
    message = r"'nobody/no-such-model' is neither a local folder nor in the hub cache, and the hub cannot be"
    with pytest.raises(HubUnavailable, match=message + r" reached \(no connection to the hub: test\)"):
        de.from_pretrained("nobody/no-such-model")
    assert time.perf_counter() - started < 5


def test_masked_lm_distilbert_loads_for_classification(tmp_path):
    """distilbert-base-uncased is a masked-LM checkpoint: its vocab_* head is skipped, the classifier is new."""
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=48)
    mlm = transformers.DistilBertForMaskedLM(config)
    mlm.save_pretrained(tmp_path)
    ours = de.from_pretrained(tmp_path, num_labels=2)
    np.testing.assert_array_equal(
        np.asarray(ours.encoder.layers[1].feed_forward.up.weight),
        mlm.distilbert.transformer.layer[1].ffn.lin1.weight.detach(),
    )


def test_pytorch_bin_converted_when_torch_present(tmp_path):
    hf = tiny_hf("distilbert")
    _save_bin(hf, tmp_path)
    assert (tmp_path / "pytorch_model.bin").is_file() and not (tmp_path / "model.safetensors").exists()
    inputs = hf_inputs(token_types=False)
    ours = de.from_pretrained(tmp_path)
    assert max_diff(our_forward(ours, inputs).logits, hf_forward(hf, inputs).logits.numpy()) <= MODEL_TOL


def test_pytorch_bin_without_torch_says_how_to_convert(tmp_path, monkeypatch):
    hf = tiny_hf("distilbert")
    _save_bin(hf, tmp_path)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(de.CheckpointError, match="holds only pytorch_model.bin.*save_pretrained"):
        de.from_pretrained(tmp_path)


def _save_bin(model: torch.nn.Module, folder) -> None:
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")


def test_save_writes_tokenizer_files(tmp_path):
    folder = minilm_dir()
    tiny_hf("distilbert").save_pretrained(tmp_path / "src")
    de.save_pretrained(de.from_pretrained(tmp_path / "src"), tmp_path / "out", tokenizer=folder)
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= set(
        os.listdir(tmp_path / "out")
    )


SST2_LABELS = ("negative", "positive")
MODEL_CARD = "# tiny-bert-sst2\n\nA random tiny BERT with SST-2's label names.\n"
SENTENCES = ["a gorgeous, witty, seductive movie.", "the story is too thin to hold a feature film."]


def test_label_names_and_model_card_reach_a_transformers_pipeline(tmp_path):
    """A pipeline on the saved folder prints the label names. (Which name goes with which of our classes is
    id2label's order, checked here, and the exported weights', checked by the round-trip test.)"""
    vocab_size = len(transformers.AutoTokenizer.from_pretrained(minilm_dir()))
    tiny_hf("bert", num_labels=2, vocab_size=vocab_size).save_pretrained(tmp_path / "src")
    folder = de.save_pretrained(
        de.from_pretrained(tmp_path / "src"),
        tmp_path / "sst2",
        tokenizer=minilm_dir(),
        label_names=SST2_LABELS,
        model_card=MODEL_CARD,
    )
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    assert (folder / "README.md").read_text() == MODEL_CARD

    classify = transformers.pipeline("text-classification", model=str(folder), tokenizer=str(folder))
    predicted = [p["label"] for p in classify(SENTENCES)]
    assert len(predicted) == len(SENTENCES)
    assert all(label in SST2_LABELS for label in predicted), predicted


@pytest.mark.parametrize(
    "label_names", [("negative",), ("negative", "neutral", "positive"), ("positive", "positive")]
)
def test_wrong_label_names_are_rejected_and_nothing_is_written(tmp_path, label_names):
    tiny_hf("distilbert", num_labels=2).save_pretrained(tmp_path / "src")
    model = de.from_pretrained(tmp_path / "src")
    with pytest.raises(ValueError, match=r"label_names=.*: expected 2 distinct names"):
        de.save_pretrained(model, tmp_path / "out", label_names=label_names)
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_student_loads_into_transformers_without_key_problems(tmp_path):
    """Every tensor a distilled student saves is one transformers expects, and it expects no other."""
    student = tiny_student(tiny_teacher())
    de.save_pretrained(student, tmp_path)
    hf, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager"
    )
    assert isinstance(hf, transformers.DistilBertForSequenceClassification)
    assert {"missing_keys", "unexpected_keys", "mismatched_keys"} <= set(info)
    assert {k: list(v) for k, v in info.items() if v} == {}
    inputs = hf_inputs(token_types=False)
    assert (
        max_diff(our_forward(student, inputs).logits, hf_forward(hf.eval(), inputs).logits.numpy())
        <= MODEL_TOL
    )


@pytest.mark.slow
def test_minilm_checkpoint_matches_transformers():
    """The real 6-layer MiniLM BERT: every hidden state and the pooler equal transformers' on real SST-2 text.

    The reference is transformers run in float64. Its own float32 run is up to 7e-5 away from that at padded
    positions of deep layers (activations reach ~10 there), which would leave a float32-vs-float32 comparison at
    1e-4 testing rounding luck; against float64 ours is within 4e-5 everywhere and 3e-6 on real tokens.
    """
    folder = minilm_dir()
    sentences = [line.split("\t")[0] for line in (sst2_dir() / "dev.tsv").read_text().splitlines()[1:9]]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    enc = tokenizer(sentences, padding="longest", truncation=True, max_length=64, return_tensors="np")
    inputs = {
        "input_ids": enc["input_ids"].astype(np.int32),
        "attention_mask": enc["attention_mask"].astype(bool),
        "token_type_ids": enc["token_type_ids"].astype(np.int32),
    }
    hf = transformers.BertModel.from_pretrained(folder, attn_implementation="eager").eval().double()
    expected = hf_forward(hf, inputs)
    ours = de.from_pretrained(folder)
    got = our_forward(ours, inputs)
    for i, state in enumerate(expected.hidden_states):
        assert max_diff(got.hidden_states[:, i], state.numpy()) <= MODEL_TOL, f"hidden state {i}"
    pooled = jax.vmap(ours.pool)(got.hidden_states[:, -1, :1])[:, 0]
    assert max_diff(pooled, expected.pooler_output.numpy()) <= MODEL_TOL
