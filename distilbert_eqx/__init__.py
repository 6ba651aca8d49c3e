"""distilbert-eqx: knowledge distillation of BERT into DistilBERT in JAX/Equinox."""

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
    "ClassifierOutput",
    "DistilBertConfig",
    "DistilBertForSequenceClassification",
    "SequenceClassifier",
]
