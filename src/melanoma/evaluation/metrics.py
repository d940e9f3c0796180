"""Metrics from scikit-learn, with a clear message instead of a silent 0.5 for degenerate inputs.

A single AUC on a hundred melanomas is noise, so the AUC comes with a confidence interval from a bootstrap that
resamples patients (their images are correlated), and the clinically relevant numbers are reported beside it:
the ISIC 2024 partial AUC, sensitivity/specificity at fixed operating points with their thresholds, average
precision, calibration, and the AUC by anatomic site, sex and age band.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import auc, average_precision_score, brier_score_loss, roc_auc_score, roc_curve

from melanoma.data.metadata import SEXES, SITES
from melanoma.errors import MelanomaError

MIN_TPR = 0.8  # the ISIC 2024 challenge scored the area above 80% sensitivity
OPERATING_TARGETS = (0.90, 0.95)
AGE_BANDS = (("<30", 30), ("30-44", 45), ("45-59", 60), ("60-74", 75), ("75+", np.inf))
MISSING = "missing"
_CHUNK_CELLS = 2_000_000  # bootstrap weights held in memory at once (resamples x images)


def check_scorable(targets: np.ndarray, scores: np.ndarray, what: str) -> None:
    """An AUC needs finite scores and both classes."""
    if len(targets) == 0:
        raise MelanomaError(f"{what}: no labelled images to evaluate")
    if not np.isfinite(scores).all():
        raise MelanomaError(f"{what}: {int((~np.isfinite(scores)).sum())} scores are NaN or infinite")
    classes = set(np.unique(targets).tolist())
    if classes != {0.0, 1.0}:
        if classes <= {0.0, 1.0}:
            only = "melanoma" if classes == {1.0} else "non-melanoma"
            raise MelanomaError(f"{what}: only {only} images ({len(targets)}); an AUC needs both classes")
        raise MelanomaError(f"{what}: targets must be 0 or 1, found {sorted(classes - {0.0, 1.0})[:3]}")


def binary_metrics(
    targets: np.ndarray, scores: np.ndarray, what: str = "evaluation", probabilities: bool = True
) -> dict:
    """The point metrics for melanoma (1) vs not (0); a Brier score only for probabilities (scores in 0-1)."""
    targets = np.asarray(targets, dtype=float)
    scores = np.asarray(scores, dtype=float)
    check_scorable(targets, scores, what)
    probabilities = probabilities and bool(((scores >= 0) & (scores <= 1)).all())
    return {
        "images": int(len(targets)),
        "melanomas": int(targets.sum()),
        "prevalence": float(targets.mean()),
        "auc": float(roc_auc_score(targets, scores)),
        "partial_auc_above_80_tpr": partial_auc_above_tpr(targets, scores),
        "average_precision": float(average_precision_score(targets, scores)),
        "brier": float(brier_score_loss(targets, scores)) if probabilities else None,
        "operating_points": operating_points(targets, scores),
    }


def partial_auc_above_tpr(targets: np.ndarray, scores: np.ndarray, min_tpr: float = MIN_TPR) -> float:
    """The ISIC 2024 challenge's partial AUC: the ROC area above `min_tpr` sensitivity, from 0 to 1 - min_tpr.

    Computed as the official Kaggle scorer does: flip labels and scores so that the high-sensitivity region
    becomes the low-FPR region, cut that ROC at FPR = 1 - min_tpr with a linearly interpolated end point, and
    take the trapezoidal area. (scikit-learn's `max_fpr` is McClish-standardised, a different number.) Scores
    are negated rather than subtracted from 1, which orders them identically without merging tiny values.
    """
    max_fpr = abs(1 - min_tpr)
    fpr, tpr, _ = roc_curve(1 - np.asarray(targets), -np.asarray(scores, dtype=float))
    stop = np.searchsorted(fpr, max_fpr, "right")
    end = np.interp(max_fpr, fpr[stop - 1 : stop + 1], tpr[stop - 1 : stop + 1])
    return float(auc(np.append(fpr[:stop], max_fpr), np.append(tpr[:stop], end)))


def operating_points(targets: np.ndarray, scores: np.ndarray) -> dict[str, dict[str, float | None]]:
    """Sensitivity at 90%/95% specificity and specificity at 90%/95% sensitivity, each with its threshold.

    Each point is a real threshold on the scores (call melanoma when score >= threshold) that meets the target,
    the best such one: no interpolation between thresholds, since a clinic can only use a real one. A threshold
    of None means only "call nothing melanoma" meets the target.
    """
    fpr, tpr, thresholds = roc_curve(targets, scores, drop_intermediate=False)
    points: dict[str, dict[str, float | None]] = {}
    tolerance = 1e-12
    for target in OPERATING_TARGETS:
        best = np.flatnonzero(fpr <= 1 - target + tolerance)[-1]  # fpr rises along the curve: the last has most tpr
        points[f"sensitivity_at_{round(target * 100)}_specificity"] = _point(fpr, tpr, thresholds, best)
    for target in OPERATING_TARGETS:
        best = np.flatnonzero(tpr >= target - tolerance)[0]  # the first reaching the sensitivity has least fpr
        points[f"specificity_at_{round(target * 100)}_sensitivity"] = _point(fpr, tpr, thresholds, best)
    return points


def _point(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray, index: int) -> dict[str, float | None]:
    threshold = float(thresholds[index])
    return {
        "sensitivity": float(tpr[index]),
        "specificity": float(1 - fpr[index]),
        "threshold": threshold if np.isfinite(threshold) else None,
    }


def calibration(targets: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> dict[str, list[float] | str]:
    """Observed melanoma fraction against mean predicted probability in bins of equal image count.

    Quantile bins, because with a few percent melanoma most scores are small and equal-width bins would leave
    the upper bins nearly empty.
    """
    observed, predicted = calibration_curve(targets, scores, n_bins=n_bins, strategy="quantile")
    return {"strategy": "quantile", "mean_predicted": predicted.tolist(), "fraction_melanoma": observed.tolist()}


def patient_resamples(groups: np.ndarray, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of (resamples, images) weights: each resample draws patients with replacement, and an image counts
    as often as its patient was drawn, so a patient's correlated images stay together."""
    codes, uniques = pd.factorize(pd.Series(groups))
    n_patients = len(uniques)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(1, len(codes)))
    for start in range(0, n_resamples, chunk):
        drawn = rng.multinomial(n_patients, np.full(n_patients, 1 / n_patients), size=min(chunk, n_resamples - start))
        yield drawn[:, codes].astype(np.float64)


