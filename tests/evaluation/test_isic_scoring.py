"""AUC and partial AUC agree with the official ISIC challenge scorer (`isic-challenge-scoring`, a dev extra).

Its `auc_above_sensitivity` includes the strip under 80% sensitivity, so the ISIC 2024 partial AUC is
auc_above_sensitivity - 0.8 * (1 - FPR where the ROC reaches TPR 0.8).
"""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from melanoma.evaluation.metrics import binary_metrics, partial_auc_above_tpr

isic = pytest.importorskip("isic_challenge_scoring.metrics")


def official(targets: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(AUC, ISIC 2024 partial AUC above 80% TPR) from the official package."""
    truth, prediction = pd.Series(targets, dtype=float), pd.Series(scores, dtype=float)
    weights = pd.Series(np.ones(len(targets)))
    fpr, tpr, _ = roc_curve(targets, scores, drop_intermediate=False)
    reach = np.searchsorted(tpr, 0.8, side="left")  # the ROC as a polyline first reaches TPR 0.8 on this segment
    fpr_at_80 = np.interp(0.8, tpr[reach - 1 : reach + 1], fpr[reach - 1 : reach + 1])
    above = isic.auc_above_sensitivity(truth, prediction, weights, 0.8)
    return isic.auc(truth, prediction, weights), above - 0.8 * (1 - fpr_at_80)


HAND_MADE = [
    ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]),
    ([0, 0, 1, 1], [0.8, 0.9, 0.1, 0.2]),
    ([0, 0, 1, 1], [0.5, 0.5, 0.5, 0.5]),
    ([0, 1, 0, 1, 0, 1, 1, 1, 1, 0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]),
    ([1] * 10 + [0] * 10, [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.55, 0.15, *np.linspace(0.9, 0.05, 10)]),
    ([1, 1, 1, 1, 1, 0, 0], [0.3, 0.3, 0.3, 0.3, 0.9, 0.3, 0.1]),  # exactly 80% of melanomas at one tied score
]


@pytest.mark.parametrize(("targets", "scores"), HAND_MADE)
def test_hand_made_cases_match_the_official_scorer(targets, scores) -> None:
    targets, scores = np.array(targets), np.array(scores)
    auc, partial = official(targets, scores)
    metrics = binary_metrics(targets, scores)
    assert metrics["auc"] == pytest.approx(auc, abs=1e-12)
    assert metrics["partial_auc_above_80_tpr"] == pytest.approx(partial, abs=1e-9)


def test_random_cases_match_the_official_scorer() -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        size = int(rng.integers(5, 400))
        targets = (rng.random(size) < rng.uniform(0.05, 0.6)).astype(int)
        if targets.min() == targets.max():
            continue
        scores = rng.random(size) + targets * rng.uniform(0, 1)
        scores = np.round(scores, int(rng.integers(1, 5)))  # ties at every resolution
        auc, partial = official(targets, scores)
        assert binary_metrics(targets, scores)["auc"] == pytest.approx(auc, abs=1e-12)
        assert partial_auc_above_tpr(targets, scores) == pytest.approx(partial, abs=1e-9)
