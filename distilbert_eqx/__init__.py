"""distilbert-eqx: knowledge distillation of BERT into DistilBERT in JAX/Equinox.

The public API, in the order a distillation uses it:

- models: `from_pretrained` / `save_pretrained` (Hugging Face folders), `BertForSequenceClassification`,
  `DistilBertForSequenceClassification` (both `AbstractSequenceClassifier`);
- students: `student_from_teacher` (chosen teacher layers) or `random_student` (any shape);
- the objective: `Objective` of loss terms from `terms` (``terms.CE``, ``terms.KL``, ``terms.Cos``,
  ``terms.Hidden``, ``terms.AttentionScores``, ``terms.AttentionKL``, ``terms.ValueRelation``, ``terms.PKD``);
- the optimizer: `make_optimizer` (AdamW, warm-up then linear decay, clipping), `init_state` (a `TrainState`);
- data: `load_tokenizer`, `load_text_split` (SST-2), `sentence_batches` (padded `Batch`es from sentences,
  or packed several to a row with `PackingSettings`);
- steps: `train_step` (jitted; it donates the state, so use the state it returns: the one passed in, and the
  student it was built from, are deleted), `eval_step`, `evaluate` (accuracy over batches);
- `fit`: the scripts' fit loop over a list of batches (on a copy of the student), returning the trained
  students and the metrics.

The README's "Python API" section is a complete distillation with these names.
"""

from .api import FitResult, fit, sentence_batches
from .batch import Batch
from .data import load_text_split, load_tokenizer
from .distill import AbstractTerm, Objective, terms
from .hf import CheckpointError, from_pretrained, save_pretrained
from .init import random_student, student_from_teacher
from .loop import evaluate
from .models import (
    AbstractSequenceClassifier,
    BertConfig,
    BertForSequenceClassification,
    ClassifierOutput,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)
from .packing import PackingSettings
from .train import TrainState, eval_step, init_state, make_optimizer, train_step

__all__ = [
    "AbstractSequenceClassifier",
    "AbstractTerm",
    "Batch",
    "BertConfig",
    "BertForSequenceClassification",
    "CheckpointError",
    "ClassifierOutput",
    "DistilBertConfig",
    "DistilBertForSequenceClassification",
    "FitResult",
    "Objective",
    "PackingSettings",
    "TrainState",
    "eval_step",
    "evaluate",
    "fit",
    "from_pretrained",
    "init_state",
    "load_text_split",
    "load_tokenizer",
    "make_optimizer",
    "random_student",
    "save_pretrained",
    "sentence_batches",
    "student_from_teacher",
    "terms",
    "train_step",
]
