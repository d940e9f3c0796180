"""The `evaluate` command: RUN + DATASET split -> AUC, metrics.json, predictions.csv and roc.png in RUN/eval/."""

from __future__ import annotations

import json
from pathlib import Path

from melanoma.config import EvaluateConfig, atomic_write_text
from melanoma.data.prepare import read_manifest
from melanoma.data.split import SPLITS
from melanoma.errors import MelanomaError
from melanoma.evaluation.metrics import binary_metrics
from melanoma.evaluation.plots import plot_roc
from melanoma.inference.predictor import Predictor
from melanoma.rundir import EVAL


def evaluate(config: EvaluateConfig) -> dict:
    """Score the chosen split ("all" = every labelled row, for an external test set) and save the results."""
    manifest = read_manifest(config.data)
    if config.split == "all":
        rows = manifest
    elif config.split in SPLITS:
        rows = manifest[manifest["split"] == config.split]
        if rows.empty:
            raise MelanomaError(f"{config.data}: the {config.split} split is empty; run `melanoma split` first")
    else:
        raise MelanomaError(f"--split {config.split}: expected one of {', '.join(SPLITS)} or all")
    rows = rows[rows["target"].notna()]
    what = f"{config.data} ({config.split})"
    predictor = Predictor.from_run(config.run)
    scores = predictor.predict_prepared(
        Path(config.data), rows, manifest, batch_size=config.batch_size, num_workers=config.num_workers
    )
    targets = rows["target"].to_numpy(dtype=float)
    metrics = binary_metrics(targets, scores, what)
    metrics |= {
        "patients": int(rows["patient_id"].nunique()),
        "split": config.split,
        "data": str(Path(config.data).resolve()),
        "run": str(Path(config.run).resolve()),
    }

    out = Path(config.run) / EVAL / f"{Path(config.data).resolve().name}-{config.split}"
    out.mkdir(parents=True, exist_ok=True)
    predictions = rows[["image_name", "patient_id", "target"]].astype({"target": int}).assign(probability=scores)
    atomic_write_text(out / "predictions.csv", predictions.to_csv(index=False))
    plot_roc(targets, scores, out / "roc.png", f"ROC, {config.split} split (AUC {metrics['auc']:.3f})")
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    metrics["out"] = str(out)
    return metrics
