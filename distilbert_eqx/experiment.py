"""What the scripts in ``experiments/`` run: config -> data + models -> fit loop -> outputs.

Everything that can be wrong with the inputs (data, checkpoints, vocabularies) is checked here before anything is
written to ``output_dir``.
"""

import functools
import json
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from .config import ExperimentConfig, resolved_length_buckets
from .data import DataError, load_text_split, load_tokenizer, tokenize_split
from .hf import from_pretrained, load_config
from .host_memory import retain_freed_memory
from .init import student_from_teacher
from .loop import evaluate, fit, single_device_steps
from .models import SequenceClassifier


def _check_vocabularies(tokenizer_vocab: int, **models: SequenceClassifier) -> None:
    sizes = {name: m.config.vocab_size for name, m in models.items()}
    if len(set(sizes.values())) > 1:
        raise DataError(f"teacher and student vocabularies differ: {sizes}; both must use the same tokenizer")
    for name, size in sizes.items():
        if tokenizer_vocab > size:
            raise DataError(f"the tokenizer has {tokenizer_vocab} tokens but the {name} embeds only {size}")


def _make_steps(config: ExperimentConfig):
    """Single-device steps, or the ``jax.shard_map`` steps over a mesh when several devices or hosts are used."""
    if config.num_devices == 1 and config.num_processes == 1:
        return single_device_steps
    from . import parallel

    parallel.initialize(config)
    mesh = parallel.make_mesh(config.num_devices, config.platform)
    return functools.partial(parallel.sharded_steps, mesh)


def _load_splits(config: ExperimentConfig, names: tuple[str, ...]):
    tokenizer = load_tokenizer(config.tokenizer_name, config.max_length)
    splits = {
        name: tokenize_split(load_text_split(name, data_dir=config.data_dir, dataset_id=config.dataset_id), tokenizer)
        for name in names
    }
    return tokenizer, splits


def _tokenizer_to_save(config: ExperimentConfig) -> Any:
    if Path(config.tokenizer_name).is_dir():
        return config.tokenizer_name
    import transformers

    return transformers.AutoTokenizer.from_pretrained(config.tokenizer_name)


def _training_mode(model: SequenceClassifier, config: ExperimentConfig) -> SequenceClassifier:
    """``dropout: false`` trains with every dropout off (deterministic runs, exact comparisons)."""
    return model if config.dropout else eqx.nn.inference_mode(model)


def distill(config: ExperimentConfig) -> dict[str, Any]:
    """Distil ``teacher_model`` into a student (loaded from ``student_model``, or built from the teacher's
    ``student_init_layers``) on SST-2, as ``config`` says."""
    # Before JAX starts its threads, so that their malloc arenas get the setting too.
    retain_freed_memory()
    # Then: with several processes, jax.distributed must start before anything touches a JAX device.
    make_steps = _make_steps(config)
    tokenizer, splits = _load_splits(config, ("train", "dev"))
    key = jax.random.key(config.seed)
    init_key, train_key = jax.random.split(key)
    teacher = from_pretrained(config.teacher_model, dtype=config.dtype)
    if config.student_init_layers is not None:
        student = student_from_teacher(
            teacher, config.student_init_layers, key=init_key, compute_dtype=config.dtype
        )
    else:
        student = from_pretrained(config.student_model, num_labels=teacher.config.num_labels, dtype=config.dtype, key=init_key)
    _check_vocabularies(tokenizer.backend.get_vocab_size(), teacher=teacher, student=student)
    return fit(
        config,
        _training_mode(student, config),
        eqx.nn.inference_mode(teacher),
        splits,
        tokenizer=_tokenizer_to_save(config),
        final_name="student",
        key=train_key,
        make_steps=make_steps,
    )


def finetune(config: ExperimentConfig) -> dict[str, Any]:
    """Fine-tune ``teacher_model`` on SST-2 with the hard-label loss alone (how a teacher is made)."""
    if config.alpha_kl != 0 or config.alpha_cos != 0 or config.alpha_ce <= 0:
        raise ValueError(
            f"fine-tuning uses the label loss alone: set alpha_ce > 0 and alpha_kl = alpha_cos = 0 "
            f"(got alpha_ce={config.alpha_ce}, alpha_kl={config.alpha_kl}, alpha_cos={config.alpha_cos})"
        )
    retain_freed_memory()
    make_steps = _make_steps(config)
    tokenizer, splits = _load_splits(config, ("train", "dev"))
    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    model = from_pretrained(config.teacher_model, num_labels=2, dtype=config.dtype, key=init_key)
    _check_vocabularies(tokenizer.backend.get_vocab_size(), model=model)
    return fit(
        config,
        _training_mode(model, config),
        None,
        splits,
        tokenizer=_tokenizer_to_save(config),
        final_name="model",
        key=train_key,
        make_steps=make_steps,
    )


def evaluate_checkpoint(
    model_path: str,
    *,
    data_dir: str | None,
    split: str,
    dataset_id: str = "glue/sst2",
    max_length: int = 128,
    batch_size: int = 64,
    predictions_out: str | None = None,
) -> dict[str, Any]:
    """Accuracy of any HF-format sequence classifier (ours or ``transformers``') on an SST-2 split.

    The tokenizer is the one saved with the model. Writes per-example predictions (JSON lines, dataset order, with
    ``logits``, ``prediction`` and ``label``) to ``predictions_out`` when given.
    """
    folder, _ = load_config(model_path)
    tokenizer = load_tokenizer(str(folder), max_length)
    data = tokenize_split(load_text_split(split, data_dir=data_dir, dataset_id=dataset_id), tokenizer)
    model = from_pretrained(folder, dtype="float32")
    _check_vocabularies(tokenizer.backend.get_vocab_size(), model=model)
    config = ExperimentConfig(max_length=max_length, batch_size=batch_size)
    accuracy, n, logits = evaluate(model, data, batch_size, resolved_length_buckets(config))
    if predictions_out is not None:
        with open(predictions_out, "w") as f:
            for row, label in zip(logits, data.labels):
                record = {"logits": row.tolist(), "prediction": int(np.argmax(row)), "label": int(label)}
                f.write(json.dumps(record) + "\n")
    return {"accuracy": accuracy, "n": n}
