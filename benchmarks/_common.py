"""Helpers shared by the benchmark scripts: model sizes, both frameworks' distillation steps, child processes.

Each measurement runs in its own child process (the script re-invoked with ``--framework`` or
``--variant``), so every framework gets a clean heap, its own thread pools and its own peak-RSS number; the
child prints one line ``RESULT_PREFIX + json`` on stdout and the parent collects it.
"""

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Benchmark this checkout's package, whatever else is installed.
sys.path.insert(0, str(REPO))

RESULT_PREFIX = "BENCHMARK_RESULT "
VOCAB_SIZE = 30522  # bert-base-uncased's vocabulary, which the MiniLM tokenizer shares
TEMPERATURE, ALPHA_CE, ALPHA_KL, ALPHA_COS = 2.0, 1.0, 0.45, 0.1
LEARNING_RATE, WEIGHT_DECAY, WARMUP_RATIO = 1e-5, 0.01, 0.06


@dataclasses.dataclass(frozen=True)
class ModelSize:
    """A BERT teacher shape; the student is a DistilBERT as wide, with one teacher layer out of two."""

    name: str
    layers: int
    hidden: int
    heads: int
    intermediate: int
    # len(init.default_student_layers(layers)), written out so that the PyTorch child never imports jax (which
    # would inflate its peak RSS); OursDistiller checks it.
    student_layers: int

    def describe(self) -> str:
        return (
            f"teacher {self.layers}L/{self.hidden}/{self.heads}h/{self.intermediate} -> "
            f"student {self.student_layers}L/{self.hidden}"
        )


SIZES = {
    "base": ModelSize("base", 12, 768, 12, 3072, 6),
    "mini": ModelSize("mini", 6, 384, 12, 1536, 3),
    # For smoke runs of the scripts themselves (--quick); its numbers mean nothing.
    "tiny": ModelSize("tiny", 2, 64, 4, 128, 1),
}


# Dense (no sparsity) peaks from NVIDIA's data sheets, TFLOP/s, by a substring of the device name (JAX's
# ``device_kind``, PyTorch's ``get_device_name``); the first match counts, so the more specific names come
# first. "tf32" is the tensor-core rate at which XLA:GPU runs float32 dots under JAX's default matmul
# precision on these chips; "float32" is the CUDA-core rate, what a float32 dot gets at "highest" precision.
DENSE_PEAK_TFLOPS = (
    ("H100 NVL", {"bfloat16": 835.0, "tf32": 417.5, "float32": 60.0}),
    ("H100 PCIe", {"bfloat16": 756.0, "tf32": 378.0, "float32": 51.0}),
    ("H200 NVL", {"bfloat16": 835.0, "tf32": 417.5, "float32": 60.0}),
    ("H100", {"bfloat16": 989.4, "tf32": 494.7, "float32": 66.9}),  # SXM5, e.g. "NVIDIA H100 80GB HBM3"
    ("H200", {"bfloat16": 989.4, "tf32": 494.7, "float32": 66.9}),
    ("A100", {"bfloat16": 312.0, "tf32": 156.0, "float32": 19.5}),
)


def data_sheet_peak_tflops(device_name: str, precision: str) -> float | None:
    """The data-sheet dense peak of ``device_name`` in ``precision`` ("bfloat16", "tf32" or "float32"), in
    TFLOP/s; ``None`` for a device not in ``DENSE_PEAK_TFLOPS`` (a CPU, say)."""
    for key, peaks in DENSE_PEAK_TFLOPS:
        if key in device_name:
            return peaks[precision]
    return None


def parse_sizes(text: str) -> list[ModelSize]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or any(n not in SIZES for n in names):
        raise SystemExit(f"--sizes {text!r}: expected a comma-separated subset of {', '.join(SIZES)}")
    return [SIZES[n] for n in names]


def forward_matmul_flops(size: ModelSize, layers: int, batch: int, seq: int) -> int:
    """Matmul FLOPs of a forward pass of a ``layers``-deep encoder of ``size``'s width over ``batch x seq``.

    With ``N = batch * seq`` tokens, ``h`` hidden and ``i`` intermediate size, per layer:
      - Q, K, V, output projections and the two feed-forward matrices: ``2 * N * (4 h^2 + 2 h i)``
        (2 FLOPs per multiply-add, ``4 h^2 + 2 h i`` matmul weights);
      - attention scores ``Q K^T`` and context ``P V``: ``2 * 2 * batch * seq^2 * h`` (each is
        ``batch * heads * seq * seq * head_dim`` multiply-adds, and ``heads * head_dim = h``).
    The head (pooler or pre_classifier, then a 2-class classifier) sees the first token only:
    ``2 * batch * (h^2 + 2 h)``. Embedding lookups, LayerNorm, softmax and GELU are not matmuls: not counted.
    """
    h, i = size.hidden, size.intermediate
    per_layer = 2 * batch * seq * (4 * h * h + 2 * h * i) + 4 * batch * seq * seq * h
    return layers * per_layer + 2 * batch * (h * h + 2 * h)


