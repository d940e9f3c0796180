"""Plots as PNG files (matplotlib without a display), each written to a temporary file and renamed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay  # noqa: E402

MELANOMA_COLOUR = "#c0392b"
OTHER_COLOUR = "#2e86c1"
POINT_STYLES = (("o", "C1"), ("s", "C2"), ("^", "C3"), ("D", "C4"))  # marker and colour per operating point


def _save(figure: Figure, path: Path) -> None:
    figure.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    figure.savefig(tmp)
    plt.close(figure)
    tmp.replace(path)


def _label(name: str) -> str:
    """'sensitivity_at_90_specificity' -> 'sens. at 90% spec.'"""
    measured, _, rest = name.partition("_at_")
    target, _, fixed = rest.partition("_")
    return f"{measured[:4]}. at {target}% {fixed[:4]}."


def plot_roc(
    targets: np.ndarray,
    scores: np.ndarray,
    path: Path,
    title: str,
    band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    points: dict[str, dict] | None = None,
) -> None:
    """The ROC curve; `band` = (fpr grid, lower, upper) sensitivity bounds; `points` = operating points to mark."""
    figure, axes = plt.subplots(figsize=(5.5, 5.5), dpi=120)
    RocCurveDisplay.from_predictions(targets, scores, ax=axes, name="model", plot_chance_level=True)
    if band is not None:
        grid, lower, upper = band
        axes.fill_between(grid, lower, upper, step="post", alpha=0.25, label="95% CI (patient bootstrap)")
    for (name, point), (marker, colour) in zip((points or {}).items(), POINT_STYLES, strict=False):
        axes.plot(
            1 - point["specificity"],
            point["sensitivity"],
            marker=marker,
            color=colour,
            linestyle="none",
            markersize=7,
            markerfacecolor="none",
            markeredgewidth=1.5,
            label=f"{_label(name)}: {point['sensitivity']:.2f} / {point['specificity']:.2f}",
        )
    axes.set_xlabel("1 - specificity (false-positive rate)")
    axes.set_ylabel("sensitivity (true-positive rate)")
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize=7)
    _save(figure, path)


def plot_precision_recall(targets: np.ndarray, scores: np.ndarray, path: Path, title: str) -> None:
    """Precision (positive predictive value) against recall (sensitivity), with the prevalence as chance level."""
    figure, axes = plt.subplots(figsize=(5.5, 5.5), dpi=120)
    PrecisionRecallDisplay.from_predictions(targets, scores, ax=axes, name="model", plot_chance_level=True)
    axes.set_xlabel("recall (sensitivity)")
    axes.set_ylabel("precision (positive predictive value)")
    axes.set_ylim(0, 1.02)
    axes.set_title(title)
    axes.legend(loc="upper right", fontsize=8)
    _save(figure, path)


def plot_calibration(curve: dict, path: Path, title: str) -> None:
    """Observed melanoma fraction against mean predicted probability (from metrics.calibration)."""
    figure, axes = plt.subplots(figsize=(5.5, 5.5), dpi=120)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    axes.plot(curve["mean_predicted"], curve["fraction_melanoma"], marker="o", label="model (bins of equal size)")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("mean predicted probability")
    axes.set_ylabel("fraction that are melanoma")
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize=8)
    _save(figure, path)


def plot_score_histograms(
    targets: np.ndarray, scores: np.ndarray, path: Path, title: str, points: dict[str, dict] | None = None
) -> None:
    """Score distributions of other lesions (top) and melanoma (bottom), on separate axes since most benign
    scores pile up near 0, with the operating points' thresholds as vertical lines coloured as on the ROC plot."""
    figure, panels = plt.subplots(2, 1, figsize=(7, 5.5), dpi=120, sharex=True)
    targets = np.asarray(targets).astype(bool)
    bins = np.linspace(min(0.0, float(np.min(scores))), max(1.0, float(np.max(scores))), 41)
    classes = ((~targets, OTHER_COLOUR, "not melanoma"), (targets, MELANOMA_COLOUR, "melanoma"))
    for axes, (mask, colour, name) in zip(panels, classes, strict=True):
        axes.hist(scores[mask], bins=bins, color=colour, alpha=0.75, label=f"{name} ({mask.sum()} images)")
        for (point_name, point), (_, line_colour) in zip((points or {}).items(), POINT_STYLES, strict=False):
            if point["threshold"] is not None:
                label = f"threshold, {_label(point_name)}" if axes is panels[0] else None
                axes.axvline(point["threshold"], color=line_colour, linestyle="--", linewidth=1.5, label=label)
        axes.set_ylabel("images")
        axes.legend(fontsize=7, loc="upper right")
    panels[-1].set_xlabel("score")
    panels[0].set_title(title)
    _save(figure, path)
