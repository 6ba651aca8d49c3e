"""The experiment configuration: a frozen dataclass loaded from YAML, with ``key=value`` overrides.

The defaults reproduce the original Flax experiment (``test_distil_bert_flax.yaml``); the fields after
``output_dir`` are additions of this codebase. Every value is type-checked and validated on construction, so a
bad value fails at start-up with the key, the value and what is allowed, not hours into a run.
"""

import argparse
import dataclasses
import difflib
import functools
import itertools
import operator
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .distill.augment import AugmentSettings
from .distill.objective import Objective, shorthand_keys, shorthand_terms
from .distill.term import AbstractTerm
from .distill.terms import TERMS
from .errors import ConfigError, UserError, decode_utf8
from .packing import PackingSettings

PLATFORMS = ("cpu", "gpu", "tpu", "tt")
OPTIMIZERS = ("adamw",)
DATASETS = ("glue/sst2",)
HIDDEN_LOSSES = ("mse", "cosine")
TEACHER_CACHES = ("off", "memory", "disk")
STUDENT_SHAPE = (
    "student_num_layers",
    "student_hidden_size",
    "student_num_heads",
    "student_intermediate_size",
)
STUDENT_EMBEDDING_INITS = ("random", "teacher_pca")
_DTYPE_PREFIXES = ("jax.numpy.", "jax.", "jnp.")
_DTYPES = ("auto", "float32", "bfloat16")
# "auto": the experiment picks float32 on a CPU, bfloat16 on an accelerator.
ConfigDtype = typing.Literal["auto", "float32", "bfloat16"]


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Every parameter of a distillation run, type-checked and validated on construction.

    Fields hold canonical values (``dtype`` is ``"auto"``, ``"float32"`` or ``"bfloat16"``, sequences are
    tuples, floats are floats); :func:`config_from_dict` and :func:`load_config` also accept the YAML
    spellings (the original's ``"jax.bfloat16"``, lists, ints for floats). ``length_buckets``, when given,
    must be strictly increasing and end exactly at ``max_length``: every truncated example then fits the last
    bucket, and no bucket is longer than an example can be.
    """

    # Dataset
    dataset_id: str = "glue/sst2"
    tokenizer_name: str = "bert-base-uncased"
    max_length: int = 128
    # Model
    teacher_model: str = "textattack/bert-base-uncased-SST-2"
    student_model: str = "distilbert-base-uncased"
    dtype: ConfigDtype = "auto"
    # Training
    learning_rate: float = 1e-5
    batch_size: int = 32
    num_epochs: int = 3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    optimizer: str = "adamw"
    seed: int = 42
    resume_from_checkpoint: bool = False
    # Loss
    temperature: float = 2.0
    alpha_kl: float = 0.45
    alpha_ce: float = 1.0
    alpha_cos: float = 0.1
    # Logging and checkpoints
    use_wandb: bool = False
    experiment_name: str = "Flax DistilBERT on SST-2"
    project_name: str = "bert-distillation"
    job_name: str = "distillation"
    log_every: int = 100
    log_val_every: int = 100
    do_checkpoint: bool = False
    checkpoint_every: int = 100
    keep_top_k_checkpoints: int = 2
    output_dir: str = "runs/distill_sst2"
    # Additions of this codebase
    overwrite_output_dir: bool = False
    data_dir: str | None = None
    max_steps: int = 0
    num_devices: int = 1
    platform: str | None = None
    student_init_layers: tuple[int, ...] | None = None
    length_buckets: tuple[int, ...] | None = None
    group_by_length: bool = False
    max_grad_norm: float | None = 1.0
    dropout: bool = True
    eval_batch_size: int | None = None
    coordinator_address: str | None = None
    num_processes: int = 1
    process_id: int = 0
    # Layer-matching losses (TinyBERT, MiniLM), a two-stage schedule, and random-init students of any shape
    alpha_hidden: float = 0.0
    hidden_loss: str = "mse"
    alpha_attention_scores: float = 0.0
    alpha_attention_kl: float = 0.0
    alpha_value_relation: float = 0.0
    relation_heads: int | None = None
    layer_map: tuple[tuple[int, int], ...] | None = None
    hidden_projection: bool | None = None
    intermediate_steps: int = 0
    student_num_layers: int | None = None
    student_hidden_size: int | None = None
    student_num_heads: int | None = None
    student_intermediate_size: int | None = None
    # A random-init student's word embeddings: random, or the teacher's table reduced to its width by PCA
    student_embedding_init: str = "random"
    # The teacher's outputs over the train split computed once (teacher_cache.py): off, memory or disk
    teacher_cache: str = "off"
    teacher_cache_dir: str = "runs/teacher_cache"
    teacher_cache_dtype: str = "float32"
    teacher_cache_max_gb: float = 8.0
    # More fine-tuned teachers (distill/ensemble.py): their class probabilities are averaged with teacher_model's
    # in the teacher-output cache; null: teacher_model alone
    ensemble_teachers: tuple[str, ...] | None = None
    # A transfer set (distill/augment): `augment: {copies: 20, replace_prob: 0.4, ...}` trains on the train split
    # and its word-level variants, which the teacher labels; null: the train split alone
    augment: AugmentSettings | None = None
    augment_seed: int = 0
    augment_dir: str = "runs/augment"
    # Several sentences to a row (packing.py): `packing: {rows: 8, length: 72, slots: 16}` trains on fixed
    # steps of rows x length tokens, nearly all real; null: batches of batch_size sentences in length buckets
    packing: PackingSettings | None = None
    # JAX's persistent compilation cache (null: off)
    compilation_cache_dir: str | None = None
    # The loss as a list of terms (`{type: kl, weight: 0.45, temperature: 2.0}`, ...); null: the terms the flat
    # keys above spell (temperature, alpha_*, hidden_loss, relation_heads, layer_map)
    loss: tuple[AbstractTerm, ...] | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            normalised = _coerce(f.name, value)
            # Normalising is config_from_dict's job; a direct caller must already pass the canonical form.
            if type(normalised) is not type(value) or normalised != value:
                raise ConfigError(
                    f"{f.name}={value!r}: pass {normalised!r} to ExperimentConfig, or build the config with "
                    "config_from_dict/load_config, which accept the looser YAML spellings"
                )
        _validate(self)

    @property
    def terms(self) -> tuple[AbstractTerm, ...]:
        """The loss terms: ``loss`` when given, else those the flat keys spell (weight-0 terms left out)."""
        if self.loss is not None:
            return self.loss
        return shorthand_terms({key: getattr(self, key) for key in shorthand_keys()})


def _field_type(key: str) -> tuple[Any, bool]:
    """The type a field holds (``Literal`` read as ``str``) and whether it may be None."""
    return _unwrap(typing.get_type_hints(ExperimentConfig)[key])


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """An annotation without its ``None`` (and whether it had one), ``Literal`` read as ``str``."""
    nullable = isinstance(annotation, types.UnionType) and type(None) in typing.get_args(annotation)
    if nullable:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return (str if typing.get_origin(annotation) is typing.Literal else annotation), nullable


def _coerce(key: str, value: object) -> object:
    """Check ``value`` against the type of field ``key`` and return its canonical form: int -> float for float
    fields, list -> tuple, ``jax.bfloat16`` -> ``bfloat16``, a ``loss`` list -> terms."""
    if key == "loss" and value is not None:
        return _coerce_loss(value)
    if key == "augment" and value is not None:
        return _coerce_dataclass(key, value, AugmentSettings)
    if key == "packing" and value is not None:
        return _coerce_dataclass(key, value, PackingSettings)
    return _coerce_to(key, value, typing.get_type_hints(ExperimentConfig)[key])


def _coerce_loss(value: object) -> tuple[AbstractTerm, ...]:
    """A list of term mappings (``{type: kl, weight: 0.45}``), each checked against its term's own fields."""
    if isinstance(value, tuple) and all(isinstance(term, AbstractTerm) for term in value):
        return value
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(
            f"loss={value!r} is invalid; expected null or a non-empty list of terms, e.g. [{{type: ce, weight: 1.0}}, "
            f"{{type: kl, weight: 0.45, temperature: 2.0}}], with type one of {', '.join(TERMS)}"
        )
    return tuple(_coerce_term(f"loss[{i}]", entry) for i, entry in enumerate(value))


def _coerce_term(where: str, entry: object) -> AbstractTerm:
    if isinstance(entry, AbstractTerm):
        return entry
    if not isinstance(entry, Mapping) or "type" not in entry:
        raise ConfigError(
            f"{where}={entry!r} is invalid; expected a mapping with a type, one of {', '.join(TERMS)}"
            + _flow_hint(entry)
        )
    kind = entry["type"]
    if kind not in TERMS:
        close = difflib.get_close_matches(str(kind), list(TERMS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: unknown term type {kind!r}.{hint} Types: {', '.join(TERMS)}")
    return _construct(
        TERMS[kind],
        {k: v for k, v in entry.items() if k != "type"},
        where,
        f"{where} ({kind})",
        also_valid=("type",),
    )


def _flow_hint(entry: object) -> str:
    """YAML reads ``{type:kl}`` as the key ``"type:kl"``: say so when a key looks like that."""
    if isinstance(entry, Mapping) and any(":" in str(k) and v is None for k, v in entry.items()):
        return " (YAML reads 'a:b' as one key: put a space after each colon)"
    return ""


def _coerce_dataclass(key: str, value: object, cls: type) -> object:
    """A mapping of ``cls``'s fields (each coerced to its type), or an instance of it."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        valid = ", ".join(f.name for f in dataclasses.fields(cls))
        raise ConfigError(f"{key}={value!r} is invalid; expected null or a mapping of {valid}")
    return _construct(cls, value, key, key)


def _construct(cls: type, values: Mapping, path: str, where: str, also_valid: tuple[str, ...] = ()) -> Any:
    """``cls`` from a mapping of its fields, each coerced to its annotation; an error names ``where`` (or the
    value's ``path.key``) and, for an unknown key, the closest valid one."""
    valid = [f.name for f in dataclasses.fields(cls)]
    hints = typing.get_type_hints(cls)
    coerced = {}
    for key, value in values.items():
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown key {key!r} in {where}.{hint} Valid keys: {', '.join([*also_valid, *valid])}"
                + _flow_hint(values)
            )
        coerced[key] = _coerce_to(f"{path}.{key}", value, hints[key])
    try:
        return cls(**coerced)
    except UserError as e:
        raise ConfigError(f"{where}: {e}") from e


def _coerce_to(key: str, value: object, annotation: Any) -> object:
    """:func:`_coerce` for a value of any annotated type (``key`` names it in errors)."""
    options = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else ()
    )
    literals = [a for a in options if typing.get_origin(a) is typing.Literal]
    if literals and isinstance(value, str):
        # A setting that is either a word or a value (layer_map: uniform, or a list of pairs).
        allowed = [word for literal in literals for word in typing.get_args(literal)]
        if value in allowed:
            return value
        raise ConfigError(f"{key}={value!r} is invalid; expected one of {allowed} or a list")
    if literals:
        annotation = functools.reduce(operator.or_, [a for a in options if a not in literals])
    base, nullable = _unwrap(annotation)
    if value is None and nullable:
        return None
    words = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()
    if words and key != "dtype" and value not in words:
        raise ConfigError(f"{key}={value!r} is invalid; expected one of {list(words)}")
    if typing.get_origin(base) is tuple and typing.get_origin(typing.get_args(base)[0]) is tuple:
        # layer_map: a list of [student, teacher] pairs.
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_instance(i, int) for i in v)
            for v in value
        ):
            return tuple(tuple(v) for v in value)
        expected = "a list of [int, int] pairs"
    elif typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        if isinstance(value, (list, tuple)) and all(_is_instance(v, item) for v in value):
            return tuple(value)
        expected = f"a list of {item.__name__}"
    elif base is float and _is_instance(value, int):
        return float(value)
    elif _is_instance(value, base):
        return _normalise_dtype(value) if key == "dtype" else value
    else:
        expected = base.__name__
    raise ConfigError(
        f"{key}={value!r} has type {type(value).__name__}; expected {expected}{' or null' if nullable else ''}"
    )


