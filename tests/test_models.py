"""Parity of our BERT and DistilBERT with ``transformers`` PyTorch models built from tiny random configs, and the
interface the two share (``AbstractSequenceClassifier``).

Tolerances (float32): 1e-5 for one block (embeddings, one layer), 1e-4 for whole models. Never loosened.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import distilbert_eqx as de
from distilbert_eqx.models.layers import MultiHeadAttention
from helpers import VOCAB, hf_forward, hf_inputs, max_diff, our_forward, tiny_hf, tiny_student, tiny_teacher

BLOCK_TOL = 1e-5
MODEL_TOL = 1e-4
# bfloat16 has an 8-bit mantissa (relative step 2^-8 = 0.4%); on these tiny models logits stay within this of float32.
BF16_LOGIT_TOL = 5e-2


@pytest.fixture(scope="module", params=["bert", "distilbert", "distilbert-sinusoidal"])
def pair(request, tmp_path_factory):
    """(transformers model, our model loaded from its save_pretrained folder, inputs); no test changes them."""
    model_type = request.param.split("-")[0]
    overrides = {"sinusoidal_pos_embds": True} if request.param.endswith("sinusoidal") else {}
    hf = tiny_hf(model_type, **overrides)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    ours = de.from_pretrained(folder)
    return hf, ours, hf_inputs(token_types=model_type == "bert")


def test_embeddings_match(pair):
    hf, ours, inputs = pair
    base = hf.bert if isinstance(hf, transformers.BertForSequenceClassification) else hf.distilbert
    with torch.no_grad():
        kwargs = (
            {"token_type_ids": torch.from_numpy(inputs["token_type_ids"]).long()}
            if "token_type_ids" in inputs
            else {}
        )
        expected = base.embeddings(torch.from_numpy(inputs["input_ids"]).long(), **kwargs).numpy()
    emb = eqx.nn.inference_mode(ours.encoder.embeddings)
    got = jax.vmap(emb)(*[jnp.asarray(inputs[k]) for k in ("input_ids", "token_type_ids") if k in inputs])
    assert max_diff(got, expected) <= BLOCK_TOL


def test_each_layer_matches(pair):
    """Our layer i on transformers' hidden state i gives transformers' hidden state i+1."""
    hf, ours, inputs = pair
    states = hf_forward(hf, inputs).hidden_states
    mask = jnp.asarray(inputs["attention_mask"])
    for i, layer in enumerate(eqx.nn.inference_mode(ours.encoder.layers)):
        got = jax.vmap(layer)(jnp.asarray(states[i].numpy()), mask).output
        assert max_diff(got, states[i + 1].numpy()) <= BLOCK_TOL, f"layer {i}"


def test_whole_model_matches(pair):
    hf, ours, inputs = pair
    expected = hf_forward(hf, inputs)
    got = our_forward(ours, inputs)
    assert got.hidden_states.shape[1] == len(expected.hidden_states)
    for i, state in enumerate(expected.hidden_states):
        assert max_diff(got.hidden_states[:, i], state.numpy()) <= MODEL_TOL, f"hidden state {i}"
    assert max_diff(got.last_hidden_state, expected.hidden_states[-1].numpy()) <= MODEL_TOL
    assert max_diff(got.logits, expected.logits.numpy()) <= MODEL_TOL


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_ours_to_transformers_round_trip(model_type, tmp_path):
    """A model we trained (here: randomly perturbed) saves to a folder transformers loads with the same logits."""
    tiny_hf(model_type).save_pretrained(tmp_path / "src")
    ours = de.from_pretrained(tmp_path / "src")
    # The noise is drawn in numpy: an eager jax.random.normal per parameter shape costs a compile each.
    rng = np.random.default_rng(3)
    ours = jax.tree.map(
        lambda x: (
            jnp.asarray(np.asarray(x) + 0.05 * rng.standard_normal(x.shape, np.float32))
            if eqx.is_array(x)
            else x
        ),
        ours,
    )
    de.save_pretrained(ours, tmp_path / "out")
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "out", attn_implementation="eager"
    ).eval()
    inputs = hf_inputs(token_types=model_type == "bert")
    assert (
        max_diff(our_forward(ours, inputs).logits, hf_forward(reloaded, inputs).logits.numpy()) <= MODEL_TOL
    )
    # And back again: every parameter survives the trip bit for bit.
    again = de.from_pretrained(tmp_path / "out")
    assert all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(ours)))


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_padding_invariance(model_type, tmp_path):
    """Tokens under the mask do not change any unmasked output."""
    tiny_hf(model_type).save_pretrained(tmp_path)
    ours = de.from_pretrained(tmp_path)
    inputs = hf_inputs(token_types=model_type == "bert")
    scrambled = dict(inputs)
    rng = np.random.default_rng(7)
    noise = rng.integers(1, VOCAB, size=inputs["input_ids"].shape).astype(np.int32)
    scrambled["input_ids"] = np.where(inputs["attention_mask"], inputs["input_ids"], noise)
    a, b = our_forward(ours, inputs), our_forward(ours, scrambled)
    assert np.array_equal(np.asarray(a.logits), np.asarray(b.logits)) or max_diff(a.logits, b.logits) <= 1e-6
    mask = inputs["attention_mask"][:, None, :, None]
    assert max_diff(np.where(mask, a.hidden_states, 0), np.where(mask, b.hidden_states, 0)) <= 1e-6
    assert not np.array_equal(scrambled["input_ids"], inputs["input_ids"])


# Slow: every compile it triggers (two jits, bfloat16 op by op) is its own; no other test shares them.
@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_jit_matches_eager_and_bfloat16_is_close(model_type, tmp_path):
    tiny_hf(model_type).save_pretrained(tmp_path)
    inputs = hf_inputs(token_types=model_type == "bert")
    f32 = de.from_pretrained(tmp_path)
    eager = our_forward(f32, inputs)
    with jax.disable_jit(False):
        jitted = eqx.filter_jit(our_forward)(f32, inputs)
    assert max_diff(eager.logits, jitted.logits) <= 1e-6
    bf16 = de.from_pretrained(tmp_path, dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(eqx.filter(bf16, eqx.is_array)))
    low = our_forward(bf16, inputs)
    assert low.logits.dtype == jnp.float32
    assert 0 < max_diff(low.logits, eager.logits) <= BF16_LOGIT_TOL


def test_token_type_ids_rejected_by_distilbert_embeddings(tmp_path):
    tiny_hf("distilbert").save_pretrained(tmp_path)
    ours = eqx.nn.inference_mode(de.from_pretrained(tmp_path))
    with pytest.raises(ValueError, match="no token type embeddings"):
        ours.encoder.embeddings(jnp.arange(4), jnp.zeros(4, jnp.int32))


@pytest.fixture(scope="module")
def classifiers() -> tuple[de.BertForSequenceClassification, de.DistilBertForSequenceClassification]:
    """A teacher and its student as shape-only trees: the interface tests below check structure and errors
    raised while tracing, so nothing needs computing (or compiling)."""
    teacher = eqx.filter_eval_shape(tiny_teacher)
    return teacher, eqx.filter_eval_shape(tiny_student, teacher)


def test_abstract_classifier_cannot_be_instantiated():
    with pytest.raises(TypeError, match="abstract method pool"):
        de.AbstractSequenceClassifier()

    class PoolOnly(de.AbstractSequenceClassifier):
        def pool(self, first_token):
            return first_token

    # The fields are AbstractVars: a subclass must declare every one of them, not only pool.
    with pytest.raises(TypeError, match=r"abstract attributes .*'encoder'"):
        PoolOnly()


def test_both_models_are_sequence_classifiers(classifiers):
    bert, distilbert = classifiers
    assert all(isinstance(m, de.AbstractSequenceClassifier) for m in classifiers)
    assert bert.takes_token_types is True
    assert distilbert.takes_token_types is False
    assert (
        (bert.num_layers, distilbert.num_layers)
        == (bert.config.num_layers, distilbert.config.num_layers)
        == (2, 2)
    )


def test_distilbert_call_rejects_token_type_ids(classifiers):
    bert, distilbert = classifiers
    ids, mask = jnp.arange(1, 6, dtype=jnp.int32), jnp.ones(5, bool)
    types = jnp.zeros(5, jnp.int32)
    assert eqx.filter_eval_shape(bert, ids, mask, types).logits.shape == (2,)
    assert eqx.filter_eval_shape(distilbert, ids, mask).logits.shape == (2,)
    with pytest.raises(ValueError, match="no token type embeddings; do not pass token_type_ids"):
        eqx.filter_eval_shape(distilbert, ids, mask, types)


def test_attention_projections_are_named_as_in_equinox(classifiers):
    linears = {f.name for f in dataclasses.fields(MultiHeadAttention) if f.type is eqx.nn.Linear}
    assert linears == {"query_proj", "key_proj", "value_proj", "output_proj"}
    for model in classifiers:
        for layer in model.encoder.layers:
            for name in sorted(linears):
                assert getattr(layer.attention, name).weight.shape == (32, 32), name
