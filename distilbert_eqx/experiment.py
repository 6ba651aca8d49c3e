"""The one module that reads the experiment config: it validates what the config implies, builds every part
(tokenizer and splits, batches, models, optimizer, losses, steps, checkpoint manager, metrics log) and hands
them to the fit loop.

Everything that can be wrong with the inputs (data, checkpoints, vocabularies, a busy output folder) is checked
before anything is written to ``output_dir``.
"""

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from . import host_memory, hub
from ._types import ComputeDtype
from .batch import Batch
from .checkpoint import CheckpointManager, atomic_write_text
from .compilations import Compilations
from .config import PROVENANCE_KEY, STUDENT_SHAPE, ConfigError, ExperimentConfig, config_to_dict
from .data import (
    LABEL_NAMES,
    DataError,
    SentenceTokenizer,
    TokenizedSplit,
    default_length_buckets,
    eval_batches,
    indexed_epoch_batches,
    load_text_split,
    load_tokenizer,
    num_batches,
    tokenize_split,
    with_transfer_set,
)
from .distill.augment import augmented_pool
from .distill.ensemble import average_soft_targets, logit_temperatures
from .distill.objective import Objective
from .distill.teacher_cache import TeacherCache, fields, teacher_cache
from .hf import CheckpointError, HubUnavailable, from_pretrained, load_config, save_pretrained
from .init import random_student, student_from_teacher
from .loop import FitPlan, evaluate, fit
from .metrics_log import MetricsLog, say
from .models import AbstractSequenceClassifier
from .models.layers import linear
from .packing import PackingSettings, indexed_packed_batches, packed_eval_batches, steps_per_epoch
from .provenance import git_commit, machine, package_versions
from .run_lock import LOCK_FILE, OutputDirLock, check_free
from .train import Steps, init_state, make_optimizer, single_device_steps


def length_buckets(config: ExperimentConfig) -> tuple[int, ...]:
    """``length_buckets`` when set, else ``data.default_length_buckets(max_length)``."""
    return config.length_buckets or default_length_buckets(config.max_length)


