"""Assign train / val / test by patient, stratified by melanoma: no patient's lesions on two sides.

Uses scikit-learn's StratifiedGroupKFold: the test split is one fold of round(1 / test_size) folds, and the
validation split one fold of the rest. The assignment is a pure function of the manifest and the seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from melanoma.config import SplitConfig
from melanoma.data.prepare import read_manifest, write_manifest
from melanoma.errors import MelanomaError

SPLITS = ("train", "val", "test")


def split(config: SplitConfig) -> pd.DataFrame:
    """Write the `split` column of DATA/manifest.csv and return the per-split summary."""
    for name, value in (("test-size", config.test_size), ("val-size", config.val_size)):
        if not 0 <= value < 1:
            raise MelanomaError(f"--{name} {value}: must be at least 0 and below 1")
    manifest = read_manifest(config.data)
    labelled = manifest["target"].notna()
    if labelled.sum() == 0:
        raise MelanomaError(f"{config.data}: no row has a target (0/1); nothing to split")
    assignment = pd.Series("", index=manifest.index, dtype=object)
    rest = manifest.index[labelled]
    assignment[rest] = "train"
    test = _one_fold(manifest.loc[rest], config.test_size, config.seed, "test-size")
    assignment[test] = "test"
    rest = rest.difference(test)
    val = _one_fold(manifest.loc[rest], config.val_size, config.seed + 1, "val-size")
    assignment[val] = "val"
    manifest["split"] = assignment
    write_manifest(config.data, manifest)
    if (~labelled).any():
        print(f"{int((~labelled).sum())} rows without a target are left out of every split")
    return summarize(manifest)


def _one_fold(frame: pd.DataFrame, fraction: float, seed: int, option: str) -> pd.Index:
    """The rows of one StratifiedGroupKFold fold holding about `fraction` of `frame`."""
    if fraction == 0:
        return pd.Index([])
    n_splits = max(2, round(1 / fraction))
    n_groups = frame["patient_id"].nunique()
    if n_groups < n_splits:
        raise MelanomaError(f"--{option} {fraction}: needs at least {n_splits} patients, the data has {n_groups}")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held_out = next(folds.split(np.zeros(len(frame)), frame["target"].astype(int), frame["patient_id"]))
    return frame.index[held_out]


def summarize(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images, patients and melanomas per split."""
    rows = []
    for name in [*SPLITS, ""]:
        part = manifest[manifest["split"] == name]
        if name == "" and part.empty:
            continue
        rows.append(
            {
                "split": name or "(none)",
                "images": len(part),
                "patients": part["patient_id"].nunique(),
                "melanomas": int((part["target"] == 1).sum()),
            }
        )
    return pd.DataFrame(rows).set_index("split")
