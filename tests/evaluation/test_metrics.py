"""Every metric on cases small enough to compute by hand, the bootstrap against scikit-learn, and the ISIC scorer."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from melanoma.errors import MelanomaError
from melanoma.evaluation.metrics import (
    age_bands,
    auc_confidence_interval,
    binary_metrics,
    calibration,
    operating_points,
    partial_auc_above_tpr,
    patient_resamples,
    resampled_aucs,
    roc_band,
    subgroup_aucs,
    weighted_aucs,
)

# 10 melanomas, 10 others. Ranked from the top: 8 melanomas, 4 others, 1 melanoma, 4 others, 1 melanoma, 2 others.
HAND_TARGETS = np.array([1] * 10 + [0] * 10)
HAND_SCORES = np.array(
    [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.55, 0.15] + [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
)


def test_point_metrics_on_a_hand_computed_case() -> None:
    metrics = binary_metrics(HAND_TARGETS, HAND_SCORES)
    assert (metrics["images"], metrics["melanomas"], metrics["prevalence"]) == (20, 10, 0.5)
    # pairs won: 8 melanomas x 10 + 0.55 beats 6 + 0.15 beats 2 = 88 of 100
    assert metrics["auc"] == pytest.approx(0.88)
    # the ROC runs along TPR 0.8 up to FPR 0.4, at 0.9 to FPR 0.8, then at 1.0: 0.1 x 0.4 + 0.2 x 0.2
    assert metrics["partial_auc_above_80_tpr"] == pytest.approx(0.08)
    # precision is 1 over the first 8 melanomas, then 9/13 and 10/18 at the last two
    assert metrics["average_precision"] == pytest.approx(0.8 + 0.1 * 9 / 13 + 0.1 * 10 / 18)
    squared_errors = (1 - HAND_SCORES[:10]) ** 2 + HAND_SCORES[10:] ** 2
    assert metrics["brier"] == pytest.approx(squared_errors.sum() / 20)
    assert metrics["brier"] == pytest.approx(3.7979 / 20)


def test_operating_points_are_real_thresholds_meeting_each_target() -> None:
    points = operating_points(HAND_TARGETS, HAND_SCORES)
    assert points == {
        # one false positive (0.9) allowed: the 8 melanomas above it
        "sensitivity_at_90_specificity": {"sensitivity": 0.8, "specificity": 0.9, "threshold": 0.9},
        # none allowed: the same 8, with the threshold at the lowest of them
        "sensitivity_at_95_specificity": {"sensitivity": 0.8, "specificity": 1.0, "threshold": 0.92},
        # 9 melanomas need the threshold at 0.55, which lets 0.9, 0.8, 0.7, 0.6 through
        "specificity_at_90_sensitivity": {"sensitivity": 0.9, "specificity": 0.6, "threshold": 0.55},
        # all 10 need 0.15: 8 others above it
        "specificity_at_95_sensitivity": {"sensitivity": 1.0, "specificity": pytest.approx(0.2), "threshold": 0.15},
    }


def test_an_unreachable_specificity_gives_no_threshold_rather_than_a_fake_one() -> None:
    point = operating_points(np.array([0, 1]), np.array([0.9, 0.1]))["sensitivity_at_95_specificity"]
    assert point == {"sensitivity": 0.0, "specificity": 1.0, "threshold": None}


@pytest.mark.parametrize(
    ("targets", "scores", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 0.2),  # perfect: the whole strip
        ([0, 0, 1, 1], [0.8, 0.9, 0.1, 0.2], 0.0),  # inverted: the ROC reaches TPR 0.8 only at FPR 1
        ([0, 0, 1, 1], [0.5, 0.5, 0.5, 0.5], 0.02),  # all tied: the diagonal, a triangle of 0.2 x 0.2 / 2
    ],
)
def test_partial_auc_extremes(targets, scores, expected) -> None:
    assert partial_auc_above_tpr(np.array(targets), np.array(scores)) == pytest.approx(expected)


def test_brier_is_left_out_for_scores_that_are_not_probabilities() -> None:
    assert binary_metrics(HAND_TARGETS, HAND_SCORES * 3)["brier"] is None
    assert binary_metrics(HAND_TARGETS, HAND_SCORES, probabilities=False)["brier"] is None


@pytest.mark.parametrize(
    ("targets", "scores", "message"),
    [
        ([0, 0, 0], [0.1, 0.2, 0.3], "only non-melanoma images"),
        ([1, 1], [0.1, 0.2], "only melanoma images"),
        ([0, 1], [0.1, np.nan], "1 scores are NaN"),
        ([0, 1], [0.1, np.inf], "1 scores are NaN or infinite"),
        ([0, 2], [0.1, 0.2], "targets must be 0 or 1"),
        ([], [], "no labelled images"),
    ],
)
def test_degenerate_inputs_are_a_message_not_a_number(targets, scores, message) -> None:
    with pytest.raises(MelanomaError, match=message):
        binary_metrics(np.array(targets), np.array(scores), "test.csv")


def test_calibration_bins_hold_equal_numbers_of_images() -> None:
    curve = calibration(np.array([0, 0, 1, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), n_bins=2)
    assert curve["mean_predicted"] == pytest.approx([0.2, 0.8])
    assert curve["fraction_melanoma"] == pytest.approx([1 / 3, 2 / 3])


def test_weighted_aucs_equal_scikit_learn_with_sample_weights() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60) + 0.3 * targets, 1)  # many ties
    weights = rng.integers(0, 4, (20, 60)).astype(float)
    expected = [roc_auc_score(targets, scores, sample_weight=w) for w in weights]
    assert weighted_aucs(targets, scores, weights) == pytest.approx(expected, abs=1e-12)
    only_negatives = np.where(targets == 1, 0.0, 1.0)[None]
    assert np.isnan(weighted_aucs(targets, scores, only_negatives)).all()


def test_patient_resamples_draw_whole_patients() -> None:
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    for weights in patient_resamples(groups, 50, seed=1):
        assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 3] == weights[:, 5]).all()
        assert (weights[:, [0, 2, 3]].sum(axis=1) == 3).all()  # 3 patients drawn each time


def test_the_auc_interval_is_reproducible_and_recorded() -> None:
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 2, 300)
    scores = rng.random(300) + 0.5 * targets
    groups = np.arange(300) // 3
    first = auc_confidence_interval(targets, scores, groups, 500, seed=7)
    assert first == auc_confidence_interval(targets, scores, groups, 500, seed=7)
    assert first["auc_ci"] != auc_confidence_interval(targets, scores, groups, 500, seed=8)["auc_ci"]
    low, high = first["auc_ci"]
    assert low < roc_auc_score(targets, scores) < high
    assert (first["n_bootstrap"], first["bootstrap_seed"], first["bootstrap_unit"]) == (500, 7, "patient")
    assert auc_confidence_interval(targets, scores, groups, 0, seed=7)["auc_ci"] is None


def test_copying_every_image_of_a_patient_does_not_narrow_the_interval() -> None:
    """Resampling patients, not images: duplicated images add no information, so the interval stays the same,
    while an image-level bootstrap would wrongly shrink it."""
    rng = np.random.default_rng(2)
    targets = rng.integers(0, 2, 80)
    scores = rng.random(80) + 0.4 * targets
    patients = np.arange(80)
    single = auc_confidence_interval(targets, scores, patients, 400, seed=0)["auc_ci"]
    doubled = auc_confidence_interval(np.tile(targets, 2), np.tile(scores, 2), np.tile(patients, 2), 400, seed=0)
    assert doubled["auc_ci"] == pytest.approx(single)
    per_image = auc_confidence_interval(np.tile(targets, 2), np.tile(scores, 2), np.arange(160), 400, seed=0)
    assert per_image["auc_ci"][1] - per_image["auc_ci"][0] < 0.8 * (single[1] - single[0])


def test_paired_resamples_give_each_model_the_same_patients() -> None:
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 2, 100)
    a = rng.random(100) + 0.5 * targets
    b = a + rng.normal(0, 0.1, 100)
    groups = np.arange(100) // 2
    aucs = resampled_aucs(targets, np.stack([a, b]), groups, 30, seed=5)
    weights = next(patient_resamples(groups, 30, seed=5))
    for row, w in zip(aucs, weights, strict=True):
        expected = (roc_auc_score(targets, a, sample_weight=w), roc_auc_score(targets, b, sample_weight=w))
        assert row == pytest.approx(expected, abs=1e-12)


def test_the_roc_band_brackets_the_curve() -> None:
    rng = np.random.default_rng(4)
    targets = rng.integers(0, 2, 400)
    scores = rng.random(400) + 0.5 * targets
    grid = np.linspace(0, 1, 51)
    lower, upper = roc_band(targets, scores, np.arange(400), 300, 0, grid)
    fpr, tpr, _ = roc_curve(targets, scores)
    observed = tpr[np.searchsorted(fpr, grid, side="right") - 1]
    assert (lower <= upper).all() and upper[-1] == 1.0
    assert ((lower <= observed + 1e-9) & (observed <= upper + 1e-9)).mean() > 0.9
    assert roc_band(targets, scores, np.arange(400), 0, 0, grid) is None


def test_age_bands() -> None:
    bands = age_bands(pd.Series([5.0, 29.0, 30.0, 44.0, 45.0, 74.0, 75.0, 90.0, np.nan]))
    assert bands.tolist() == ["<30", "<30", "30-44", "30-44", "45-59", "60-74", "75+", "75+", "missing"]


def test_subgroup_aucs_count_and_say_na_without_melanoma() -> None:
    rows = pd.DataFrame(
        {
            "site": ["torso"] * 4 + ["head/neck"] * 2 + [None] * 2,
            "sex": ["male", "female"] * 4,
            "age_approx": [35.0, 35.0, 50.0, 50.0, 80.0, 80.0, np.nan, np.nan],
            "patient_id": ["p1", "p1", "p2", "p3", "p4", "p5", "p6", "p7"],
        }
    )
    targets = np.array([1, 0, 0, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.1, 0.2, 0.15, 0.5, 0.6, 0.4, 0.8])
    table = subgroup_aucs(rows, targets, scores, 200, seed=0)
    site = {g["group"]: g for g in table["site"]}
    assert list(site) == ["head/neck", "torso", "missing"]  # the canonical site order, missing last
    assert site["torso"] | {"auc_ci": None} == {
        "group": "torso",
        "images": 4,
        "melanomas": 2,
        "patients": 3,
        "auc": 0.75,  # 0.9 beats both others, 0.15 beats 0.1 only
        "auc_ci": None,
        "note": None,
    }
    assert site["torso"]["auc_ci"] is not None
    assert (site["head/neck"]["auc"], site["head/neck"]["note"]) == (None, "no melanoma")
    assert site["missing"]["auc"] == 0.0
    assert [g["group"] for g in table["age"]] == ["30-44", "45-59", "75+", "missing"]
    assert [g["group"] for g in table["sex"]] == ["male", "female"]
