"""BERT and DistilBERT sequence classifiers as per-example Equinox modules."""

from .bert import BertConfig, BertForSequenceClassification
from .classifier import AbstractSequenceClassifier, ClassifierOutput
from .distilbert import DistilBertConfig, DistilBertForSequenceClassification

__all__ = [
    "AbstractSequenceClassifier",
    "BertConfig",
    "BertForSequenceClassification",
    "ClassifierOutput",
    "DistilBertConfig",
    "DistilBertForSequenceClassification",
]
