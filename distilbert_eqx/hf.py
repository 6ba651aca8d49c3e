"""Hugging Face checkpoint I/O: ``config.json`` <-> config dataclasses, safetensors <-> modules.

The heart of this file is an explicit, exhaustive map from every ``transformers`` tensor name to the module path
that holds it (``weight_map``). Loading fills a shape-only template through that map and reports every missing,
unexpected or mis-shaped tensor in one error; saving runs the same map backwards. ``eqx.nn.Linear.weight`` is
``(out, in)`` like ``torch.nn.Linear``, so nothing is transposed.
"""

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from . import hub
from ._types import ComputeDtype
from .checkpoint import atomic_replace_dir, temp_sibling
from .errors import UserError
from .models import (
    AbstractSequenceClassifier,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

logger = logging.getLogger(__name__)

Getter = Callable[[Any], Array]

# Tensors that belong to other heads (pre-training, masked LM) or are non-persistent buffers: a sequence classifier
# skips them, as transformers does when it loads e.g. distilbert-base-uncased for classification.
IGNORED_SUFFIXES = (".position_ids",)
IGNORED_PREFIXES = ("cls.", "vocab_transform.", "vocab_layer_norm.", "vocab_projector.", "qa_outputs.")

# Tensors a checkpoint may lack (a plain BertModel, a masked-LM DistilBERT); they are freshly initialised.
HEAD_PREFIXES = {"bert": ("bert.pooler.", "classifier."), "distilbert": ("pre_classifier.", "classifier.")}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


class CheckpointError(UserError):
    """A checkpoint folder or its tensors do not match what the model expects."""


class HubUnavailable(CheckpointError):
    """A hub id was given, but the hub cannot be reached and the id is not in the local cache."""


@dataclasses.dataclass(frozen=True)
class Architecture:
    """How one model family names its tensors in ``transformers``, and which of our classes holds them."""

    model_type: str
    hf_class: str
    prefix: str
    config_cls: type
    model_cls: type
    has_token_types: bool
    stack: str
    layer_names: tuple[str, ...]
    # The head's pooling Linear: its transformers name and where our module keeps it.
    pooler_name: str
    pooler: Callable[[Any], Any]


BERT = Architecture(
    "bert",
    "BertForSequenceClassification",
    "bert.",
    BertConfig,
    BertForSequenceClassification,
    True,
    "encoder.layer",
    (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "attention.output.LayerNorm",
        "intermediate.dense",
        "output.dense",
        "output.LayerNorm",
    ),
    "bert.pooler.dense",
    lambda m: m.pooler,
)
DISTILBERT = Architecture(
    "distilbert",
    "DistilBertForSequenceClassification",
    "distilbert.",
    DistilBertConfig,
    DistilBertForSequenceClassification,
    False,
    "transformer.layer",
    (
        "attention.q_lin",
        "attention.k_lin",
        "attention.v_lin",
        "attention.out_lin",
        "sa_layer_norm",
        "ffn.lin1",
        "ffn.lin2",
        "output_layer_norm",
    ),
    "pre_classifier",
    lambda m: m.pre_classifier,
)
ARCHITECTURES = {a.model_type: a for a in (BERT, DISTILBERT)}

# Our module path for each entry of ``Architecture.layer_names``, in the same order.
_LAYER_PATHS: tuple[Callable[[Any], Any], ...] = (
    lambda layer: layer.attention.query_proj,
    lambda layer: layer.attention.key_proj,
    lambda layer: layer.attention.value_proj,
    lambda layer: layer.attention.output_proj,
    lambda layer: layer.attention_norm,
    lambda layer: layer.feed_forward.up,
    lambda layer: layer.feed_forward.down,
    lambda layer: layer.output_norm,
)


def _affine(name: str, get: Callable[[Any], Any]) -> dict[str, Getter]:
    """A Linear or LayerNorm: ``name.weight`` and ``name.bias``."""
    return {f"{name}.weight": lambda m: get(m).weight, f"{name}.bias": lambda m: get(m).bias}


def weight_map(arch: Architecture, num_layers: int) -> dict[str, Getter]:
    """Every ``transformers`` tensor name of ``arch`` mapped to a function returning our array for it."""
    p = arch.prefix
    names: dict[str, Getter] = {
        f"{p}embeddings.word_embeddings.weight": lambda m: m.encoder.embeddings.word.weight,
        f"{p}embeddings.position_embeddings.weight": lambda m: m.encoder.embeddings.position.weight,
        **_affine(f"{p}embeddings.LayerNorm", lambda m: m.encoder.embeddings.norm),
    }
    if arch.has_token_types:
        names[f"{p}embeddings.token_type_embeddings.weight"] = lambda m: (
            m.encoder.embeddings.token_type.weight
        )
    for i in range(num_layers):
        for hf_name, path in zip(arch.layer_names, _LAYER_PATHS):
            get = lambda m, i=i, path=path: path(m.encoder.layers[i])
            names.update(_affine(f"{p}{arch.stack}.{i}.{hf_name}", get))
    names.update(_affine(arch.pooler_name, arch.pooler))
    names.update(_affine("classifier", lambda m: m.classifier))
    return names


def config_from_dict(raw: dict[str, Any], *, num_labels: int | None = None) -> BertConfig | DistilBertConfig:
    """Build our config dataclass from a ``config.json`` dict; unknown ``model_type`` is an error."""
    model_type = raw.get("model_type")
    if model_type not in ARCHITECTURES:
        raise CheckpointError(
            f"unsupported model_type {model_type!r} in config.json; expected one of {sorted(ARCHITECTURES)}"
        )
    arch = ARCHITECTURES[model_type]
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(
            f"unsupported position_embedding_type {raw['position_embedding_type']!r}; only 'absolute' is implemented"
        )
    fields = {f.name for f in dataclasses.fields(arch.config_cls)} - {"num_labels"}
    values = {k: raw[k] for k in fields if k in raw and (raw[k] is not None or k == "classifier_dropout")}
    if num_labels is None:
        num_labels = len(raw["id2label"]) if "id2label" in raw else int(raw.get("num_labels", 2))
    return arch.config_cls(**values, num_labels=num_labels)


def config_to_dict(
    config: BertConfig | DistilBertConfig, label_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """The ``config.json`` dict that ``transformers`` reads back into the same architecture.

    ``label_names`` (one per class, e.g. SST-2's ``("negative", "positive")``) become ``id2label``, which a
    ``transformers`` pipeline prints; ``None`` writes ``transformers``' defaults, ``LABEL_0``, ``LABEL_1``...
    """
    arch = ARCHITECTURES[config.model_type]
    raw = {k: v for k, v in dataclasses.asdict(config).items() if k != "num_labels"}
    if label_names is None:
        label_names = [f"LABEL_{i}" for i in range(config.num_labels)]
    if len(label_names) != config.num_labels or len(set(label_names)) != len(label_names):
        raise ValueError(f"label_names={list(label_names)}: expected {config.num_labels} distinct names")
    labels = {str(i): name for i, name in enumerate(label_names)}
    raw.update(
        model_type=arch.model_type,
        architectures=[arch.hf_class],
        id2label=labels,
        label2id={v: int(k) for k, v in labels.items()},
        torch_dtype="float32",
    )
    if arch is BERT:
        raw["position_embedding_type"] = "absolute"
    return raw


def _resolve(name_or_path: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a hub id, downloaded (config, weights, tokenizer) via ``huggingface_hub``."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    text = str(name_or_path)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise CheckpointError(
            f"checkpoint path {text!r} is not a folder (expected a folder with config.json)"
        )
    from huggingface_hub import list_repo_files, snapshot_download

    if (why := hub.unreachable()) is not None:
        try:
            return Path(snapshot_download(text, local_files_only=True))
        except Exception as e:  # the hub client's "not in the cache" errors have no common base
            raise HubUnavailable(
                f"{text!r} is neither a local folder nor in the hub cache, and the hub cannot be reached "
                f"({why})"
            ) from e
    files = list_repo_files(text)
    patterns = ["*.json", "*.txt"]
    patterns += ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["pytorch_model.bin"]
    return Path(snapshot_download(text, allow_patterns=patterns))


def _read_tensors(folder: Path) -> dict[str, Array]:
    """All tensors of a checkpoint folder: ``model.safetensors``, sharded safetensors, or ``pytorch_model.bin``."""
    from safetensors import SafetensorError, safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    elif (folder / "pytorch_model.bin").is_file():
        return _read_torch_bin(folder / "pytorch_model.bin")
    else:
        raise CheckpointError(f"no model.safetensors (or sharded index, or pytorch_model.bin) in {folder}")
    tensors: dict[str, Array] = {}
    for file in files:
        try:
            # framework="flax" reads bfloat16 tensors too, which numpy cannot represent.
            with safe_open(folder / file, framework="flax") as f:
                for name in f.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                    tensors[name] = f.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(
                f"{folder / file} is not a readable safetensors file ({e}); it may be truncated by an "
                "interrupted copy or download: copy or save it again"
            ) from e
    return tensors


def _read_torch_bin(path: Path) -> dict[str, Array]:
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f"{path.parent} holds only pytorch_model.bin. Install torch to convert it on load, or convert it once "
            'with: python -c "from transformers import AutoModel as A; '
            f"A.from_pretrained('{path.parent}').save_pretrained('{path.parent}-safetensors')\""
        ) from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: jnp.asarray(v.float().numpy()) for k, v in state.items()}