def weighted_aucs(targets: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC for each row of `weights` at once (the Mann-Whitney form, ties counted half); equals scikit-learn's
    roc_auc_score with that row as sample_weight, and NaN where a row leaves only one class."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    positive = targets[order].astype(bool)
    weights = weights[:, order]
    new_value = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    starts = np.flatnonzero(new_value)
    ends = np.r_[starts[1:], len(sorted_scores)]
    group = np.cumsum(new_value) - 1
    negatives_up_to = np.concatenate([np.zeros((len(weights), 1)), np.cumsum(weights * ~positive, axis=1)], axis=1)
    below = negatives_up_to[:, starts[group[positive]]]
    tied = negatives_up_to[:, ends[group[positive]]] - below
    pairs = (weights[:, positive] * (below + 0.5 * tied)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pairs / (weights[:, positive].sum(axis=1) * negatives_up_to[:, -1])


def resampled_aucs(
    targets: np.ndarray, scores: np.ndarray, groups: np.ndarray, n_resamples: int, seed: int
) -> np.ndarray:
    """(resamples, models) AUCs of each row of `scores` (models, images) on the same patient resamples: paired."""
    targets = np.asarray(targets, dtype=float)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    chunks = [
        np.stack([weighted_aucs(targets, row, weights) for row in scores], axis=1)
        for weights in patient_resamples(groups, n_resamples, seed)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, len(scores)))


def paired_auc_difference(
    targets: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, groups: np.ndarray, n_resamples: int, seed: int
) -> dict:
    """AUC of A, of B, and of A - B, each with its percentile interval over the same patient resamples (paired: the
    interval of the difference reflects how the two differ on the same lesions, much narrower than two CIs)."""
    resampled = resampled_aucs(targets, np.stack([scores_a, scores_b]), groups, n_resamples, seed)
    auc_a, auc_b = float(roc_auc_score(targets, scores_a)), float(roc_auc_score(targets, scores_b))
    return {
        "auc_a": auc_a,
        "auc_a_ci": percentile_interval(resampled[:, 0]),
        "auc_b": auc_b,
        "auc_b_ci": percentile_interval(resampled[:, 1]),
        "auc_difference": auc_a - auc_b,
        "auc_difference_ci": percentile_interval(resampled[:, 0] - resampled[:, 1]),
        "bootstrap_resamples_used": int(np.isfinite(resampled[:, 0]).sum()),
    }


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float] | None:
    """The percentile bootstrap interval, ignoring resamples that had one class only; None without any."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return None
    tail = (1 - level) / 2 * 100
    return [float(v) for v in np.percentile(values, [tail, 100 - tail])]


def auc_confidence_interval(
    targets: np.ndarray, scores: np.ndarray, groups: np.ndarray, n_resamples: int, seed: int, level: float = 0.95
) -> dict:
    """The AUC's percentile interval over patient resamples, with what produced it (for metrics.json)."""
    aucs = resampled_aucs(targets, scores, groups, n_resamples, seed)[:, 0]
    return {
        "auc_ci": percentile_interval(aucs, level),
        "ci_level": level,
        "n_bootstrap": n_resamples,
        "bootstrap_seed": seed,
        "bootstrap_unit": "patient",
        "bootstrap_resamples_used": int(np.isfinite(aucs).sum()),
    }


