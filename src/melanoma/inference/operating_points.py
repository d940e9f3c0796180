"""What a single probability means at the run's calibrated operating points, read from its `evaluate` outputs.

`evaluate` stores, per split, thresholds that reach 90%/95% sensitivity or specificity (evaluation/metrics.py).
A threshold is only meaningful on the split it was chosen on, so the source (split, dataset, image counts) is
always reported with it. The validation split is preferred: thresholds picked on the test split would make that
split's numbers optimistic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from melanoma.rundir import EVAL

NO_OPERATING_POINT = (
    "No calibrated operating point is available: the run has no `melanoma evaluate` results, so this probability "
    "cannot be placed against a sensitivity or specificity threshold."
)


@dataclass
class OperatingPoint:
    name: str  # e.g. specificity_at_95_sensitivity
    label: str  # e.g. 95%-sensitivity threshold
    threshold: float
    sensitivity: float
    specificity: float

    def meaning(self, probability: float) -> dict:
        """Whether `probability` reaches this threshold, and what the threshold did on its evaluation split."""
        above = probability >= self.threshold
        side = "At or above" if above else "Below"
        text = (
            f"{side} the {self.label} ({self.threshold:.4g}); on its evaluation split this threshold flagged "
            f"{self.sensitivity:.0%} of melanomas (sensitivity) and left {self.specificity:.0%} of other lesions "
            "unflagged (specificity)."
        )
        return {
            "name": self.name,
            "label": self.label,
            "threshold": self.threshold,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "above": bool(above),
            "text": text,
        }


@dataclass
class OperatingPoints:
    """The thresholds of one evaluation, with where they come from."""

    points: list[OperatingPoint]  # by threshold, lowest (most sensitive) first
    split: str
    dataset: str
    images: int
    melanomas: int
    tta: int
    source: Path  # the metrics.json they were read from

    @property
    def description(self) -> str:
        tta = f", TTA {self.tta}" if self.tta > 1 else ""
        return (
            f"thresholds from the evaluation of the {self.split} split of {self.dataset} ({self.images} images, "
            f"{self.melanomas} melanomas{tta})"
        )

    def meaning(self, probability: float) -> dict:
        """A one-line summary plus one statement per threshold, for the page and the JSON API."""
        statements = [point.meaning(probability) for point in self.points]
        reached = [point for point in self.points if probability >= point.threshold]
        if reached:
            strictest = reached[-1]
            summary = f"Above the {strictest.label} ({strictest.threshold:.4g})."
        else:
            summary = f"Below every calibrated threshold (the lowest is the {self.points[0].label}, "
            summary += f"{self.points[0].threshold:.4g})."
        return {"available": True, "source": self.description, "summary": summary, "points": statements}


def _label(name: str) -> str:
    """'specificity_at_95_sensitivity' -> '95%-sensitivity threshold'"""
    _, _, rest = name.partition("_at_")
    target, _, fixed = rest.partition("_")
    return f"{target}%-{fixed} threshold"


def _read(path: Path) -> OperatingPoints | None:
    try:
        metrics = json.loads(path.read_text())
        if metrics.get("scores", "probability") != "probability":
            return None  # a rank ensemble's thresholds are not on the probability scale
        points = [
            OperatingPoint(name, _label(name), float(p["threshold"]), float(p["sensitivity"]), float(p["specificity"]))
            for name, p in metrics["operating_points"].items()
            if p.get("threshold") is not None
        ]
        if not points:
            return None
        return OperatingPoints(
            points=sorted(points, key=lambda p: p.threshold),
            split=str(metrics.get("split", "?")),
            dataset=Path(str(metrics.get("data", path.parent.name))).name,
            images=int(metrics.get("images", 0)),
            melanomas=int(metrics.get("melanomas", 0)),
            tta=int(metrics.get("tta", 1)),
            source=path,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # an unreadable or older metrics file is skipped, not fatal for serving


def find_operating_points(run_dir: Path) -> OperatingPoints | None:
    """The run's operating points: from a validation-split evaluation if there is one, else the most recent;
    among those, one without TTA (which is how single images are scored here), then the newest. None if none."""
    found = []
    for path in sorted((Path(run_dir) / EVAL).glob("*/metrics.json")):
        points = _read(path)
        if points is not None:
            found.append((points.split == "val", points.tta == 1, path.stat().st_mtime, points))
    if not found:
        return None
    return max(found, key=lambda item: item[:3])[3]


def describe(points: OperatingPoints | None, probability: float) -> dict:
    """The operating-point meaning of `probability`, or a plain statement that none is available."""
    if points is None:
        return {"available": False, "source": None, "summary": NO_OPERATING_POINT, "points": []}
    return points.meaning(probability)
