"""GLUE metrics with scikit-learn and scipy (the `evaluate` package fetches metric code from the hub and fails offline)."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """`names` picks from accuracy, f1 (binary, positive class 1), mcc; values as percentages like the paper."""
    out = {}
    if "accuracy" in names:
        out["accuracy"] = 100 * accuracy_score(labels, predictions)
    if "f1" in names:
        out["f1"] = 100 * f1_score(labels, predictions)
    if "mcc" in names:
        out["mcc"] = 100 * matthews_corrcoef(labels, predictions)
    return out


def regression_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    if np.std(predictions) == 0:  # a constant predictor has no correlation; scipy would warn and give nan
        return {"pearson": 0.0, "spearman": 0.0}
    return {"pearson": 100 * pearsonr(predictions, labels)[0], "spearman": 100 * spearmanr(predictions, labels)[0]}
