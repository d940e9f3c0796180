"""Plots as PNG files (matplotlib without a display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import RocCurveDisplay  # noqa: E402


def plot_roc(targets: np.ndarray, scores: np.ndarray, path: Path, title: str) -> None:
    figure, axes = plt.subplots(figsize=(5, 5), dpi=120)
    RocCurveDisplay.from_predictions(targets, scores, ax=axes, name="model", plot_chance_level=True)
    axes.set_title(title)
    figure.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    figure.savefig(tmp)
    plt.close(figure)
    tmp.replace(path)
