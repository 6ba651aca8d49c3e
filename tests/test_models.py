"""Parity of our BERT and DistilBERT with ``transformers`` PyTorch models built from tiny random configs.

Tolerances (float32): 1e-5 for one block (embeddings, one layer), 1e-4 for whole models. Never loosened.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import distilbert_eqx as de
from distilbert_eqx.models.layers import ClassifierOutput

BLOCK_TOL = 1e-5
MODEL_TOL = 1e-4
# bfloat16 has an 8-bit mantissa (relative step 2^-8 = 0.4%); on these tiny models logits stay within this of float32.
BF16_LOGIT_TOL = 5e-2

VOCAB, SEQ, LABELS = 99, 12, 3
LENGTHS = (12, 7, 3)


def tiny_hf(model_type: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random ``transformers`` classifier; biases and LayerNorms are randomised so none of them is trivially 0/1."""
    torch.manual_seed(seed)
    if model_type == "bert":
        config = transformers.BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=64,
            type_vocab_size=2,
            num_labels=LABELS,
            attn_implementation="eager",
            **overrides,
        )
        model = transformers.BertForSequenceClassification(config)
    else:
        config = transformers.DistilBertConfig(
            vocab_size=VOCAB,
            dim=32,
            n_layers=3,
            n_heads=4,
            hidden_dim=48,
            max_position_embeddings=64,
            num_labels=LABELS,
            attn_implementation="eager",
            **overrides,
        )
        model = transformers.DistilBertForSequenceClassification(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def batch(seed: int = 1, token_types: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(len(LENGTHS), SEQ)).astype(np.int32)
    mask = np.arange(SEQ)[None, :] < np.array(LENGTHS)[:, None]
    ids = np.where(mask, ids, 0).astype(np.int32)
    # A second segment in the back half of every sequence, so token type embeddings matter.
    types = ((np.arange(SEQ)[None, :] >= np.array(LENGTHS)[:, None] // 2) & mask).astype(np.int32)
    out = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        out["token_type_ids"] = types
    return out


def hf_forward(model: torch.nn.Module, inputs: dict[str, np.ndarray]):
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in inputs.items()}, output_hidden_states=True)


def our_forward(model, inputs: dict[str, np.ndarray], **kwargs) -> ClassifierOutput:
    model = eqx.nn.inference_mode(model)
    args = [jnp.asarray(inputs["input_ids"]), jnp.asarray(inputs["attention_mask"])]
    if "token_type_ids" in inputs:
        args.append(jnp.asarray(inputs["token_type_ids"]))
    return jax.vmap(lambda *a: model(*a, output_hidden_states=True, **kwargs))(*args)


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.fixture(params=["bert", "distilbert", "distilbert-sinusoidal"])
def pair(request, tmp_path):
    """(transformers model, our model loaded from its save_pretrained folder, inputs)."""
    model_type = request.param.split("-")[0]
    overrides = {"sinusoidal_pos_embds": True} if request.param.endswith("sinusoidal") else {}
    hf = tiny_hf(model_type, **overrides)
    hf.save_pretrained(tmp_path)
    ours = de.from_pretrained(tmp_path)
    return hf, ours, batch(token_types=model_type == "bert")


def test_embeddings_match(pair):
    hf, ours, inputs = pair
    base = hf.bert if isinstance(hf, transformers.BertForSequenceClassification) else hf.distilbert
    with torch.no_grad():
        kwargs = {"token_type_ids": torch.from_numpy(inputs["token_type_ids"]).long()} if "token_type_ids" in inputs else {}
        expected = base.embeddings(torch.from_numpy(inputs["input_ids"]).long(), **kwargs).numpy()
    emb = eqx.nn.inference_mode(ours.embeddings)
    got = jax.vmap(emb)(*[jnp.asarray(inputs[k]) for k in ("input_ids", "token_type_ids") if k in inputs])
    assert max_diff(got, expected) <= BLOCK_TOL


def test_each_layer_matches(pair):
    """Our layer i on transformers' hidden state i gives transformers' hidden state i+1."""
    hf, ours, inputs = pair
    states = hf_forward(hf, inputs).hidden_states
    mask = jnp.asarray(inputs["attention_mask"])
    for i, layer in enumerate(eqx.nn.inference_mode(ours.layers)):
        got = jax.vmap(layer)(jnp.asarray(states[i].numpy()), mask)
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
    leaves, treedef = jax.tree.flatten(eqx.filter(ours, eqx.is_array))
    keys = jax.random.split(jax.random.key(3), len(leaves))
    noisy = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    ours = eqx.combine(jax.tree.unflatten(treedef, noisy), ours)
    de.save_pretrained(ours, tmp_path / "out")
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "out", attn_implementation="eager"
    ).eval()
    inputs = batch(token_types=model_type == "bert")
    assert max_diff(our_forward(ours, inputs).logits, hf_forward(reloaded, inputs).logits.numpy()) <= MODEL_TOL
    # And back again: every parameter survives the trip bit for bit.
    again = de.from_pretrained(tmp_path / "out")
    assert all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(ours)))


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_padding_invariance(model_type, tmp_path):
    """Tokens under the mask do not change any unmasked output."""
    tiny_hf(model_type).save_pretrained(tmp_path)
    ours = de.from_pretrained(tmp_path)
    inputs = batch(token_types=model_type == "bert")
    scrambled = dict(inputs)
    rng = np.random.default_rng(7)
    noise = rng.integers(1, VOCAB, size=inputs["input_ids"].shape).astype(np.int32)
    scrambled["input_ids"] = np.where(inputs["attention_mask"], inputs["input_ids"], noise)
    a, b = our_forward(ours, inputs), our_forward(ours, scrambled)
    assert np.array_equal(np.asarray(a.logits), np.asarray(b.logits)) or max_diff(a.logits, b.logits) <= 1e-6
    mask = inputs["attention_mask"][:, None, :, None]
    assert max_diff(np.where(mask, a.hidden_states, 0), np.where(mask, b.hidden_states, 0)) <= 1e-6
    assert not np.array_equal(scrambled["input_ids"], inputs["input_ids"])


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_jit_matches_eager_and_bfloat16_is_close(model_type, tmp_path):
    tiny_hf(model_type).save_pretrained(tmp_path)
    inputs = batch(token_types=model_type == "bert")
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


def test_token_type_ids_rejected_by_distilbert(tmp_path):
    tiny_hf("distilbert").save_pretrained(tmp_path)
    ours = eqx.nn.inference_mode(de.from_pretrained(tmp_path))
    with pytest.raises(ValueError, match="no token type embeddings"):
        ours.embeddings(jnp.arange(4), jnp.zeros(4, jnp.int32))
