"""Does patient context help without any image? ISIC 2020 metadata alone, patient-grouped 5-fold CV.

    python bench/context_metadata.py                       # ../shared/data/isic2020-metadata beside the checkout
    python bench/context_metadata.py --csv ISIC_2020_Training_GroundTruth.csv --n-bootstrap 2000

Two HistGradientBoosting models with the context stage's settings, each scored out-of-fold on every image
(StratifiedGroupKFold by patient, so no patient is on both sides): the metadata alone (age, sex, anatomic site with
missing flags), and the metadata plus the patient features that need no image (the patient's image count, the
image's age above the patient's youngest record, how many of the patient's other images share its site). Prints
each AUC with its patient-bootstrap 95% CI and the paired difference. Skips with a message when the CSV is absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from threadpoolctl import threadpool_limits

from bench.common import SHARED_DATA
from melanoma.context.features import METADATA_FEATURES, PATIENT_FEATURES, metadata_features, patient_features
from melanoma.context.stage import HGB_SETTINGS
from melanoma.data.metadata import read_metadata
from melanoma.evaluation.metrics import percentile_interval, resampled_aucs

DEFAULT_CSV = SHARED_DATA / "isic2020-metadata" / "ISIC_2020_Training_GroundTruth.csv"
PATIENT_ONLY = [name for name in PATIENT_FEATURES if name != "single_image"]


def out_of_fold(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's score from the model fitted on the other folds' patients."""
    scores = np.full(len(y), np.nan)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(x, y, groups):
        with threadpool_limits(limits=1, user_api="openmp"):
            model = HistGradientBoostingClassifier(**HGB_SETTINGS, random_state=seed).fit(x[train], y[train])
        scores[test] = model.predict_proba(x[test])[:, 1]
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="ISIC 2020 ground truth (metadata + target)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="patient resamples for the CIs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        print(f"skipped: {args.csv} not found (the ISIC 2020 metadata lives in ../shared/data beside the checkout)")
        return 0

    frame = read_metadata(args.csv).frame
    frame = frame[frame["target"].notna()].reset_index(drop=True)
    y = frame["target"].to_numpy(dtype=int)
    groups = frame["patient_id"].to_numpy()
    metadata, patient = metadata_features(frame), patient_features(frame)
    models = {
        "metadata only": metadata[METADATA_FEATURES],
        "metadata + patient features": metadata[METADATA_FEATURES].join(patient[PATIENT_ONLY]),
        "patient features only": patient[PATIENT_ONLY],
    }
    scores = np.stack([out_of_fold(x.to_numpy(float), y, groups, args.folds, args.seed) for x in models.values()])
    resampled = resampled_aucs(y, scores, groups, args.n_bootstrap, args.seed)

    print(
        f"ISIC 2020 metadata, no images: {len(y)} images, {int(y.sum())} melanomas, {len(set(groups))} patients; "
        f"patient-grouped {args.folds}-fold CV, HistGradientBoosting; 95% CI from {args.n_bootstrap} patient resamples"
    )
    width = max(len(name) for name in models) + 2
    print(f"{'model':<{width}}{'features':>9}{'AUC':>9}  95% CI")
    for index, (name, x) in enumerate(models.items()):
        low, high = percentile_interval(resampled[:, index])
        print(f"{name:<{width}}{x.shape[1]:>9}{roc_auc_score(y, scores[index]):>9.4f}  {low:.4f} to {high:.4f}")
    difference = roc_auc_score(y, scores[1]) - roc_auc_score(y, scores[0])
    low, high = percentile_interval(resampled[:, 1] - resampled[:, 0])
    print(f"{'gain from patient features':<{width}}{'':>9}{difference:>+9.4f}  {low:+.4f} to {high:+.4f} (paired)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
