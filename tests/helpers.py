"""Builders shared by the tests: tiny random models, random padded batches, comparisons, and where the real
data and weights are."""

import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import distilbert_eqx as de
from distilbert_eqx.batch import Batch
from distilbert_eqx.distill import Objective
from distilbert_eqx.distill.terms import CE, KL, Cos
from distilbert_eqx.init import student_from_teacher
from distilbert_eqx.minilm import FetchError, fetch_minilm

REPO = Path(__file__).resolve().parents[1]
VOCAB = 100


def tiny_bert_config(**overrides) -> de.BertConfig:
    """A BERT config small enough for a test: hidden 32, 4 heads; 2 layers unless overridden."""
    values = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 48,
        "max_position_embeddings": 32,
        "num_labels": 2,
    }
    return de.BertConfig(**(values | overrides))


# The original experiment's loss: hard CE 1.0 + KL 0.45 at T = 2 + cosine 0.1.
TEMPERATURE, ALPHA_CE, ALPHA_KL, ALPHA_COS = 2.0, 1.0, 0.45, 0.1


def original_objective() -> Objective:
    """The original experiment's three terms, as its flat keys spell them."""
    return Objective([CE(ALPHA_CE), KL(ALPHA_KL, temperature=TEMPERATURE), Cos(ALPHA_COS)])


def tiny_teacher(seed: int = 0, **overrides) -> de.BertForSequenceClassification:
    """A random tiny BERT classifier in inference mode."""
    return eqx.nn.inference_mode(
        de.BertForSequenceClassification(tiny_bert_config(**overrides), key=jax.random.key(seed))
    )


def tiny_student(
    teacher: de.BertForSequenceClassification, layers=(0, 1), dropout: bool = False
) -> de.DistilBertForSequenceClassification:
    """A DistilBERT student copied from ``teacher``'s ``layers``; dropout off unless ``dropout``."""
    student = student_from_teacher(teacher, list(layers), key=jax.random.key(1))
    return student if dropout else eqx.nn.inference_mode(student)