def roc_band(
    targets: np.ndarray,
    scores: np.ndarray,
    groups: np.ndarray,
    n_resamples: int,
    seed: int,
    fpr_grid: np.ndarray,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Pointwise percentile band of the sensitivity reachable at each false-positive rate of `fpr_grid`, over the
    same patient resamples as the AUC interval; None when no resample had both classes."""
    targets = np.asarray(targets, dtype=float)
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    sorted_scores = np.asarray(scores, dtype=float)[order]
    positive = targets[order]
    last_of_value = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    curves = []
    for weights in patient_resamples(groups, n_resamples, seed):
        weights = weights[:, order]
        true_pos = np.cumsum(weights * positive, axis=1)[:, last_of_value]
        false_pos = np.cumsum(weights * (1 - positive), axis=1)[:, last_of_value]
        valid = (true_pos[:, -1] > 0) & (false_pos[:, -1] > 0)
        for tp, fp in zip(true_pos[valid], false_pos[valid], strict=True):
            tpr, fpr = np.r_[0.0, tp / tp[-1]], np.r_[0.0, fp / fp[-1]]
            curves.append(tpr[np.searchsorted(fpr, fpr_grid, side="right") - 1])
    if not curves:
        return None
    tail = (1 - level) / 2 * 100
    lower, upper = np.percentile(np.array(curves), [tail, 100 - tail], axis=0)
    return lower, upper


def age_bands(ages: pd.Series) -> pd.Series:
    """Age in 15-year bands (approximate ages, as ISIC records them), 'missing' where unknown."""
    ages = pd.to_numeric(ages, errors="coerce")
    edges = [-np.inf, *(upper for _, upper in AGE_BANDS)]
    bands = pd.cut(ages, bins=edges, labels=[name for name, _ in AGE_BANDS], right=False)
    return bands.astype(object).where(ages.notna(), MISSING)


def subgroup_aucs(
    rows: pd.DataFrame, targets: np.ndarray, scores: np.ndarray, n_resamples: int, seed: int
) -> dict[str, list[dict]]:
    """AUC with its patient-bootstrap interval and counts per anatomic site, sex and age band; the AUC is None
    (shown as n/a) with a note where a subgroup lacks melanoma or non-melanoma images."""
    targets = np.asarray(targets, dtype=float)
    scores = np.asarray(scores, dtype=float)
    columns = {
        "site": (rows["site"].fillna(MISSING).astype(str), [*SITES, MISSING]),
        "sex": (rows["sex"].fillna(MISSING).astype(str), [*SEXES, MISSING]),
        "age": (age_bands(rows["age_approx"]), [*(name for name, _ in AGE_BANDS), MISSING]),
    }
    table: dict[str, list[dict]] = {}
    for column, (values, order) in columns.items():
        values = values.to_numpy()
        present = [level for level in order if (values == level).any()]
        present += sorted(set(values) - set(order))
        table[column] = [
            _subgroup(level, values == level, rows, targets, scores, n_resamples, seed) for level in present
        ]
    return table


def _subgroup(
    level: str,
    mask: np.ndarray,
    rows: pd.DataFrame,
    targets: np.ndarray,
    scores: np.ndarray,
    n_resamples: int,
    seed: int,
) -> dict:
    melanomas = int(targets[mask].sum())
    entry = {
        "group": level,
        "images": int(mask.sum()),
        "melanomas": melanomas,
        "patients": int(rows["patient_id"][mask].nunique()),
        "auc": None,
        "auc_ci": None,
        "note": None,
    }
    if melanomas == 0:
        entry["note"] = "no melanoma"
    elif melanomas == mask.sum():
        entry["note"] = "no non-melanoma"
    else:
        entry["auc"] = float(roc_auc_score(targets[mask], scores[mask]))
        groups = rows["patient_id"].to_numpy()[mask]
        entry["auc_ci"] = percentile_interval(
            resampled_aucs(targets[mask], scores[mask], groups, n_resamples, seed)[:, 0]
        )
    return entry
