"""The `evaluate` command: RUN + DATASET split -> metrics with confidence intervals, plots and report.html.

Everything goes to RUN/eval/<dataset>-<split>[-tta<k>]/: metrics.json, predictions.csv, roc.png,
precision_recall.png, calibration.png, score_histograms.png and report.html. A CONTEXT_RUN also reports its image
run's AUC on the same images and the paired patient-bootstrap CI of (context - image-only): metrics.json `context`,
predictions.csv `image_probability`, a section of the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from melanoma.config import EvaluateConfig, atomic_write_text
from melanoma.context.predictor import ContextPredictor
from melanoma.data.prepare import read_manifest
from melanoma.data.split import SPLITS
from melanoma.errors import MelanomaError
from melanoma.evaluation.metrics import (
    auc_confidence_interval,
    binary_metrics,
    calibration,
    check_scorable,
    paired_auc_difference,
    partial_auc_above_tpr,
    roc_band,
    subgroup_aucs,
)
from melanoma.evaluation.plots import plot_calibration, plot_precision_recall, plot_roc, plot_score_histograms
from melanoma.evaluation.report import write_report
from melanoma.inference.predictor import load_predictor
from melanoma.rundir import CONFIG, EVAL

ROC_GRID = np.linspace(0.0, 1.0, 201)


def select_rows(data: Path, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(labelled rows of `split`, the whole manifest); "all" = every labelled row, for an external test set."""
    manifest = read_manifest(data)
    if split == "all":
        rows = manifest
    elif split in SPLITS:
        rows = manifest[manifest["split"] == split]
        if rows.empty:
            raise MelanomaError(f"{data}: the {split} split is empty; run `melanoma split` first")
    else:
        raise MelanomaError(f"--split {split}: expected one of {', '.join(SPLITS)} or all")
    return rows[rows["target"].notna()], manifest


def check_bootstrap(n_bootstrap: int) -> None:
    if n_bootstrap < 0:
        raise MelanomaError(f"--n-bootstrap {n_bootstrap}: must be 0 (no intervals) or more")


def evaluate(config: EvaluateConfig) -> dict:
    """Score the chosen split and save metrics, plots and the report; returns the metrics plus `out`."""
    check_bootstrap(config.n_bootstrap)
    rows, manifest = select_rows(Path(config.data), config.split)
    predictor = load_predictor(config.run, tta=config.tta)
    loader = {"batch_size": config.batch_size, "num_workers": config.num_workers}
    image_scores = None
    if isinstance(predictor, ContextPredictor):
        scores, image_scores = predictor.predict_prepared_both(Path(config.data), rows, manifest, **loader)
    else:
        scores = predictor.predict_prepared(Path(config.data), rows, manifest, **loader)
    targets = rows["target"].to_numpy(dtype=float)
    groups = rows["patient_id"].to_numpy()
    probabilities = predictor.scores_are_probabilities
    point = binary_metrics(targets, scores, f"{config.data} ({config.split})", probabilities)
    metrics = {"auc": point.pop("auc")}
    metrics |= auc_confidence_interval(targets, scores, groups, config.n_bootstrap, config.seed)
    metrics |= point
    metrics |= {
        "calibration": calibration(targets, scores) if probabilities else None,
        "patients": int(rows["patient_id"].nunique()),
        "patients_with_melanoma": int(rows.loc[rows["target"] == 1, "patient_id"].nunique()),
        "sources": {str(k): int(v) for k, v in rows["source"].value_counts().sort_index().items()},
        "subgroups": subgroup_aucs(rows, targets, scores, config.n_bootstrap, config.seed),
        "split": config.split,
        "tta": config.tta,
        "scores": "probability" if probabilities else "rank",
        "data": str(Path(config.data).resolve()),
        "run": str(Path(config.run).resolve()),
    }
    if image_scores is not None:
        metrics["context"] = context_comparison(targets, scores, image_scores, groups, config.n_bootstrap, config.seed)
        metrics["context"] |= {
            "image_run": str(predictor.spec.image_run),
            "stage": predictor.spec.stage,
            "fit_on": predictor.spec.fit_on,
            "in_sample": predictor.fitted_on(Path(config.data), config.split),
        }

    suffix = f"-tta{config.tta}" if config.tta > 1 else ""
    out = Path(config.run) / EVAL / f"{Path(config.data).resolve().name}-{config.split}{suffix}"
    out.mkdir(parents=True, exist_ok=True)
    predictions = rows[["image_name", "patient_id", "target"]].astype({"target": int}).assign(probability=scores)
    if image_scores is not None:
        predictions["image_probability"] = image_scores
    atomic_write_text(out / "predictions.csv", predictions.to_csv(index=False))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    plots = _plot(targets, scores, groups, metrics, config, out)
    write_report(out / "report.html", metrics, plots, (Path(config.run) / CONFIG).read_text())
    metrics["out"] = str(out)
    return metrics