def random_batch(
    seed: int, batch: int = 8, seq: int = 12, vocab: int = VOCAB, real_rows: int | None = None
) -> Batch:
    """A padded batch ``(batch, seq)`` of random tokens; rows from ``real_rows`` on are weight-0 padding that,
    as data.py pads, attends to its first token only."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, seq + 1, size=batch)
    weights = np.ones(batch, np.float32)
    if real_rows is not None:
        weights[real_rows:] = 0.0
        lengths[real_rows:] = 1
    mask = np.arange(seq)[None, :] < lengths[:, None]
    ids = np.where(mask, rng.integers(1, vocab, size=(batch, seq)), 0).astype(np.int32)
    labels = rng.integers(0, 2, size=batch).astype(np.int32)
    return Batch(ids, mask, np.zeros_like(ids), labels, weights)


def copy_tree(tree):
    """Fresh buffers for every array of ``tree`` (a donating step deletes its inputs')."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True) if eqx.is_array(x) else x, tree)


def flat_weights(model: eqx.Module) -> np.ndarray:
    """Every float array of ``model``, flattened and concatenated."""
    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    return np.concatenate([np.ravel(np.asarray(x)) for x in leaves])


def max_diff(a, b) -> float:
    """The largest absolute elementwise difference, computed in float64."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def shared_dir() -> Path:
    """``../shared`` beside the repository (CI clones main with it there)."""
    return REPO.parent / "shared"


def sst2_dir() -> Path:
    """The real SST-2 GLUE TSVs."""
    return shared_dir() / "data/sst2"


def minilm_dir() -> Path:
    """The MiniLM-L6 BERT folder: ``$DISTILBERT_EQX_MINILM``, or fetched into ``weights/minilm`` as the
    reproduce script fetches it (``distilbert_eqx.minilm.fetch_minilm``)."""
    if "DISTILBERT_EQX_MINILM" in os.environ:
        return Path(os.environ["DISTILBERT_EQX_MINILM"])
    try:
        return fetch_minilm(REPO / "weights/minilm")
    except FetchError as e:
        raise RuntimeError(f"the real-weights tests need the MiniLM checkpoint: {e}") from e


# The transformers builders import torch and transformers when called: most test files never need them.
def tiny_hf(model_type: str, seed: int = 0, **overrides):
    """A random ``transformers`` classifier, ``"bert"`` or ``"distilbert"``: 3 layers, hidden 32, vocab ``VOCAB``,
    3 labels unless ``overrides`` (config fields) say otherwise; in eval mode, with biases and LayerNorms
    randomised so none of them is trivially 0/1."""
    import torch
    import transformers

    torch.manual_seed(seed)
    common = {
        "vocab_size": VOCAB,
        "max_position_embeddings": 64,
        "num_labels": 3,
        "attn_implementation": "eager",
    }
    if model_type == "bert":
        sizes = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 48}
        config = transformers.BertConfig(**(common | sizes | {"type_vocab_size": 2} | overrides))
        model = transformers.BertForSequenceClassification(config)
    else:
        sizes = {"dim": 32, "n_layers": 3, "n_heads": 4, "hidden_dim": 48}
        config = transformers.DistilBertConfig(**(common | sizes | overrides))
        model = transformers.DistilBertForSequenceClassification(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def hf_inputs(
    seed: int = 1, token_types: bool = True, lengths=(12, 7, 3), seq: int = 12
) -> dict[str, np.ndarray]:
    """Keyword inputs for both ``transformers`` and ``our_forward``: padded rows of ``lengths`` real tokens, with
    a second segment (token type 1) in the back half of every row when ``token_types``."""
    rng = np.random.default_rng(seed)
    mask = np.arange(seq)[None, :] < np.array(lengths)[:, None]
    ids = np.where(mask, rng.integers(1, VOCAB, size=(len(lengths), seq)), 0).astype(np.int32)
    out = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        out["token_type_ids"] = ((np.arange(seq)[None, :] >= np.array(lengths)[:, None] // 2) & mask).astype(
            np.int32
        )
    return out


def hf_forward(model, inputs: dict[str, np.ndarray]):
    """``transformers``' output, with every hidden state, on ``inputs``."""
    import torch

    with torch.no_grad():
        return model(
            **{k: torch.from_numpy(v.astype(np.int64)) for k, v in inputs.items()}, output_hidden_states=True
        )


def our_forward(
    model: de.AbstractSequenceClassifier, inputs: dict[str, np.ndarray], **kwargs
) -> de.ClassifierOutput:
    """Our model in inference mode, vmapped over ``inputs``, with every hidden state."""
    model = eqx.nn.inference_mode(model)
    args = [jnp.asarray(inputs["input_ids"]), jnp.asarray(inputs["attention_mask"])]
    if "token_type_ids" in inputs:
        args.append(jnp.asarray(inputs["token_type_ids"]))
    return jax.vmap(lambda *a: model(*a, output_hidden_states=True, **kwargs))(*args)


def make_workspace(root: Path, rows: dict[str, int]) -> Path:
    """``root/data`` with the first ``rows[split]`` rows of each real SST-2 split, and ``root/teacher``: a tiny
    random BERT (hidden 32, 2 layers) saved with the real tokenizer's files, for running the scripts."""
    import torch
    import transformers

    tokenizer = minilm_dir()
    data = root / "data"
    data.mkdir()
    for split, count in rows.items():
        lines = (sst2_dir() / f"{split}.tsv").read_text().splitlines()[: count + 1]
        (data / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=128,
    )
    teacher = root / "teacher"
    torch.manual_seed(0)  # the same teacher in every process: the tests' results do not vary between runs
    transformers.BertForSequenceClassification(config).save_pretrained(teacher)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (teacher / name).write_bytes((tokenizer / name).read_bytes())
    return root
