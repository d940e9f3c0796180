"""Metrics from scikit-learn, with a clear message instead of a silent 0.5 for degenerate inputs."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from melanoma.errors import MelanomaError


def check_scorable(targets: np.ndarray, scores: np.ndarray, what: str) -> None:
    """An AUC needs finite scores and both classes."""
    if len(targets) == 0:
        raise MelanomaError(f"{what}: no labelled images to evaluate")
    if not np.isfinite(scores).all():
        raise MelanomaError(f"{what}: {int((~np.isfinite(scores)).sum())} scores are NaN or infinite")
    classes = set(np.unique(targets).tolist())
    if classes != {0.0, 1.0}:
        only = "melanoma" if classes == {1.0} else "non-melanoma"
        raise MelanomaError(f"{what}: only {only} images ({len(targets)}); an AUC needs both classes")


def binary_metrics(targets: np.ndarray, scores: np.ndarray, what: str = "evaluation") -> dict[str, float | int]:
    """ROC AUC and counts for melanoma (1) vs not (0)."""
    targets = np.asarray(targets, dtype=float)
    scores = np.asarray(scores, dtype=float)
    check_scorable(targets, scores, what)
    return {
        "auc": float(roc_auc_score(targets, scores)),
        "images": int(len(targets)),
        "melanomas": int(targets.sum()),
    }
