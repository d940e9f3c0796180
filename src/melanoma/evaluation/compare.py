"""The `compare` command: two runs (or ensembles) on the same images, the AUC difference with a paired interval.

Paired: every bootstrap resample draws the same patients for both runs, so the interval reflects how the two
models differ on the same lesions, not two independent noises (it is much narrower than comparing two CIs).
"""

from __future__ import annotations

import json
from pathlib import Path

from melanoma.config import CompareConfig, atomic_write_text
from melanoma.evaluation.evaluate import check_bootstrap, select_rows
from melanoma.evaluation.metrics import check_scorable, paired_auc_difference
from melanoma.inference.predictor import load_predictor


def compare(config: CompareConfig) -> dict:
    """AUC of A, of B, and of A - B with percentile intervals over shared patient resamples."""
    check_bootstrap(config.n_bootstrap)
    rows, manifest = select_rows(Path(config.data), config.split)
    predictors = [load_predictor(run, tta=config.tta) for run in (config.run_a, config.run_b)]  # both load first
    targets = rows["target"].to_numpy(dtype=float)
    scores = []
    for run, predictor in zip((config.run_a, config.run_b), predictors, strict=True):
        predicted = predictor.predict_prepared(
            Path(config.data), rows, manifest, batch_size=config.batch_size, num_workers=config.num_workers
        )
        check_scorable(targets, predicted, f"{run} on {config.data} ({config.split})")
        scores.append(predicted)
    groups = rows["patient_id"].to_numpy()
    result = {
        "run_a": str(Path(config.run_a).resolve()),
        "run_b": str(Path(config.run_b).resolve()),
        **paired_auc_difference(targets, *scores, groups, config.n_bootstrap, config.seed),
        "ci_level": 0.95,
        "n_bootstrap": config.n_bootstrap,
        "bootstrap_seed": config.seed,
        "bootstrap_unit": "patient (paired)",
        "images": int(len(targets)),
        "melanomas": int(targets.sum()),
        "patients": int(rows["patient_id"].nunique()),
        "split": config.split,
        "tta": config.tta,
        "data": str(Path(config.data).resolve()),
    }
    if config.out is not None:
        atomic_write_text(Path(config.out), json.dumps(result, indent=2))
    return result
