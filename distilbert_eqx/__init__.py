"""distilbert-eqx: knowledge distillation of BERT into DistilBERT in JAX/Equinox."""

from .hf import CheckpointError, from_pretrained, save_pretrained
from .models import (
    BertConfig,
    BertForSequenceClassification,
    ClassifierOutput,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    SequenceClassifier,
)

__all__ = [
    "BertConfig",
    "BertForSequenceClassification",
    "CheckpointError",
    "ClassifierOutput",
    "DistilBertConfig",
    "DistilBertForSequenceClassification",
    "SequenceClassifier",
    "from_pretrained",
    "save_pretrained",
]