def step_matmul_flops(size: ModelSize, batch: int, seq: int) -> int:
    """Matmul FLOPs of one distillation step: ``teacher_forward + 3 * student_forward``.

    The student's backward pass costs two forwards (gradients with respect to the activations and to the
    weights), the usual accounting. The AdamW update is elementwise and not counted.
    """
    teacher = forward_matmul_flops(size, size.layers, batch, seq)
    student = forward_matmul_flops(size, size.student_layers, batch, seq)
    return teacher + 3 * student


def add_default_malloc_option(parser: Any) -> None:
    """``--default-malloc``: our side skips ``host_memory.retain_freed_memory`` (an A/B of that setting)."""
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc malloc as it is: skip host_memory.retain_freed_memory, which our "
        "runs call first (for an A/B of that setting)",
    )


def fill_defaults(args: Any, defaults: dict[str, Any], quick_defaults: dict[str, Any]) -> None:
    """Give every option left unset (``None``) its default, or its ``--quick`` default under ``--quick``
    (so ``--quick --steps 5`` keeps the 5)."""
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick_defaults.get(name, value) if args.quick else value)


def max_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "mean_s": statistics.fmean(seconds),
        "n": len(seconds),
    }


def emit_result(result: dict[str, Any]) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_child(
    script: Path, argv: Sequence[str], env_defaults: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``script`` with ``argv`` in a fresh interpreter and return the JSON it emitted.

    ``env_defaults`` (default ``JAX_PLATFORMS=cpu``) are set in the child's environment where this process
    has not set them. The child's stderr (progress, warnings) goes straight through; its other stdout lines
    are forwarded to stderr, so that the parent's stdout holds only the report.
    """
    command = [sys.executable, str(script), *argv]
    env = dict(os.environ)
    for name, value in (env_defaults or {"JAX_PLATFORMS": "cpu"}).items():
        env.setdefault(name, value)
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO, check=False)
    result = None
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
        elif line.strip():
            print(line, file=sys.stderr)
    if completed.returncode != 0 or result is None:
        raise SystemExit(f"child failed (exit {completed.returncode}): {' '.join(command)}")
    return result


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class OursDistiller:
    """Ours: a random BERT teacher (inference mode) and the DistilBERT student ``init.student_from_teacher``
    builds from it, stepped by ``train.train_step``; dropout is off in both. ``compute_dtype="bfloat16"``
    runs both models' matmuls in bfloat16 (parameters, softmax, LayerNorm and the optimizer stay float32).

    Like the experiment scripts, it first calls ``host_memory.retain_freed_memory`` (glibc keeps the memory
    XLA:CPU frees, instead of page-faulting it back in every step), unless ``default_malloc``."""

    def __init__(
        self,
        size: ModelSize,
        total_steps: int,
        seed: int = 0,
        default_malloc: bool = False,
        compute_dtype: str = "float32",
    ):
        from distilbert_eqx.host_memory import retain_freed_memory

        self.retained_freed_memory = False if default_malloc else retain_freed_memory()

        import equinox as eqx
        import jax

        from distilbert_eqx.distill import Objective
        from distilbert_eqx.distill.terms import CE, KL, Cos
        from distilbert_eqx.init import student_from_teacher
        from distilbert_eqx.models import BertConfig, BertForSequenceClassification
        from distilbert_eqx.train import init_state, make_optimizer

        config = BertConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=size.hidden,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            intermediate_size=size.intermediate,
        )
        k_teacher, k_student, k_state = jax.random.split(jax.random.key(seed), 3)
        self.teacher = eqx.nn.inference_mode(
            BertForSequenceClassification(config, key=k_teacher, compute_dtype=compute_dtype)
        )
        # Inference mode is the package's `dropout: false` (experiment.py): every dropout is skipped.
        student = eqx.nn.inference_mode(student_from_teacher(self.teacher, key=k_student))
        if student.config.n_layers != size.student_layers:
            raise ValueError(f"{size}: init gives {student.config.n_layers} student layers")
        self.optimizer, _ = make_optimizer(LEARNING_RATE, WEIGHT_DECAY, WARMUP_RATIO, total_steps)
        self.losses = Objective([CE(ALPHA_CE), KL(ALPHA_KL, temperature=TEMPERATURE), Cos(ALPHA_COS)])
        self.state = init_state(student, self.optimizer, key=k_state)
        jax.block_until_ready(self.state)

    def step(self, batch) -> float:
        """One optimizer step on a host (numpy) ``data.Batch``, waited for; returns the loss."""
        import jax

        from distilbert_eqx.train import train_step

        self.state, metrics = train_step(self.teacher, self.state, batch, self.optimizer, self.losses)
        jax.block_until_ready((self.state, metrics))
        return float(metrics.loss)

    @staticmethod
    def num_traces() -> int:
        """How many times ``train_step`` has been traced (compiled) in this process."""
        import equinox as eqx

        from distilbert_eqx.train import train_step

        return eqx.debug.get_num_traces(train_step)


class TorchDistiller:
    """The same step in eager PyTorch ``transformers``: ``BertForSequenceClassification`` teacher in eval
    mode under ``torch.no_grad()``, ``DistilBertForSequenceClassification`` student with dropout 0, the three
    losses as the DistilBERT recipe writes them, ``torch.optim.AdamW`` (no decay on biases and LayerNorms)
    with the same linear warm-up/decay schedule, and ``clip_grad_norm_(1.0)``; ``threads`` intra-op
    threads. On ``device`` ("cpu" or "cuda"); ``dtype="bfloat16"`` runs the forward passes and losses under
    ``torch.autocast`` (parameters, gradients and AdamW stay float32), the usual mixed-precision recipe."""

    def __init__(
        self,
        size: ModelSize,
        total_steps: int,
        threads: int,
        seed: int = 0,
        device: str = "cpu",
        dtype: str = "float32",
    ):
        import contextlib

        import torch
        import transformers

        if device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device gpu: PyTorch sees no CUDA device")
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.torch = torch
        self.device = torch.device(device)
        if dtype == "bfloat16":
            self.autocast = lambda: torch.autocast(device_type=device, dtype=torch.bfloat16)
        elif dtype == "float32":
            self.autocast = contextlib.nullcontext
        else:
            raise ValueError(f"dtype {dtype!r}: expected 'float32' or 'bfloat16'")
        self.teacher = (
            transformers.BertForSequenceClassification(
                transformers.BertConfig(
                    vocab_size=VOCAB_SIZE,
                    hidden_size=size.hidden,
                    num_hidden_layers=size.layers,
                    num_attention_heads=size.heads,
                    intermediate_size=size.intermediate,
                    hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0,
                )
            )
            .to(self.device)
            .eval()
        )
        self.student = (
            transformers.DistilBertForSequenceClassification(
                transformers.DistilBertConfig(
                    vocab_size=VOCAB_SIZE,
                    dim=size.hidden,
                    n_layers=size.student_layers,
                    n_heads=size.heads,
                    hidden_dim=size.intermediate,
                    dropout=0.0,
                    attention_dropout=0.0,
                    seq_classif_dropout=0.0,
                )
            )
            .to(self.device)
            .train()
        )
        decay = [p for p in self.student.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.student.parameters() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
            lr=LEARNING_RATE,
            betas=(0.9, 0.999),
            eps=1e-8,
        )
        warmup = max(int(WARMUP_RATIO * total_steps), 1)

        def schedule(step: int) -> float:
            if step < warmup:
                return step / warmup
            return max(0.0, (total_steps - step) / max(total_steps - warmup, 1))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)

    def step(self, input_ids, attention_mask, token_type_ids, labels) -> float:
        """One optimizer step on numpy arrays of real rows (converted and moved to the device here, as a
        collate function and the training loop would); returns the loss, which waits for the step."""
        torch = self.torch
        ids, mask, types, gold = (
            torch.from_numpy(a).long().to(self.device)
            for a in (input_ids, attention_mask, token_type_ids, labels)
        )
        with self.autocast():
            with torch.no_grad():
                t_out = self.teacher(
                    input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True
                )
            s_out = self.student(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            T = TEMPERATURE
            ce = torch.nn.functional.cross_entropy(s_out.logits, gold)
            s_log_probs = torch.log_softmax(s_out.logits / T, -1)
            t_probs = torch.softmax(t_out.logits / T, -1)
            kl = torch.nn.functional.kl_div(s_log_probs, t_probs, reduction="batchmean")
            tokens = mask.bool()
            s_h, t_h = s_out.hidden_states[-1][tokens], t_out.hidden_states[-1][tokens]
            cos = torch.nn.functional.cosine_embedding_loss(
                s_h, t_h, torch.ones(len(s_h), device=self.device)
            )
            loss = ALPHA_CE * ce + ALPHA_KL * T * T * kl + ALPHA_COS * cos
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())


def synthetic_batch(batch: int, seq: int, seed: int = 0) -> dict[str, Any]:
    """The fields of a full ``batch x seq`` ``data.Batch`` of random tokens: every position real, every row
    weight 1. A plain dict, so that the PyTorch child need not import the package (and with it jax)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, VOCAB_SIZE, size=(batch, seq), dtype=np.int32)
    ids[:, 0] = 101  # [CLS]
    return {
        "input_ids": ids,
        "attention_mask": np.ones((batch, seq), np.bool_),
        "token_type_ids": np.zeros((batch, seq), np.int32),
        "labels": rng.integers(0, 2, size=batch, dtype=np.int32),
        "weights": np.ones(batch, np.float32),
    }