def _canonical_names(tensors: dict[str, Array], arch: Architecture) -> dict[str, Array]:
    """Rename old-style names (``LayerNorm.gamma/beta``) and add the base-model prefix to a bare base checkpoint."""
    renamed = {}
    for name, value in tensors.items():
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        renamed[name] = value
    if not any(n.startswith(arch.prefix) for n in renamed):
        renamed = {arch.prefix + n: v for n, v in renamed.items()}
    return renamed


def load_config(name_or_path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """Resolve a folder or hub id and read its ``config.json``."""
    folder = _resolve(name_or_path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"no config.json in {folder}")
    return folder, json.loads(config_file.read_text())


def from_pretrained(
    name_or_path: str | os.PathLike,
    *,
    num_labels: int | None = None,
    dtype: ComputeDtype = "float32",
    key: jax.Array | None = None,
    refuse_fresh_head: str | None = None,
) -> AbstractSequenceClassifier:
    """Load a BERT or DistilBERT sequence classifier from a Hugging Face folder or hub id.

    Arguments:
        name_or_path: a folder with ``config.json`` and ``model.safetensors`` (or a sharded index, or
            ``pytorch_model.bin`` when torch is installed), or a hub id.
        num_labels: classes of the head; defaults to the checkpoint's.
        dtype: compute dtype, ``"float32"`` or ``"bfloat16"``; parameters always load as float32.
        key: PRNG key for a head the checkpoint lacks (a plain ``BertModel``), which is freshly initialised.
        refuse_fresh_head: why a checkpoint without its head is an error here (a teacher, a model to score: a
            random head makes their outputs meaningless). ``None``: the head is initialised with a warning, as
            ``transformers`` does, where training will fit it (a student, a model to fine-tune).

    Returns:
        ``BertForSequenceClassification`` or ``DistilBertForSequenceClassification`` in training mode (dropout on);
        wrap in ``eqx.nn.inference_mode`` to evaluate.
    """
    folder, raw = load_config(name_or_path)
    config = config_from_dict(raw, num_labels=num_labels)
    arch = ARCHITECTURES[config.model_type]
    tensors = _canonical_names(_read_tensors(folder), arch)
    expected = weight_map(arch, config.num_layers)
    key = jax.random.key(0) if key is None else key
    template = eqx.filter_eval_shape(arch.model_cls, config, key=key, compute_dtype=dtype)

    problems, fresh = [], []
    head_prefixes = HEAD_PREFIXES[arch.model_type]
    for name, get in expected.items():
        want = get(template)
        if name not in tensors:
            if name.startswith(head_prefixes):
                fresh.append(name)
            else:
                problems.append(f"missing tensor {name} (expected shape {tuple(want.shape)})")
        elif tensors[name].shape != want.shape:
            problems.append(
                f"tensor {name} has shape {tuple(tensors[name].shape)}, expected {tuple(want.shape)}"
            )
        elif not jnp.issubdtype(tensors[name].dtype, jnp.floating):
            problems.append(f"tensor {name} has dtype {tensors[name].dtype}, expected a floating dtype")
    ignored = [
        n
        for n in tensors
        if n not in expected and (n.endswith(IGNORED_SUFFIXES) or n.startswith(IGNORED_PREFIXES))
    ]
    problems += [f"unexpected tensor {n}" for n in tensors if n not in expected and n not in ignored]
    if problems:
        raise CheckpointError(f"cannot load {folder} as {arch.hf_class}:\n  " + "\n  ".join(problems))
    if fresh and refuse_fresh_head is not None:
        raise CheckpointError(
            f"{folder} has no classification head ({', '.join(fresh)} are missing), and a fresh random head "
            f"would make {refuse_fresh_head}"
        )

    initialised = arch.model_cls(config, key=key, compute_dtype=dtype) if fresh else None
    names = list(expected)
    values = [expected[n](initialised) if n in fresh else tensors[n].astype(jnp.float32) for n in names]
    model = eqx.tree_at(lambda m: [expected[n](m) for n in names], template, values)
    if fresh:
        logger.warning(
            "%s: these tensors are not in the checkpoint and were freshly initialised: %s", folder, fresh
        )
    if ignored:
        logger.info("%s: ignored tensors of other heads or buffers: %s", folder, ignored)
    return model


def save_pretrained(
    model: AbstractSequenceClassifier,
    path: str | os.PathLike,
    tokenizer: Any = None,
    *,
    label_names: Sequence[str] | None = None,
    model_card: str | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ tokenizer files) that ``transformers`` loads as is.

    The folder is built beside ``path`` and renamed into place, so readers (and a crash) see the old folder or
    the new one whole, never weights from one save with the config of another.

    Arguments:
        model: our BERT or DistilBERT classifier.
        path: output folder; an existing one is replaced as a whole.
        tokenizer: a ``transformers`` tokenizer (saved with its ``save_pretrained``) or a folder whose
            tokenizer files are copied.
        label_names: a name per class for ``config.json``'s ``id2label`` (see ``config_to_dict``).
        model_card: Markdown written as the folder's ``README.md``, the model card the hub shows.
    """
    from safetensors.numpy import save_file

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = weight_map(ARCHITECTURES[model.config.model_type], model.num_layers)
    tensors = {name: np.asarray(get(model), dtype=np.float32) for name, get in names.items()}
    tmp = temp_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        (tmp / "config.json").write_text(json.dumps(config_to_dict(model.config, label_names), indent=2))
        if model_card is not None:
            (tmp / "README.md").write_text(model_card)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(str(tmp))
        elif tokenizer is not None:
            for name in TOKENIZER_FILES:
                if (Path(tokenizer) / name).is_file():
                    shutil.copyfile(Path(tokenizer) / name, tmp / name)
        atomic_replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