def packing_shape(config: ExperimentConfig, *splits: TokenizedSplit) -> PackingSettings | None:
    """A packed run's step shape with its row length resolved, or ``None`` when the run does not pack. An unset
    length is the splits' longest example rounded up to a multiple of 8: rows longer than that only lengthen
    every token's attention (docs/performance.md)."""
    if config.packing is None:
        return None
    if config.packing.length is None:
        longest = max(int(split.lengths.max()) for split in splits)
        return dataclasses.replace(config.packing, length=min(-(-longest // 8) * 8, config.max_length))
    for split in splits:
        example = int(np.argmax(split.lengths))
        if split.lengths[example] > config.packing.length:
            raise ConfigError(
                f"packing length={config.packing.length} is shorter than {split.name} example {example} "
                f"({int(split.lengths[example])} tokens); set it to at least that, or leave it null for the "
                "longest example"
            )
    return config.packing


def eval_batch_size(config: ExperimentConfig) -> int:
    """``eval_batch_size``, falling back to ``batch_size`` when unset."""
    return config.batch_size if config.eval_batch_size is None else config.eval_batch_size


def load_splits(
    config: ExperimentConfig, names: tuple[str, ...], tokenizer: SentenceTokenizer
) -> dict[str, TokenizedSplit]:
    """The named SST-2 splits of ``data_dir`` (or the hub), tokenised with ``tokenizer``."""
    return {
        name: tokenize_split(
            load_text_split(name, data_dir=config.data_dir, dataset_id=config.dataset_id), tokenizer
        )
        for name in names
    }


def _check_vocabularies(tokenizer_vocab: int, **models: AbstractSequenceClassifier) -> None:
    sizes = {name: m.config.vocab_size for name, m in models.items()}
    if len(set(sizes.values())) > 1:
        raise DataError(f"teacher and student vocabularies differ: {sizes}; both must use the same tokenizer")
    for name, size in sizes.items():
        if tokenizer_vocab > size:
            raise DataError(f"the tokenizer has {tokenizer_vocab} tokens but the {name} embeds only {size}")


def saved_vocabulary(name_or_path: str) -> tuple[Path, dict[str, int]] | None:
    """The token -> id map of the tokenizer saved beside a checkpoint (``tokenizer.json``, else
    ``vocab.txt``), with its folder; ``None`` when the checkpoint has no tokenizer files."""
    folder, _ = load_config(name_or_path)
    if (folder / "tokenizer.json").is_file():
        import tokenizers

        backend = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        return folder, backend.get_vocab(with_added_tokens=True)
    if (folder / "vocab.txt").is_file():
        lines = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
        return folder, {token: i for i, token in enumerate(lines)}
    return None


def vocabulary_digest(vocab: dict[str, int]) -> str:
    """A hash of the token -> id map: two tokenizers agree when their maps do, not when their sizes do."""
    return hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()


def check_tokenizer_matches(tokenizer: SentenceTokenizer, tokenizer_name: str, **checkpoints: str) -> None:
    """Refuse a tokenizer whose token -> id map differs from the one saved beside a checkpoint (``key=folder``
    or hub id): the model would read every token through another row of its embedding table. A checkpoint
    without tokenizer files is checked by size only (``_check_vocabularies``)."""
    ours = tokenizer.backend.get_vocab(with_added_tokens=True)
    for key, name in checkpoints.items():
        saved = saved_vocabulary(name)
        if saved is None or saved[0].resolve() == Path(tokenizer_name).resolve():
            continue
        folder, theirs = saved
        if vocabulary_digest(theirs) == vocabulary_digest(ours):
            continue
        differ = sorted(t for t in ours.keys() | theirs.keys() if ours.get(t) != theirs.get(t))
        raise DataError(
            f"tokenizer_name={tokenizer_name!r} maps tokens to other ids than the tokenizer saved with "
            f"{key}={name!r} ({len(ours)} and {len(theirs)} tokens, {len(differ)} differ, e.g. "
            f"{differ[0]!r}: {ours.get(differ[0])} against {theirs.get(differ[0])}); set "
            f"tokenizer_name={str(folder)!r}"
        )


def check_max_length(max_length: int, **models: AbstractSequenceClassifier) -> None:
    """Refuse a ``max_length`` beyond a model's position table: XLA clamps the out-of-range positions to the
    last row, and the run would train on garbage positions."""
    for name, model in models.items():
        limit = model.config.max_position_embeddings
        if max_length > limit:
            raise ConfigError(
                f"max_length={max_length} is longer than the {name}'s position table "
                f"(max_position_embeddings={limit}); set max_length <= {limit}"
            )


@contextlib.contextmanager
def _hub_key(key: str):
    """A hub id that cannot be downloaded names the config key to point at a local folder."""
    try:
        yield
    except HubUnavailable as e:
        message = f"{key}: {e}; set {key} to a local folder (config.json, model.safetensors)"
        raise HubUnavailable(message) from None


_FINETUNE_COMMAND = (
    "python experiments/finetune_teacher.py --config experiments/configs/finetune_minilm_sst2.yaml"
)


def _check_local_paths(config: ExperimentConfig, teacher: bool) -> None:
    """A path that names no folder, said before any model or tokenizer is loaded: relative paths are read from
    the working folder, and a missing teacher is made by fine-tuning, not found on the hub."""
    keys = ("teacher_model", "tokenizer_name") if teacher else ("tokenizer_name",)
    for key in keys:
        value = getattr(config, key)
        if hub.is_hub_id(value) or Path(value).is_dir():
            continue
        where = f"{value!r} is not a folder (relative paths are read from {Path.cwd()})"
        if value == config.teacher_model and teacher:
            raise ConfigError(
                f"{key}={where}. A teacher is a fine-tuned classifier's folder, the best/ of a "
                f"finetune_teacher.py run: `{_FINETUNE_COMMAND}` writes runs/minilm_teacher/best (run it "
                "from the repository root, or set teacher_model and tokenizer_name to where it is)"
            )
        raise ConfigError(f"{key}={where}; expected a folder holding tokenizer.json (or a hub id)")


def check_before_writing(config: ExperimentConfig) -> None:
    """What would destroy work in ``output_dir``, mix two runs, or fail after files were written, refused
    before anything is: an ``output_dir`` that is a file or in use, one that holds a run neither resumed nor
    overwritten (``overwrite_output_dir``, as in Hugging Face Trainer), a resume without a checkpoint, and
    ``use_wandb`` without wandb."""
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={config.output_dir!r} is a file; expected a folder or a new path")
    check_free(out)
    if config.use_wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            'use_wandb=true, but wandb is not installed: pip install -e ".[wandb]", or set use_wandb=false'
        )
    checkpoints = out / "checkpoints"
    if config.resume_from_checkpoint:
        if CheckpointManager(checkpoints, 1, is_writer=False).latest() is None:
            raise ConfigError(
                f"resume_from_checkpoint=true, but no valid checkpoint found in {checkpoints}; check "
                "output_dir, or set resume_from_checkpoint=false to start a new run"
            )
        return
    found = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE) if out.is_dir() else []
    if found and not config.overwrite_output_dir:
        raise ConfigError(
            f"output_dir {out} already holds a run ({', '.join(found)}); starting again would delete its "
            "checkpoints and metrics: set resume_from_checkpoint=true to continue it, or "
            "overwrite_output_dir=true to replace it"
        )


def _start_devices(config: ExperimentConfig):
    """``make_steps(objective, optimizer)``: single-device steps, or the ``jax.shard_map`` steps over a mesh.

    Runs before anything else touches JAX: glibc's allocator settings must precede XLA's threads, and with
    several processes ``jax.distributed`` must start before any device is used.
    """
    if host_memory.applies_to(config.platform):
        host_memory.retain_freed_memory()
    if config.compilation_cache_dir is not None:
        use_compilation_cache(config.compilation_cache_dir)
    if config.num_devices == 1 and config.num_processes == 1:
        return single_device_steps
    from . import parallel

    parallel.initialize(config.num_processes, config.process_id, config.coordinator_address)
    mesh = parallel.make_mesh(config.num_devices, config.platform)
    return functools.partial(parallel.sharded_steps, mesh)


def use_compilation_cache(folder: str) -> None:
    """JAX's persistent compilation cache in ``folder``: a later run of the same programs (same config, jax and
    device) loads them instead of compiling. Every program is kept, however quick to compile: the defaults keep
    only those over a second, and a run's many small eval and step shapes add up. Call before the first compile."""
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _tokenizer_to_save(config: ExperimentConfig) -> Any:
    if Path(config.tokenizer_name).is_dir():
        return config.tokenizer_name
    import transformers

    # Without the hub, load_tokenizer read it from the hub cache: so does this, rather than retry.
    offline = hub.unreachable() is not None
    return transformers.AutoTokenizer.from_pretrained(config.tokenizer_name, local_files_only=offline)


def _recipe(config: ExperimentConfig, objective: Objective) -> str:
    """The model card's one line on the loss: every term with its weight, and the settings they used."""
    if not objective.needs_teacher:
        return "trained on the labels alone (cross-entropy)"
    teachers = [config.teacher_model, *(config.ensemble_teachers or ())]
    recipe = f"distilled from {' and '.join(f'`{t}`' for t in teachers)}: {objective.describe()}"
    if config.intermediate_steps:
        prediction = [term.title for term in objective.terms if term.prediction_layer]
        recipe += (
            f"; two stages, the first {config.intermediate_steps} steps without {' and '.join(prediction)}"
        )
    return recipe


def _model_card(
    config: ExperimentConfig, started_from: str, objective: Objective, dev_accuracy: float | None
) -> str:
    """The README.md of a saved model folder, the model card the hub shows: what it is, how it was trained."""
    recipe = _recipe(config, objective)
    length = f"{config.max_steps} steps" if config.max_steps else f"{config.num_epochs} epoch(s)"
    accuracy = "not measured" if dev_accuracy is None else f"{100 * dev_accuracy:.2f}%"
    return "\n".join(
        [
            "---",
            "library_name: transformers",
            "pipeline_tag: text-classification",
            "datasets:",
            "- glue",
            "language:",
            "- en",
            "---",
            "",
            f"# {config.job_name}",
            "",
            (
                f"An SST-2 sentiment classifier (labels: {', '.join(LABEL_NAMES)}), trained with distilbert-eqx "
                "(JAX/Equinox) and saved in `transformers` format."
            ),
            "",
            f"- Started from: {started_from}",
            f"- Recipe: {recipe}",
            (
                f"- Data: GLUE SST-2 train ({config.data_dir or config.dataset_id}), {length}, batch "
                f"{config.batch_size}, AdamW lr {config.learning_rate}, warm-up ratio {config.warmup_ratio}, weight "
                f"decay {config.weight_decay}, seed {config.seed}"
            ),
            f"- SST-2 dev accuracy when saved: {accuracy}",
            "",
        ]
    )


def build_objective(
    config: ExperimentConfig,
    student: AbstractSequenceClassifier,
    teacher: AbstractSequenceClassifier | None,
) -> Objective:
    """The config's loss terms, each checked against and resolved for the two models (layer maps, head
    counts): see ``AbstractTerm.bind``."""
    objective = Objective(config.terms)
    if teacher is None:
        if objective.needs_teacher:
            readers = [term.name for term in objective.terms if term.reads_teacher]
            raise ConfigError(
                f"the loss terms {readers} compare the student with a teacher, but there is none"
            )
        return objective
    return objective.bind(student, teacher)


def build_projection(
    config: ExperimentConfig,
    objective: Objective,
    student: AbstractSequenceClassifier,
    teacher: AbstractSequenceClassifier | None,
    *,
    key: jax.Array,
) -> eqx.nn.Linear | None:
    """TinyBERT's ``W_h`` from the student's width to the teacher's, when a hidden-state term needs one.

    ``hidden_projection: null`` adds it exactly when the widths differ; ``true`` always (with a hidden-state
    term); ``false`` never, and then differing widths are an error here rather than inside the step.
    """
    if teacher is None or not objective.projects_student:
        if config.hidden_projection:
            raise ConfigError(
                f"hidden_projection=true, but no term of {list(objective.names)} compares hidden states"
            )
        return None
    widths_differ = student.hidden_size != teacher.hidden_size
    if config.hidden_projection is False and widths_differ:
        raise ConfigError(
            f"the student's hidden size {student.hidden_size} differs from the teacher's {teacher.hidden_size}, "
            f"so {[t.name for t in objective.terms if t.projects_student]} need a projection: set "
            "hidden_projection to null or true, or drop those terms"
        )
    if config.hidden_projection or (config.hidden_projection is None and widths_differ):
        std = teacher.config.initializer_range
        return linear(student.hidden_size, teacher.hidden_size, std, key=key)
    return None


def _teacher_cache(
    config: ExperimentConfig,
    teacher: AbstractSequenceClassifier | None,
    split: TokenizedSplit,
    objective: Objective,
    steps: Steps,
    buckets: tuple[int, ...],
    packed: PackingSettings | None,
    ensemble: Sequence[AbstractSequenceClassifier] = (),
) -> TeacherCache | None:
    """The train split's teacher-output cache as the config asks (``None`` when off or when no term reads the
    teacher), computed on the run's devices in the run's batching (a packed run's pass packs 4 times the rows
    of its step: one program); with ``ensemble`` (more teachers), the mean of every teacher's probabilities
    (``distill/ensemble.py``)."""
    if config.teacher_cache == "off":
        return None
    if not objective.needs_teacher:
        say(f"teacher_cache={config.teacher_cache}: the loss reads nothing of the teacher, so none is cached")
        return None
    if ensemble:
        # Before any teacher pass: a loss that keeps more than logits cannot be averaged.
        temperatures = logit_temperatures(objective, fields(eqx.nn.inference_mode(teacher), objective))

    def cache_of(model: AbstractSequenceClassifier) -> TeacherCache:
        return teacher_cache(
            steps.place_state(eqx.nn.inference_mode(model)),
            split,
            objective,
            batch_size=4 * eval_batch_size(config),
            buckets=buckets,
            dtype=config.teacher_cache_dtype,
            folder=config.teacher_cache_dir if config.teacher_cache == "disk" else None,
            max_bytes=int(config.teacher_cache_max_gb * 2**30),
            place=steps.place,
            log=say,
            packing=None if packed is None else dataclasses.replace(packed, rows=4 * packed.rows),
        )

    caches = [cache_of(model) for model in (teacher, *ensemble)]
    if not ensemble:
        return caches[0]
    say(f"teacher cache: the mean probabilities of {len(caches)} teachers")
    return average_soft_targets(caches, temperatures)


def train_model(
    config: ExperimentConfig,
    model: AbstractSequenceClassifier,
    teacher: AbstractSequenceClassifier | None,
    splits: dict[str, TokenizedSplit],
    *,
    key: jax.Array,
    make_steps: Callable[[Objective, Any], Steps] = single_device_steps,
    final_name: str = "student",
    started_from: str = "not recorded",
    ensemble: Sequence[AbstractSequenceClassifier] = (),
) -> dict[str, Any]:
    """Build the losses, optimizer, steps, checkpoints and log from ``config`` and run the fit loop.

    Arguments:
        config: the experiment config.
        model: the model to train (in training mode; ``dropout: false`` switches its dropout off here).
        teacher: the frozen teacher, or ``None`` when the loss needs none.
        splits: tokenised ``"train"`` and ``"dev"`` splits.
        key: the train state's PRNG key (dropout).
        make_steps: ``make_steps(objective, optimizer)`` builds the steps (``parallel.sharded_steps`` on a mesh).
        final_name: the output folder of the final model.
        started_from: the model card's line on where the model's weights came from.
        ensemble: more teachers (``ensemble_teachers``), whose probabilities the cache averages with ``teacher``'s.

    Returns:
        the fit loop's summary.
    """
    # Everything the run compiles from here on (the teacher cache's pass, train and eval steps) is counted.
    with Compilations() as compilations:
        train_split, dev_split = splits["train"], splits["dev"]
        buckets = length_buckets(config)
        objective = build_objective(config, model, teacher)
        # A key of its own, so that runs without a projection keep the train state's key they always had.
        projection = build_projection(config, objective, model, teacher, key=jax.random.fold_in(key, 1))
        packed = packing_shape(config, train_split, dev_split)
        if packed is None:
            per_epoch = num_batches(train_split, config.batch_size)
        else:
            per_epoch = steps_per_epoch(train_split.lengths, packed)
        total_steps = config.max_steps or config.num_epochs * per_epoch
        if config.intermediate_steps >= total_steps:
            raise ConfigError(
                f"intermediate_steps={config.intermediate_steps} leaves no steps for the second stage: the run has "
                f"{total_steps} steps"
            )
        plan = FitPlan(
            total_steps=total_steps,
            steps_per_epoch=per_epoch,
            log_every=config.log_every,
            log_val_every=config.log_val_every,
            checkpoint_every=config.checkpoint_every if config.do_checkpoint else None,
            first_stage_steps=config.intermediate_steps,
        )
        optimizer, schedule = make_optimizer(
            config.learning_rate,
            config.weight_decay,
            config.warmup_ratio,
            plan.total_steps,
            config.max_grad_norm,
            first_stage_steps=config.intermediate_steps,
        )
        first_stage_train = None
        if config.intermediate_steps:
            first_stage_train = make_steps(objective.stage(prediction_layer=False), optimizer).train
            steps: Steps = make_steps(objective.stage(prediction_layer=True), optimizer)
        else:
            steps = make_steps(objective, optimizer)
        out = Path(config.output_dir)
        tokenizer = _tokenizer_to_save(config)

        def save_model(m: AbstractSequenceClassifier, name: str, dev_accuracy: float | None) -> None:
            card = _model_card(config, started_from, objective, dev_accuracy)
            save_pretrained(m, out / name, tokenizer, label_names=LABEL_NAMES, model_card=card)

        wandb = None
        if config.use_wandb:
            wandb = {
                "project": config.project_name,
                "name": config.job_name,
                "group": config.experiment_name,
                "config": config_to_dict(config),
            }
        # Built before the folder is locked and written: its size limit is one of the checks that must pass first.
        cache = _teacher_cache(config, teacher, train_split, objective, steps, buckets, packed, ensemble)
        summary = startup_summary(config, model, teacher, train_split, dev_split, plan, objective, cache)
        if cache is not None:
            teacher = None  # the steps read the cache; the teacher's weights need not stay on the devices

        def train_batches(start: int):
            if packed is None:
                stream = indexed_epoch_batches(
                    train_split,
                    config.batch_size,
                    buckets,
                    seed=config.seed,
                    group_by_length=config.group_by_length,
                    start_step=start,
                )
            else:
                widest = int(train_split.lengths.max())
                stream = indexed_packed_batches(
                    train_split, packed, widest, seed=config.seed, start_step=start
                )
            return (batch for _, batch in stream) if cache is None else cache.attach(stream)

        if steps.is_writer:
            for line in summary:
                say(line)
        # Only the writing process holds the folder: the others write nothing into it.
        lock = OutputDirLock(out) if steps.is_writer else contextlib.nullcontext()
        with lock:
            if steps.is_writer:
                provenance = {"versions": package_versions(), "commit": git_commit(), "machine": machine()}
                record = {**config_to_dict(config), PROVENANCE_KEY: provenance}
                atomic_write_text(out / "config.json", json.dumps(record, indent=2))
            return fit(
                init_state(
                    model if config.dropout else eqx.nn.inference_mode(model),
                    optimizer,
                    key=key,
                    projection=projection,
                ),
                None if teacher is None else eqx.nn.inference_mode(teacher),
                train_batches=train_batches,
                dev_batches=lambda: dev_batches(config, packed, dev_split, buckets),
                steps=steps,
                plan=plan,
                learning_rate=schedule,
                checkpoints=CheckpointManager(
                    out / "checkpoints", config.keep_top_k_checkpoints, is_writer=steps.is_writer
                ),
                log=MetricsLog(out / "metrics.jsonl", enabled=steps.is_writer, wandb_settings=wandb),
                save_model=save_model,
                final_name=final_name,
                resume=config.resume_from_checkpoint,
                first_stage_train=first_stage_train,
                compilations=compilations,
            )


def dev_batches(
    config: ExperimentConfig, packed: PackingSettings | None, dev: TokenizedSplit, buckets: tuple[int, ...]
) -> Iterator[Batch]:
    """One pass over the dev split: packed like the training steps when the run packs (one program), else in
    batches of ``eval_batch_size`` padded to their buckets."""
    if packed is None:
        return eval_batches(dev, eval_batch_size(config), buckets)
    return packed_eval_batches(dev, packed, int(dev.lengths.max()))


def count_parameters(model: AbstractSequenceClassifier) -> int:
    """The model's trainable (floating-point) parameters."""
    return sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count >= 10**5 else f"{count:,}"


def startup_summary(
    config: ExperimentConfig,
    model: AbstractSequenceClassifier,
    teacher: AbstractSequenceClassifier | None,
    train_split: TokenizedSplit,
    dev_split: TokenizedSplit,
    plan: FitPlan,
    objective: Objective,
    cache: TeacherCache | None,
) -> list[str]:
    """The lines a run prints before its first step: where it runs, on what data, for how long, which models
    and which loss (what Trainer's and Levanter's start-up logs say)."""
    devices = jax.devices()
    kind = devices[0].device_kind
    lines = [
        (
            f"devices: {config.num_devices} of {len(devices)} ({devices[0].platform}, {kind}), "
            f"{config.num_processes} process(es); dtype {config.dtype}"
        ),
    ]
    variants = "" if train_split.labelled is None else f" ({int(train_split.labelled.sum())} labelled)"
    epochs = plan.total_steps / plan.steps_per_epoch
    packed = packing_shape(config, train_split, dev_split)
    step = (
        f"batch {config.batch_size}"
        if packed is None
        else f"packed {packed.rows} x {packed.length} tokens a step (up to {packed.slots} sentences a row)"
    )
    lines.append(
        f"data: {len(train_split)} train examples{variants}, {len(dev_split)} dev; "
        f"{step}, {plan.total_steps} steps = {epochs:.2f} epochs of {plan.steps_per_epoch}"
    )
    student = count_parameters(model)
    if teacher is None:
        lines.append(f"model: {_millions(student)} parameters")
    else:
        teacher_count = count_parameters(teacher)
        lines.append(
            f"student: {_millions(student)} parameters, {model.num_layers} layers; teacher: "
            f"{_millions(teacher_count)}, {teacher.num_layers} layers "
            f"(student/teacher {student / teacher_count:.2f})"
        )
    lines.append(f"loss: {objective.describe()}")
    if objective.needs_teacher:
        source = "the live teacher every step" if cache is None else f"a {config.teacher_cache} cache"
        if config.ensemble_teachers:
            source += f" of the mean probabilities of {1 + len(config.ensemble_teachers)} teachers"
        lines.append(f"teacher outputs: {source} (teacher_cache={config.teacher_cache})")
    lines.append(f"output: {config.output_dir} (metrics.jsonl, config.json, checkpoints/)")
    return lines


def compute_dtype(dtype: str, backend: str) -> ComputeDtype:
    """The config's ``dtype``, with ``auto`` resolved for ``backend``: float32 on a CPU, where XLA's bfloat16
    is slower than its float32 (docs/performance.md), bfloat16 on an accelerator."""
    if dtype == "auto":
        return "float32" if backend == "cpu" else "bfloat16"
    return "bfloat16" if dtype == "bfloat16" else "float32"


def _resolve_dtype(config: ExperimentConfig) -> ExperimentConfig:
    """The config with ``dtype`` resolved for the run's backend (config.json records it); ``auto`` is said at
    start-up."""
    backend = config.platform or jax.default_backend()
    dtype = compute_dtype(config.dtype, backend)
    if config.dtype == "auto":  # the devices line names the dtype; this says where `auto` took it
        say(f"dtype: {dtype} (auto on {backend})")
    return dataclasses.replace(config, dtype=dtype)


def _prepare(
    config: ExperimentConfig, *, teacher: bool
) -> tuple[Any, SentenceTokenizer, dict[str, TokenizedSplit], jax.Array, jax.Array]:
    """What every training run starts with: the checks that need no model, the devices (first of everything
    that touches JAX), the tokenizer, the train and dev splits, and the initialisation and training keys drawn
    from ``seed``. ``teacher``: the run distils from ``teacher_model`` (rather than fine-tuning it)."""
    # Before the devices start: jax.distributed.initialize waits for every process, so each one has checked
    # the shared output folder before process 0 can write to it.
    check_before_writing(config)
    _check_local_paths(config, teacher)
    make_steps = _start_devices(config)
    tokenizer = load_tokenizer(config.tokenizer_name, config.max_length)
    splits = load_splits(config, ("train", "dev"), tokenizer)
    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    return make_steps, tokenizer, splits, init_key, train_key


def random_student_from_config(
    config: ExperimentConfig, teacher: AbstractSequenceClassifier, *, key: jax.Array
) -> AbstractSequenceClassifier:
    """A random-init DistilBERT of the config's ``student_*`` shape; an unset key takes the teacher's value
    (layers: half the teacher's, rounded up). ``student_embedding_init: teacher_pca`` starts its word embeddings
    from the teacher's table reduced to its width by PCA."""
    t = teacher.config
    num_heads = config.student_num_heads or t.num_attention_heads
    hidden = config.student_hidden_size or t.hidden_size
    if hidden % num_heads:
        raise ConfigError(
            f"student_hidden_size={hidden} is not divisible by student_num_heads={num_heads}; the heads split the "
            "hidden size evenly"
        )
    pca = config.student_embedding_init == "teacher_pca"
    if pca and hidden > t.hidden_size:
        raise ConfigError(
            f"student_embedding_init=teacher_pca reduces the teacher's {t.hidden_size}-wide embeddings by PCA; "
            f"student_hidden_size={hidden} is wider (use random, or a student at most {t.hidden_size} wide)"
        )
    return random_student(
        t,
        num_layers=config.student_num_layers or -(-t.num_hidden_layers // 2),
        hidden_size=hidden,
        num_heads=num_heads,
        intermediate_size=config.student_intermediate_size or t.intermediate_size,
        num_labels=t.num_labels,
        key=key,
        compute_dtype=compute_dtype(config.dtype, config.platform or jax.default_backend()),
        teacher_word_embeddings=teacher.encoder.embeddings.word.weight if pca else None,
    )


def distill(config: ExperimentConfig) -> dict[str, Any]:
    """Distil ``teacher_model`` into a student (built at random from the ``student_*`` shape keys, built from
    the teacher's ``student_init_layers``, or loaded from ``student_model``) on SST-2, as ``config`` says."""
    make_steps, tokenizer, splits, init_key, train_key = _prepare(config, teacher=True)
    config = _resolve_dtype(config)
    with _hub_key("teacher_model"):
        teacher = from_pretrained(
            config.teacher_model,
            dtype=config.dtype,
            refuse_fresh_head="the teacher's logits noise: distil from a fine-tuned classifier",
        )
    ensemble = []
    for i, name in enumerate(config.ensemble_teachers or ()):
        with _hub_key(f"ensemble_teachers[{i}]"):
            ensemble.append(
                from_pretrained(
                    name,
                    dtype=config.dtype,
                    refuse_fresh_head="the teacher's logits noise: distil from a fine-tuned classifier",
                )
            )
    shape = {key: getattr(config, key) for key in STUDENT_SHAPE}
    checkpoints = {
        "teacher_model": config.teacher_model,
        **{f"ensemble_teachers[{i}]": name for i, name in enumerate(config.ensemble_teachers or ())},
    }
    if any(v is not None for v in shape.values()):
        student = random_student_from_config(config, teacher, key=init_key)
    elif config.student_init_layers is not None:
        layers = config.student_init_layers
        if layers[-1] >= teacher.num_layers:
            raise ConfigError(
                f"student_init_layers={list(layers)} names teacher layer {layers[-1]}, but the teacher has "
                f"{teacher.num_layers} layers (0 to {teacher.num_layers - 1})"
            )
        student = student_from_teacher(teacher, layers, key=init_key, compute_dtype=config.dtype)
    else:
        with _hub_key("student_model"):
            student = from_pretrained(
                config.student_model, num_labels=teacher.config.num_labels, dtype=config.dtype, key=init_key
            )
        checkpoints["student_model"] = config.student_model
    members = {f"ensemble_teachers[{i}]": model for i, model in enumerate(ensemble)}
    classes = {name: model.config.num_labels for name, model in {"teacher_model": teacher, **members}.items()}
    if len(set(classes.values())) > 1:
        raise ConfigError(f"the teachers classify into different numbers of classes: {classes}")
    check_max_length(config.max_length, teacher=teacher, student=student, **members)
    check_tokenizer_matches(tokenizer, config.tokenizer_name, **checkpoints)
    _check_vocabularies(tokenizer.backend.get_vocab_size(), teacher=teacher, student=student, **members)
    if any(v is not None for v in shape.values()):
        c = student.config
        started_from = f"random initialisation: {c.n_layers} layers, hidden {c.dim}, {c.n_heads} heads, FFN {c.hidden_dim}"
    elif config.student_init_layers is not None:
        started_from = f"layers {list(config.student_init_layers)} of `{config.teacher_model}`"
    else:
        started_from = f"`{config.student_model}`"
    if config.augment is not None:
        splits["train"] = _with_augmented_pool(config, splits["train"], tokenizer, teacher)
    return train_model(
        config,
        student,
        teacher,
        splits,
        key=train_key,
        make_steps=make_steps,
        final_name="student",
        started_from=started_from,
        ensemble=ensemble,
    )


def _with_augmented_pool(
    config: ExperimentConfig,
    train: TokenizedSplit,
    tokenizer: SentenceTokenizer,
    teacher: AbstractSequenceClassifier,
) -> TokenizedSplit:
    """The train split followed by its transfer set (``augment``), made or read from ``augment_dir``."""
    text = load_text_split("train", data_dir=config.data_dir, dataset_id=config.dataset_id)
    pool = augmented_pool(
        text, tokenizer, teacher, config.augment, config.augment_dir, config.augment_seed, log=say
    )
    joined = with_transfer_set(train, pool.split)
    say(f"augment: training on {len(train)} labelled examples and {len(pool.split)} variants")
    return joined


def finetune(config: ExperimentConfig) -> dict[str, Any]:
    """Fine-tune ``teacher_model`` on SST-2 with the hard-label loss alone (how a teacher is made)."""
    if config.augment is not None:
        raise ConfigError(
            "augment: a transfer set is labelled by a teacher, and fine-tuning has none; set it to null"
        )
    objective = Objective(config.terms)
    if objective.needs_teacher:
        readers = {term.name: term.weight for term in objective.terms if term.reads_teacher}
        raise ConfigError(
            f"fine-tuning uses the label loss alone: drop every term that reads a teacher (got {readers}; with the "
            "flat keys, set alpha_ce > 0 and every other alpha_* to 0)"
        )
    make_steps, tokenizer, splits, init_key, train_key = _prepare(config, teacher=False)
    config = _resolve_dtype(config)
    with _hub_key("teacher_model"):
        model = from_pretrained(
            config.teacher_model, num_labels=len(LABEL_NAMES), dtype=config.dtype, key=init_key
        )
    check_max_length(config.max_length, model=model)
    check_tokenizer_matches(tokenizer, config.tokenizer_name, teacher_model=config.teacher_model)
    _check_vocabularies(tokenizer.backend.get_vocab_size(), model=model)
    return train_model(
        config,
        model,
        None,
        splits,
        key=train_key,
        make_steps=make_steps,
        final_name="model",
        started_from=f"`{config.teacher_model}`",
    )


def _check_not_a_run_folder(path: Path) -> None:
    """A training run's folder holds models; it is not one."""
    if not (path / "metrics.jsonl").is_file() and not (path / "checkpoints").is_dir():
        return
    models = [name for name in ("best", "student", "model") if (path / name / "config.json").is_file()]
    found = ", ".join(f"{name}/" for name in models) if models else "no saved model yet"
    raise CheckpointError(
        f"{path} is a training run's folder, not a model (it holds {found}): pass its best/ (the best "
        "validation accuracy) or its final model, student/ (model/ after fine-tuning)"
    )


def evaluate_checkpoint(
    model_path: str,
    *,
    data_dir: str | None,
    split: str,
    dataset_id: str = "glue/sst2",
    max_length: int = 128,
    batch_size: int = 64,
    buckets: tuple[int, ...] | None = None,
    predictions_out: str | None = None,
) -> dict[str, Any]:
    """Accuracy of any HF-format sequence classifier (ours or ``transformers``') on an SST-2 split.

    The tokenizer is the one saved with the model. ``buckets`` are the padded lengths (default
    ``data.default_length_buckets(max_length)``; each one used compiles the step once). Writes per-example
    predictions (JSON lines, dataset order, with ``logits``, ``prediction`` and ``label``) to
    ``predictions_out`` when given.
    """
    _check_not_a_run_folder(Path(model_path))
    with _hub_key("--model"):
        folder, _ = load_config(model_path)
    model = from_pretrained(folder, dtype="float32", refuse_fresh_head="its accuracy a random classifier's")
    check_max_length(max_length, model=model)
    tokenizer = load_tokenizer(str(folder), max_length)
    data = tokenize_split(load_text_split(split, data_dir=data_dir, dataset_id=dataset_id), tokenizer)
    _check_vocabularies(tokenizer.backend.get_vocab_size(), model=model)
    buckets = default_length_buckets(max_length) if buckets is None else buckets
    accuracy, n, logits = evaluate(model, eval_batches(data, batch_size, buckets))
    if predictions_out is not None:
        with open(predictions_out, "w") as f:
            for row, label in zip(logits, data.labels):
                record = {"logits": row.tolist(), "prediction": int(np.argmax(row)), "label": int(label)}
                f.write(json.dumps(record) + "\n")
    return {"accuracy": accuracy, "n": n}