def _is_instance(value: object, cls: type) -> bool:
    # bool is a subclass of int, but `batch_size: true` is a mistake, not the number 1.
    return isinstance(value, cls) and (cls is bool or not isinstance(value, bool))


def _normalise_dtype(dtype: str) -> ConfigDtype:
    """Accept ``auto``, ``float32``, ``bfloat16`` and the original's ``jax.bfloat16``/``jnp.bfloat16``."""
    if dtype == "auto":
        return "auto"
    name = dtype
    for prefix in _DTYPE_PREFIXES:
        name = name.removeprefix(prefix)
    if name == "float32":
        return "float32"
    if name == "bfloat16":
        return "bfloat16"
    raise ConfigError(
        f"dtype={dtype!r} is not supported; expected one of {_DTYPES}, optionally prefixed by 'jax.' or 'jnp.'"
    )


def _require(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid; expected {allowed}")


def _validate(c: ExperimentConfig) -> None:
    """Range and consistency checks; types were already checked by ``_coerce``."""
    _require(c.dataset_id in DATASETS, "dataset_id", c.dataset_id, f"one of {DATASETS}")
    _require(c.optimizer in OPTIMIZERS, "optimizer", c.optimizer, f"one of {OPTIMIZERS}")
    _require(
        c.platform is None or c.platform in PLATFORMS, "platform", c.platform, f"null or one of {PLATFORMS}"
    )
    for key in ("tokenizer_name", "teacher_model", "student_model", "output_dir"):
        _require(getattr(c, key) != "", key, getattr(c, key), "a non-empty string")
    for key in ("data_dir", "coordinator_address"):
        _require(getattr(c, key) != "", key, getattr(c, key), "null or a non-empty string")
    # Room for [CLS] and [SEP].
    _require(c.max_length >= 2, "max_length", c.max_length, "an int >= 2")
    positive = ("batch_size", "num_epochs", "log_every", "log_val_every", "checkpoint_every")
    for key in (*positive, "keep_top_k_checkpoints", "num_devices", "num_processes"):
        _require(getattr(c, key) >= 1, key, getattr(c, key), "an int >= 1")
    _require(
        c.eval_batch_size is None or c.eval_batch_size >= 1,
        "eval_batch_size",
        c.eval_batch_size,
        "null or an int >= 1",
    )
    _require(c.max_steps >= 0, "max_steps", c.max_steps, "an int >= 0 (0 = run num_epochs)")
    # numpy's Generator rejects negative seeds.
    _require(c.seed >= 0, "seed", c.seed, "an int >= 0")
    _require(c.learning_rate > 0, "learning_rate", c.learning_rate, "a float > 0")
    _require(
        c.max_grad_norm is None or c.max_grad_norm > 0,
        "max_grad_norm",
        c.max_grad_norm,
        "null (no clipping) or a float > 0",
    )
    _require(c.weight_decay >= 0, "weight_decay", c.weight_decay, "a float >= 0")
    _require(0 <= c.warmup_ratio < 1, "warmup_ratio", c.warmup_ratio, "a float with 0 <= warmup_ratio < 1")
    _require(c.temperature > 0, "temperature", c.temperature, "a float > 0")
    weight_keys = [key for term in TERMS.values() for key in list(term.shorthand)[:1]]
    for key in weight_keys:
        _require(getattr(c, key) >= 0, key, getattr(c, key), "a float >= 0")
    _require(c.hidden_loss in HIDDEN_LOSSES, "hidden_loss", c.hidden_loss, f"one of {HIDDEN_LOSSES}")
    _require(
        c.relation_heads is None or c.relation_heads >= 1,
        "relation_heads",
        c.relation_heads,
        "null (the teacher's head count) or an int >= 1",
    )
    if c.layer_map is not None:
        _require(
            len(c.layer_map) > 0 and all(i >= 0 for pair in c.layer_map for i in pair),
            "layer_map",
            [list(p) for p in c.layer_map],
            "null (the uniform map) or a non-empty list of [student, teacher] hidden-state indices >= 0",
        )
    if c.loss is not None:
        defaults = {f.name: f.default for f in dataclasses.fields(ExperimentConfig)}
        flat = {key: getattr(c, key) for key in shorthand_keys() if getattr(c, key) != defaults[key]}
        _require(
            not flat,
            "loss",
            "[...]",
            f"the only spelling of the loss: {flat} would be ignored; put them in "
            "the loss list's terms, or drop the loss list",
        )
    else:
        weights = tuple(getattr(c, key) for key in weight_keys)
        _require(any(w > 0 for w in weights), "/".join(weight_keys), weights, "at least one weight > 0")
        readers = [
            t
            for t in TERMS.values()
            if "layer_map" in t.shorthand and getattr(c, next(iter(t.shorthand))) > 0
        ]
        _require(
            c.layer_map is None or bool(readers),
            "layer_map",
            c.layer_map and [list(p) for p in c.layer_map],
            "null: no term reads it ("
            + ", ".join(f"{next(iter(t.shorthand))}=0" for t in TERMS.values() if "layer_map" in t.shorthand)
            + ")",
        )
    terms = Objective(c.terms).terms
    _require(
        c.intermediate_steps >= 0, "intermediate_steps", c.intermediate_steps, "an int >= 0 (0 = one stage)"
    )
    if c.intermediate_steps > 0:
        first = [t.name for t in terms if not t.prediction_layer]
        second = [t.name for t in terms if t.prediction_layer]
        prediction = [name for name, term in TERMS.items() if term.prediction_layer]
        _require(
            bool(first),
            "intermediate_steps",
            c.intermediate_steps,
            f"0, or a term other than {prediction} for the first stage (the loss has {second})",
        )
        _require(
            bool(second),
            "intermediate_steps",
            c.intermediate_steps,
            f"0, or one of the terms {prediction} for the second stage (the loss has {first})",
        )
        _require(
            c.max_steps == 0 or c.intermediate_steps < c.max_steps,
            "intermediate_steps",
            c.intermediate_steps,
            f"fewer than max_steps={c.max_steps}",
        )
    _require(
        c.teacher_cache in TEACHER_CACHES,
        "teacher_cache",
        c.teacher_cache,
        f"one of {', '.join(TEACHER_CACHES)}",
    )
    _require(
        c.teacher_cache_dtype in ("float32", "bfloat16"),
        "teacher_cache_dtype",
        c.teacher_cache_dtype,
        "float32 or bfloat16",
    )
    _require(
        c.teacher_cache == "off" or c.num_processes == 1,
        "teacher_cache",
        c.teacher_cache,
        f"off with num_processes={c.num_processes}: the cache is built and read by one process",
    )
    _require(c.teacher_cache_max_gb > 0, "teacher_cache_max_gb", c.teacher_cache_max_gb, "a size in GiB > 0")
    if c.ensemble_teachers is not None:
        _require(
            len(c.ensemble_teachers) > 0 and c.teacher_cache != "off",
            "ensemble_teachers",
            list(c.ensemble_teachers),
            "null, or a non-empty list of teacher folders with teacher_cache memory or disk (the teachers' "
            "probabilities are averaged in the cache)",
        )
    if c.augment is not None:
        _require(
            any(term.on_variants for term in terms),
            "augment",
            config_to_dict(c)["augment"],
            f"null, or a loss with a term computed on the variants (of the loss {[t.name for t in terms]}, "
            f"only {[n for n, t in TERMS.items() if t.on_variants]} would be)",
        )
    _require(c.augment_seed >= 0, "augment_seed", c.augment_seed, "an int >= 0")
    for key in STUDENT_SHAPE:
        _require(getattr(c, key) is None or getattr(c, key) >= 1, key, getattr(c, key), "null or an int >= 1")
    _require(
        c.student_embedding_init in STUDENT_EMBEDDING_INITS,
        "student_embedding_init",
        c.student_embedding_init,
        f"one of {', '.join(STUDENT_EMBEDDING_INITS)}",
    )
    _require(
        c.student_embedding_init == "random" or any(getattr(c, key) is not None for key in STUDENT_SHAPE),
        "student_embedding_init",
        c.student_embedding_init,
        f"random unless the student is built at random (a {'/'.join(STUDENT_SHAPE)} key set): the other "
        "students start from the teacher's or their own embeddings",
    )
    if c.student_init_layers is not None:
        shape = {key: getattr(c, key) for key in STUDENT_SHAPE if getattr(c, key) is not None}
        _require(
            not shape,
            "student_init_layers",
            c.student_init_layers,
            f"null when the student is built at random from {shape} (one way to make the student)",
        )
    _require(
        0 <= c.process_id < c.num_processes,
        "process_id",
        c.process_id,
        f"an int with 0 <= process_id < num_processes={c.num_processes}",
    )
    # num_devices counts devices over all processes, and each process contributes the same number.
    _require(
        c.num_devices % c.num_processes == 0,
        "num_devices",
        c.num_devices,
        f"a multiple of num_processes={c.num_processes}",
    )
    # Each process takes an equal slice of the global batch, and each device an equal slice of that.
    for key in ("batch_size", "eval_batch_size"):
        size = getattr(c, key)
        for divisor in ("num_devices", "num_processes"):
            _require(
                size is None or size % getattr(c, divisor) == 0,
                key,
                size,
                f"a multiple of {divisor}={getattr(c, divisor)}",
            )
    if c.packing is not None:
        for divisor in ("num_devices", "num_processes"):
            _require(
                c.packing.rows % getattr(c, divisor) == 0,
                "packing",
                config_to_dict(c)["packing"],
                f"rows a multiple of {divisor}={getattr(c, divisor)}",
            )
    if c.student_init_layers is not None:
        layers = c.student_init_layers
        _require(
            len(layers) > 0 and layers[0] >= 0 and _increasing(layers),
            "student_init_layers",
            layers,
            "null or a non-empty, strictly increasing list of teacher layer indices >= 0",
        )
    if c.length_buckets is not None:
        buckets = c.length_buckets
        _require(
            len(buckets) > 0 and buckets[0] >= 1 and _increasing(buckets) and buckets[-1] == c.max_length,
            "length_buckets",
            buckets,
            f"null or a strictly increasing list of lengths >= 1 ending at max_length={c.max_length}",
        )


def _increasing(values: tuple[int, ...]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but reading ``1e-5`` as a float (YAML 1.2) rather than the string ``"1e-5"``, and
    refusing a key given twice, which PyYAML would silently resolve to the last value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in lines:
                raise ConfigError(f"key {key!r} appears twice, on lines {lines[key]} and {line}; keep one")
            if isinstance(key, typing.Hashable):
                lines[key] = line
        return super().construct_mapping(node, deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str) -> object:
    return yaml.load(text, Loader=_YamlLoader)


def check_keys(
    keys: Iterable[object],
    valid: Sequence[str],
    where: str,
    error: type[UserError] = ConfigError,
    what: str = "key",
) -> None:
    """Refuse the first of ``keys`` not in ``valid`` with ``error``, naming the closest valid key and all."""
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise error(f"unknown {what} {key!r} in {where}.{hint} Valid keys: {', '.join(valid)}")


def _check_keys(keys: Sequence[str], where: str) -> None:
    check_keys(keys, [f.name for f in dataclasses.fields(ExperimentConfig)], where, what="config key")


def parse_override(override: str) -> tuple[str, object]:
    """Split ``"key=value"`` and parse the value as YAML (``[0, 2, 4]``, ``null``, ``1e-5``, ``true``).

    For string fields, a value that YAML would read as a number or bool (``job_name=123``) stays the raw string,
    so shell users need not quote it.
    """
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"malformed override {override!r}; expected key=value, e.g. batch_size=16")
    _check_keys([key], f"override {override!r}")
    try:
        value = _parse_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({e})") from e
    if _field_type(key)[0] is str and isinstance(value, (bool, int, float)):
        value = text.strip()
    return key, value


def config_from_dict(values: Mapping[str, object], where: str = "config") -> ExperimentConfig:
    """Build a config from YAML-style values: lists, ints for floats and ``jax.bfloat16`` are accepted.

    Unknown keys are an error that names ``where`` the values came from and lists the valid keys.
    """
    _check_keys([str(k) for k in values], where)
    return ExperimentConfig(**{str(k): _coerce(str(k), v) for k, v in values.items()})


def read_yaml_file(path: str | Path, what: str) -> object:
    """The YAML document in ``path``, read as config files are (``1e-5`` a float, a key given twice refused,
    a byte that is not UTF-8 named by its line); any problem is a ``ConfigError`` naming ``what`` and the
    file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {e}") from e
    text = decode_utf8(data, str(path), ConfigError)
    try:
        return _parse_yaml(text)
    except ConfigError as e:  # a key given twice
        raise ConfigError(f"{what} {str(path)!r}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {e}") from e


# The key of config.json that records the package versions, the commit and the machine (not a config key).
PROVENANCE_KEY = "provenance"


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a flat YAML mapping of config keys (or start from defaults when ``path`` is None), then apply
    ``key=value`` overrides in order.

    Raises ``ConfigError`` for an unreadable or non-UTF-8 file, a non-mapping document, a key given twice, an
    unknown key (listing the valid ones), a malformed override, or an invalid value.
    """
    values: dict[str, object] = {}
    if path is not None:
        document = read_yaml_file(path, "config file")
        if document is not None and not isinstance(document, Mapping):
            raise ConfigError(f"config file {str(path)!r} must be a mapping of key: value, got {document!r}")
        # A run's config.json also records how the run was made; read back as a config, that part is ignored.
        document = {k: v for k, v in (document or {}).items() if k != PROVENANCE_KEY}
        _check_keys([str(k) for k in document], f"config file {str(path)!r}")
        values.update(document)
    for override in overrides:
        key, value = parse_override(override)
        values[key] = value
    return config_from_dict(values)


def config_to_dict(config: ExperimentConfig) -> dict[str, object]:
    """The config as plain JSON/YAML types (tuples become lists, terms mappings with their ``type``);
    ``load_config`` reads it back unchanged."""

    def plain(v: object) -> object:
        if isinstance(v, AbstractTerm):
            return {"type": v.name, **{f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}}
        if isinstance(v, (AugmentSettings, PackingSettings)):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        return [plain(x) for x in v] if isinstance(v, tuple) else v

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` and ``--set key=value [key=value ...]`` (repeatable) to a script's parser."""
    parser.add_argument("--config", metavar="FILE", default=None, help="YAML file of config keys")
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="extend",
        nargs="+",
        default=[],
        help="override config keys; each value is parsed as YAML (repeatable: --set a=1 b=2 --set c=3)",
    )


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The config named by the arguments that :func:`add_config_args` added."""
    return load_config(args.config, args.overrides)
