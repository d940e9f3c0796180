"""The `context fit` command: an image RUN + a dataset -> a CONTEXT_RUN dir (a run that wraps a run).

The stage must learn from image scores that are out-of-sample, as they will be on new patients: scores of the
images the image model was trained on are overconfident, and a stage fitted on them would learn to trust the
image score too much. Two ways to get such scores:

- `--fit-on val` (default): the image run was trained on the train split only (not `--final`), so its scores on
  the val split are out-of-sample; the stage is fitted on the val split.
- `--fit-on oof` (`--oof-folds K`): K image models are trained with the run's own settings on patient-grouped
  folds of the run's training rows (each a normal RUN dir, CONTEXT_RUN/folds/<k>/run, over a copy of the manifest
  in which fold k is held out); every training image is scored by the one model that did not see it.

Either way CONTEXT_RUN/fit_rows.csv records each fitted row with the run that scored it, so anyone can check.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from melanoma import __version__
from melanoma.config import ContextConfig, atomic_write_text, check_same_settings, to_plain, write_yaml
from melanoma.context.features import FEATURES, context_features
from melanoma.context.spec import CONFIG, FIT_ON, FIT_ROWS, FOLDS, read_context
from melanoma.context.stage import STAGES, fit_stage
from melanoma.data.prepare import DATASET_INFO, IMAGES_DIR, read_manifest, write_manifest
from melanoma.errors import MelanomaError
from melanoma.inference.ensemble import read_ensemble
from melanoma.inference.predictor import Predictor
from melanoma.rundir import WEIGHTS, RunConfig, library_versions

# Settings that may differ when a CONTEXT_RUN is fitted again without changing what it holds.
REFIT_DIFFERENCES = {"out", "batch_size", "num_workers"}
FALLBACK = (
    "patients with one image and images without a patient id: the image score, recalibrated by a monotone "
    "logistic map fitted on the same rows (same order as the image score)"
)


def fit_context(config: ContextConfig) -> dict:
    """Fit the stage and write CONTEXT_RUN; returns what was fitted (counts, in-sample AUCs, `out`)."""
    _check_settings(config)
    config = replace(config, run=Path(config.run).resolve(), data=Path(config.data).resolve())  # as saved
    run, data, out = config.run, config.data, Path(config.out)
    image_config = _image_run(run)
    manifest = read_manifest(data)
    _check_out(out, run, config)
    loader = {"batch_size": config.batch_size, "num_workers": config.num_workers}
    if config.fit_on == "val":
        rows, scores, embeddings, scored_by, splits = _score_val(run, image_config, data, manifest, loader)
    else:
        rows, scores, embeddings, scored_by, splits = _score_out_of_fold(image_config, config, manifest, loader)
    table = context_features(rows, scores, embeddings)
    targets = rows["target"].to_numpy(dtype=int)
    stage = fit_stage(config.stage, table, targets, rows["patient_id"].to_numpy(), FEATURES, config.seed)
    context_scores = stage.predict(table)

    out.mkdir(parents=True, exist_ok=True)
    stage.save(out)
    fitted = (
        rows[["image_name", "patient_id", "split", "target"]]
        .reset_index(drop=True)
        .assign(scored_by=scored_by, image_score=scores, context_score=context_scores)
    )
    atomic_write_text(out / FIT_ROWS, pd.concat([fitted, table], axis=1).to_csv(index=False))
    single = table["single_image"].to_numpy() == 1
    result = {
        "images": len(rows),
        "melanomas": int(targets.sum()),
        "patients": int(rows["patient_id"].nunique()),
        "single_image_patients": int(single.sum()),
        "stage_images": int((~single).sum()),
        "in_sample_image_auc": float(roc_auc_score(targets, scores)),
        "in_sample_context_auc": float(roc_auc_score(targets, context_scores)),
        "weights": stage.combine,
    }
    folds = sorted({by for by in scored_by if by != str(run)})
    write_yaml(
        out / CONFIG,
        {
            "context": {
                "image_run": str(run),
                "stage": config.stage,
                "fit_on": config.fit_on,
                "oof_folds": config.oof_folds if config.fit_on == "oof" else None,
                "features": list(FEATURES),
                "fitted_on": {"data": str(data), "splits": splits},
                "fallback": FALLBACK,
                "fold_runs": folds,
            },
            "settings": to_plain(config),
            "result": result,
            "versions": library_versions() | {"melanoma": __version__},
        },
    )
    return result | {"out": str(out), "fit_on": config.fit_on, "stage": config.stage, "splits": splits}


def _check_settings(config: ContextConfig) -> None:
    if config.stage not in STAGES:
        raise MelanomaError(f"--stage {config.stage}: expected {' or '.join(STAGES)}")
    if config.fit_on not in FIT_ON:
        raise MelanomaError(f"--fit-on {config.fit_on}: expected {' or '.join(FIT_ON)}")
    if config.fit_on == "oof" and config.oof_folds < 2:
        raise MelanomaError(f"--oof-folds {config.oof_folds}: needs at least 2 folds")


def _image_run(run: Path) -> RunConfig:
    """The image run's config; refuses ensembles, context runs and unfinished runs with one line."""
    if not run.is_dir():
        raise MelanomaError(f"{run}: no such run directory")
    if read_ensemble(run) is not None:
        raise MelanomaError(f"{run}: is an ensemble; a context stage wraps one trained run")
    if read_context(run) is not None:
        raise MelanomaError(f"{run}: is already a context run; give its image run")
    config = RunConfig.load(run)
    if not (run / WEIGHTS).is_file():
        raise MelanomaError(f"{run}: no {WEIGHTS}; the run has not finished (rerun `melanoma train` to resume)")
    return config


