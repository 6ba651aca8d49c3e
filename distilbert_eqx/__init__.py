"""distilbert-eqx: knowledge distillation of BERT into DistilBERT in JAX/Equinox."""

from .hf import CheckpointError, from_pretrained, save_pretrained
from .models import (
    AbstractSequenceClassifier,
    BertConfig,
    BertForSequenceClassification,
    ClassifierOutput,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

__all__ = [
    "AbstractSequenceClassifier",
    "BertConfig",
    "BertForSequenceClassification",
    "CheckpointError",
    "ClassifierOutput",
    "DistilBertConfig",
    "DistilBertForSequenceClassification",
    "from_pretrained",
    "save_pretrained",
]