def context_comparison(
    targets: np.ndarray, context: np.ndarray, image: np.ndarray, groups: np.ndarray, n_bootstrap: int, seed: int
) -> dict:
    """The image-only AUC on the same images and the context - image-only difference with a paired interval: both
    scores on the same patient resamples (compare's paired bootstrap, and the draws of the context AUC's own CI)."""
    check_scorable(targets, image, "image-only scores")
    paired = paired_auc_difference(targets, context, image, groups, n_bootstrap, seed)
    return {
        "image_auc": paired["auc_b"],
        "image_auc_ci": paired["auc_b_ci"],
        "image_partial_auc_above_80_tpr": partial_auc_above_tpr(targets, image),
        "auc_difference": paired["auc_difference"],
        "auc_difference_ci": paired["auc_difference_ci"],
        "bootstrap_unit": "patient (paired)",
    }


def _plot(
    targets: np.ndarray, scores: np.ndarray, groups: np.ndarray, metrics: dict, config: EvaluateConfig, out: Path
) -> list[tuple[Path, str, str]]:
    """Write the PNGs; returns (path, alt text, caption) for the report."""
    where = f"{config.split} split"
    band = roc_band(targets, scores, groups, config.n_bootstrap, config.seed, ROC_GRID)
    auc_text = f"AUC {metrics['auc']:.3f}"
    if metrics["auc_ci"]:
        auc_text += f" [{metrics['auc_ci'][0]:.3f}, {metrics['auc_ci'][1]:.3f}]"
    points = metrics["operating_points"]
    plot_roc(
        targets, scores, out / "roc.png", f"ROC, {where} ({auc_text})", (ROC_GRID, *band) if band else None, points
    )
    plot_precision_recall(targets, scores, out / "precision_recall.png", f"Precision-recall, {where}")
    plot_score_histograms(targets, scores, out / "score_histograms.png", f"Scores by class, {where}", points)
    plots = [
        (
            out / "roc.png",
            "ROC curve",
            "ROC curve with the 95% pointwise band of sensitivity from the patient bootstrap; markers are the "
            "operating points (sensitivity / specificity).",
        ),
        (
            out / "precision_recall.png",
            "Precision-recall curve",
            "Precision (positive predictive value) against sensitivity; the dashed line is the prevalence.",
        ),
        (
            out / "score_histograms.png",
            "Score histograms",
            "Scores of other lesions (top) and melanomas (bottom); dashed lines are the operating points' thresholds.",
        ),
    ]
    if metrics["calibration"] is not None:
        plot_calibration(metrics["calibration"], out / "calibration.png", f"Calibration, {where}")
        plots.insert(
            2,
            (
                out / "calibration.png",
                "Calibration curve",
                "Observed fraction of melanoma against mean predicted probability, in 10 bins of equal image "
                "count; on the diagonal a probability of 0.3 means 30% are melanoma.",
            ),
        )
    return plots
