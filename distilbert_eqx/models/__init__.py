"""BERT and DistilBERT sequence classifiers as per-example Equinox modules."""

from .bert import BertConfig, BertForSequenceClassification
from .distilbert import DistilBertConfig, DistilBertForSequenceClassification
from .layers import ClassifierOutput

SequenceClassifier = BertForSequenceClassification | DistilBertForSequenceClassification

__all__ = [
    "BertConfig",
    "BertForSequenceClassification",
    "ClassifierOutput",
    "DistilBertConfig",
    "DistilBertForSequenceClassification",
    "SequenceClassifier",
]