def _check_out(out: Path, run: Path, config: ContextConfig) -> None:
    """`out` may be new, a context run with the same settings (fitted again, fold runs reused), or hold only the
    folds of an interrupted `--fit-on oof`; anything else is refused rather than overwritten."""
    if out.resolve() == run:
        raise MelanomaError(f"{out}: is the image run itself; choose another --out")
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / CONFIG).is_file():
        if {path.name for path in out.iterdir()} <= {FOLDS}:
            return
        raise MelanomaError(f"{out}: folder is not empty and is not a context run; use a new --out")
    if read_context(out) is None:
        raise MelanomaError(f"{out}: already holds a run that is not a context run; choose another --out")
    old = (yaml.safe_load((out / CONFIG).read_text()) or {}).get("settings") or {}
    check_same_settings(out, "context run", old, to_plain(config), REFIT_DIFFERENCES)


def _score_val(
    run: Path, image_config: RunConfig, data: Path, manifest: pd.DataFrame, loader: dict
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, list[str], list[str]]:
    """The run's scores and embeddings on the val split, which it was not trained on."""
    if image_config.train.final:
        raise MelanomaError(
            f"{run}: was trained with --final (on train+val), so its val scores are not out-of-sample; "
            "use --fit-on oof, or a run trained without --final"
        )
    rows = _labelled(manifest, ["val"], data)
    trained = _training_images(image_config)
    if trained is not None and (seen := rows["image_name"].isin(trained)).any():
        raise MelanomaError(
            f"{data}: {int(seen.sum())} val images (e.g. {rows.loc[seen, 'image_name'].iloc[0]}) are training images "
            f"of {run}; was the dataset split again after training?"
        )
    scores, embeddings = Predictor.from_run(run).embed_prepared(data, rows, manifest, **loader)
    return rows, scores, embeddings, [str(run)] * len(rows), ["val"]


def _score_out_of_fold(
    image_config: RunConfig, config: ContextConfig, manifest: pd.DataFrame, loader: dict
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, list[str], list[str]]:
    """Train one image model per patient-grouped fold of the run's training rows; score each fold with the model
    that did not see it."""
    from melanoma.training.fit import train

    data = Path(config.data)
    splits = ["train", "val"] if image_config.train.final else ["train"]
    rows = _labelled(manifest, splits, data)
    folds = assign_folds(rows, config.oof_folds, config.seed)
    scores = np.full(len(rows), np.nan)
    embeddings: np.ndarray | None = None
    scored_by = [""] * len(rows)
    for fold in range(config.oof_folds):
        held_out = folds == fold
        fold_dir = Path(config.out).resolve() / FOLDS / str(fold)
        fold_data = _fold_dataset(data, manifest, rows.index[held_out], fold_dir / "data")
        print(f"context fit: fold {fold + 1}/{config.oof_folds}, an image model without {held_out.sum()} images")
        fold_run = train(replace(image_config.train, data=fold_data, out=fold_dir / "run")).resolve()
        fold_scores, fold_embeddings = Predictor.from_run(fold_run).embed_prepared(
            data, rows[held_out], manifest, **loader
        )
        if embeddings is None:
            embeddings = np.full((len(rows), fold_embeddings.shape[1]), np.nan)
        scores[held_out], embeddings[held_out] = fold_scores, fold_embeddings
        for index in np.flatnonzero(held_out):
            scored_by[index] = str(fold_run)
    return rows, scores, embeddings, scored_by, splits


def assign_folds(rows: pd.DataFrame, k: int, seed: int) -> np.ndarray:
    """Fold number per row: patient-grouped (a patient's images share a fold, and so a scoring model) and
    stratified by melanoma."""
    patients = rows["patient_id"].nunique()
    if patients < k:
        raise MelanomaError(f"--oof-folds {k}: the rows to fit on hold only {patients} patients")
    folds = np.full(len(rows), -1)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(rows)), rows["target"], rows["patient_id"])):
        folds[held_out] = fold
    return folds


def _fold_dataset(data: Path, manifest: pd.DataFrame, held_out: pd.Index, folder: Path) -> Path:
    """A dataset dir sharing `data`'s images (a symlink) whose manifest moves the held-out rows to `test`, so that
    `train` never sees them. An existing fold with other held-out rows is refused: its model may have seen them."""
    fold_manifest = manifest.copy()
    fold_manifest.loc[held_out, "split"] = "test"
    if (folder / "manifest.csv").is_file():
        existing = read_manifest(folder)
        if existing["image_name"].tolist() != fold_manifest["image_name"].tolist() or (
            existing["split"].tolist() != fold_manifest["split"].tolist()
        ):
            raise MelanomaError(f"{folder}: holds a fold made from other data or settings; use a new --out")
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(folder, fold_manifest)
    shutil.copyfile(data / DATASET_INFO, folder / DATASET_INFO)
    images = folder / IMAGES_DIR
    if not images.exists():
        try:
            images.symlink_to((data / IMAGES_DIR).resolve(), target_is_directory=True)
        except OSError as exc:
            raise MelanomaError(f"{images}: cannot link the dataset's images ({exc})") from None
    return folder


def _labelled(manifest: pd.DataFrame, splits: list[str], data: Path) -> pd.DataFrame:
    rows = manifest[manifest["split"].isin(splits) & manifest["target"].notna()]
    if rows.empty:
        raise MelanomaError(f"{data}: no labelled {'+'.join(splits)} images to fit the context stage on")
    return rows


def _training_images(image_config: RunConfig) -> set[str] | None:
    """Names of the images the run was trained on, from its dataset's manifest; None when it cannot be read."""
    try:
        manifest = read_manifest(image_config.train.data)
    except MelanomaError:
        print(f"warning: {image_config.train.data}: cannot read the run's dataset to check for overlap")
        return None
    splits = ["train", "val"] if image_config.train.final else ["train"]
    return set(manifest.loc[manifest["split"].isin(splits), "image_name"])
