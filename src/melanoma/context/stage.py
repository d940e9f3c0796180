"""The second-stage model: context features -> melanoma probability, stored without pickle.

The context model is scikit-learn's HistGradientBoostingClassifier (`hgb`, default: non-linear, handles the NaN
distances natively) or a logistic regression after median imputation and standardisation (`logistic`, the simple
baseline). It is stacked on the image score: stage log-odds = a * image log-odds + b * context log-odds + c, with
(a, b, c) fitted on cross-fitted context log-odds and b >= 0, so that a context model that learned nothing on a small
fitting set gets little or no weight instead of replacing the image model's ranking.

Both are fitted with scikit-learn and then stored as plain numbers, so loading a CONTEXT_RUN executes no pickled
code and does not depend on scikit-learn's private classes or version:

- `stage.json`: the kind, the feature names, the fallback, the stacking weights, and for `logistic` the imputation
  values, the scaler's mean and scale, the coefficients (one per named feature) and the intercept;
- `stage.safetensors` (`hgb` only): every tree's nodes as flat arrays (feature, threshold, which side missing
  values take, children, leaf values), evaluated in numpy exactly as scikit-learn's predictor walks them.

Fallback: a patient with a single image, or an image without a patient id, has no context. Its context score
is the image score itself, recalibrated with a monotone logistic map (Platt scaling, fitted on the same rows as
the stage) so that it is on the stage's probability scale; the order of such images is the image model's.
The stage itself is fitted only on images of patients with at least two images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from threadpoolctl import threadpool_limits

from melanoma.config import atomic_write_text
from melanoma.context.features import logit
from melanoma.errors import MelanomaError

STAGES = ("hgb", "logistic")
STAGE_JSON = "stage.json"
STAGE_TREES = "stage.safetensors"
TREE_ARRAYS = ("feature", "threshold", "missing_left", "left", "right", "is_leaf", "value", "roots")
INNER_FOLDS = 5  # patient-grouped folds that cross-fit the context model for its weight
HGB_SETTINGS = {
    "learning_rate": 0.05,
    "max_iter": 150,
    "max_leaf_nodes": 8,
    "min_samples_leaf": 20,
    "l2_regularization": 1.0,
    "early_stopping": False,
}


@dataclass
class Stage:
    """A fitted second stage: `predict` turns a feature table (columns `features`) into probabilities."""

    kind: str
    features: list[str]
    fallback: dict[str, float]  # slope and intercept on the image log-odds (single-image patients)
    params: dict = field(default_factory=dict)  # logistic: impute, mean, scale, coef, intercept; hgb: baseline
    trees: dict[str, np.ndarray] = field(default_factory=dict)  # hgb only: TREE_ARRAYS
    combine: dict[str, float] = field(default_factory=dict)  # weights of the image and context log-odds, intercept

    def predict(self, table: pd.DataFrame) -> np.ndarray:
        """Context probabilities; rows with `single_image` = 1 get the recalibrated image score."""
        missing = [name for name in self.features if name not in table.columns]
        if missing:
            raise MelanomaError(f"context stage: feature(s) {', '.join(missing)} not computed")
        x = table[self.features].to_numpy(dtype=np.float64)
        single = table["single_image"].to_numpy(dtype=bool)
        raw = np.empty(len(table))
        raw[~single] = self.raw(x[~single])
        raw[single] = self.fallback["slope"] * table["image_logit"].to_numpy()[single] + self.fallback["intercept"]
        return 1 / (1 + np.exp(-raw))

    def raw(self, x: np.ndarray) -> np.ndarray:
        """The stage's log-odds for a (rows, features) array in `features` order: the image log-odds and the
        context model's log-odds, weighed."""
        c = self.combine
        image_logit = x[:, self.features.index("image_logit")]
        return c["image"] * image_logit + c["context"] * self.context_raw(x) + c["intercept"]

    def context_raw(self, x: np.ndarray) -> np.ndarray:
        """The context model's own log-odds (the HGB or the logistic regression)."""
        return _context_log_odds(self.kind, self.params, self.trees, x)

    def save(self, out: Path) -> None:
        """stage.json (+ stage.safetensors for hgb), each written atomically."""
        out = Path(out)
        if self.kind == "hgb":
            tmp = out / f".{STAGE_TREES}.tmp"
            save_file({name: np.ascontiguousarray(self.trees[name]) for name in TREE_ARRAYS}, str(tmp))
            tmp.replace(out / STAGE_TREES)
        document = {
            "kind": self.kind,
            "features": self.features,
            "fallback": self.fallback,
            "combine": self.combine,
            "params": self.params,
        }
        atomic_write_text(out / STAGE_JSON, json.dumps(document, indent=1))

    @classmethod
    def load(cls, out: Path) -> Stage:
        path = Path(out) / STAGE_JSON
        try:
            document = json.loads(path.read_text())
            stage = cls(
                document["kind"],
                list(document["features"]),
                dict(document["fallback"]),
                document["params"],
                combine=dict(document["combine"]),
            )
        except FileNotFoundError:
            raise MelanomaError(f"{out}: no {STAGE_JSON}; run `melanoma context fit` again") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise MelanomaError(f"{path}: not a valid context stage ({type(exc).__name__}: {exc})") from None
        if stage.kind not in STAGES:
            raise MelanomaError(f"{path}: stage kind {stage.kind!r}: expected {' or '.join(STAGES)}")
        if stage.kind == "hgb":
            trees_path = Path(out) / STAGE_TREES
            try:
                stage.trees = load_file(str(trees_path))
            except (SafetensorError, OSError) as exc:
                raise MelanomaError(f"{trees_path}: cannot read the stage's trees ({exc})") from None
            if sorted(stage.trees) != sorted(TREE_ARRAYS) or not _trees_are_sound(stage.trees, len(stage.features)):
                raise MelanomaError(f"{trees_path}: not a valid set of trees (arrays {', '.join(TREE_ARRAYS)})")
        return stage


def fit_stage(
    kind: str, table: pd.DataFrame, targets: np.ndarray, patients: np.ndarray, features: list[str], seed: int = 0
) -> Stage:
    """Fit the stage on the rows of patients with 2+ images, and the single-image fallback on all rows.

    The context model is stacked on the image score: its log-odds are cross-fitted (patient-grouped folds of the
    stage's rows), and a logistic regression of the target on (image log-odds, context model log-odds) weighs the
    two. A context model that learned nothing gets a weight near 0 and the stage keeps the image model's ranking;
    a tree model alone would quantise the image score into a few steps and lose that ranking on small data.
    """
    if kind not in STAGES:
        raise MelanomaError(f"--stage {kind}: expected {' or '.join(STAGES)}")
    if "image_logit" not in features or "single_image" not in table:
        raise ValueError("the stage needs the image_logit feature and the single_image column")
    targets = np.asarray(targets, dtype=int)
    check_classes(targets, "all rows")
    slope, intercept = _logistic_weights(table[["image_logit"]].to_numpy(), targets)
    fallback = {"slope": float(slope[0]), "intercept": intercept}
    context = table["single_image"].to_numpy() == 0
    check_classes(targets[context], "images of patients with two or more images")
    x, y = table.loc[context, features].to_numpy(dtype=np.float64), targets[context]
    stage = Stage(kind, list(features), fallback, *_fit_context_model(kind, x, y, seed))
    held_out = _cross_fitted(kind, x, y, np.asarray(patients)[context], seed)
    image_logit = x[:, features.index("image_logit")]
    weights, intercept = _logistic_weights(np.stack([image_logit, held_out], axis=1), y)
    if weights[1] < 0:  # held-out context log-odds that only help with their sign flipped: noise, not context
        (slope,), intercept = _logistic_weights(image_logit[:, None], y)
        weights = np.array([slope, 0.0])
    stage.combine = {"image": float(weights[0]), "context": float(weights[1]), "intercept": intercept}
    return stage


def _fit_context_model(kind: str, x: np.ndarray, y: np.ndarray, seed: int) -> tuple[dict, dict[str, np.ndarray]]:
    """(params, trees) of the context model fitted on (x, y)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    if kind == "logistic":
        return _fit_logistic(x, y), {}
    with threadpool_limits(limits=1, user_api="openmp"):  # small data: one thread is fast, and never spin-waits
        model = HistGradientBoostingClassifier(**HGB_SETTINGS, random_state=seed).fit(x, y)
    return {"baseline": float(model._baseline_prediction.ravel()[0])}, _trees(model)


def _cross_fitted(kind: str, x: np.ndarray, y: np.ndarray, patients: np.ndarray, seed: int) -> np.ndarray:
    """Each row's context-model log-odds from a model fitted without its patient (0 where a fold had one class)."""
    from sklearn.model_selection import StratifiedGroupKFold

    folds = min(INNER_FOLDS, len(np.unique(patients)))
    held_out = np.zeros(len(y))
    if folds < 2:
        return held_out
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(x, y, patients):
        if len(np.unique(y[train])) == 2:
            held_out[test] = _context_log_odds(kind, *_fit_context_model(kind, x[train], y[train], seed), x[test])
    return held_out


def _context_log_odds(kind: str, params: dict, trees: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    if kind == "logistic":
        filled = np.where(np.isnan(x), np.asarray(params["impute"]), x)
        scaled = (filled - np.asarray(params["mean"])) / np.asarray(params["scale"])
        return scaled @ np.asarray(params["coef"]) + params["intercept"]
    return params["baseline"] + _walk_trees(trees, x).sum(axis=1)


def _logistic_weights(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Nearly unpenalised logistic regression: (coefficients, intercept)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1e4, max_iter=1000).fit(x, y)
    return model.coef_[0], float(model.intercept_[0])


def check_classes(targets: np.ndarray, what: str) -> None:
    counts = np.bincount(np.asarray(targets, dtype=int), minlength=2)
    if counts.min() == 0:
        raise MelanomaError(
            f"context stage: the {what} to fit on have {counts[1]} melanoma and {counts[0]} other images; it needs both"
        )


def _fit_logistic(x: np.ndarray, y: np.ndarray) -> dict:
    """Median imputation + standardisation + L2 logistic regression, exported as plain numbers."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(C=1.0, max_iter=2000),
    ).fit(x, y)
    imputer, scaler, model = (step for _, step in pipeline.steps)
    return {
        "impute": np.nan_to_num(imputer.statistics_).tolist(),
        "mean": scaler.mean_.tolist(),
        "scale": scaler.scale_.tolist(),
        "coef": model.coef_[0].tolist(),
        "intercept": float(model.intercept_[0]),
    }


def _trees(model: object) -> dict[str, np.ndarray]:
    """scikit-learn's fitted trees as flat node arrays; children become indices into the flat arrays."""
    nodes = [predictor.nodes for (predictor,) in model._predictors]  # binary: one tree per iteration
    if any(tree["is_categorical"].any() for tree in nodes):
        raise MelanomaError("context stage: categorical splits cannot be stored")
    sizes = np.array([len(tree) for tree in nodes])
    roots = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    offsets = np.repeat(roots, sizes)
    flat = np.concatenate(nodes)
    return {
        "feature": flat["feature_idx"].astype(np.int64),
        "threshold": flat["num_threshold"].astype(np.float64),
        "missing_left": flat["missing_go_to_left"].astype(np.uint8),
        "left": flat["left"].astype(np.int64) + offsets,
        "right": flat["right"].astype(np.int64) + offsets,
        "is_leaf": flat["is_leaf"].astype(np.uint8),
        "value": flat["value"].astype(np.float64),
        "roots": roots,
    }


def _trees_are_sound(trees: dict[str, np.ndarray], n_features: int) -> bool:
    """Every split names a known feature and points to later nodes (so every walk ends at a leaf)."""
    n = len(trees["is_leaf"])
    if any(trees[name].shape != (n,) for name in TREE_ARRAYS if name != "roots"):
        return False
    split = np.flatnonzero(trees["is_leaf"] == 0)
    children = np.concatenate([trees["left"][split], trees["right"][split]])
    return bool(
        ((trees["roots"] >= 0) & (trees["roots"] < n)).all()
        and ((children > np.tile(split, 2)) & (children < n)).all()
        and ((trees["feature"][split] >= 0) & (trees["feature"][split] < n_features)).all()
    )


def _walk_trees(trees: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """(rows, trees) leaf values: every row descends every tree at once, NaN going to the side stored for it."""
    node = np.broadcast_to(trees["roots"], (len(x), len(trees["roots"]))).copy()
    is_leaf, rows = trees["is_leaf"].astype(bool), np.arange(len(x))[:, None]
    while not (done := is_leaf[node]).all():
        value = x[rows, trees["feature"][node]]
        left = np.where(np.isnan(value), trees["missing_left"][node].astype(bool), value <= trees["threshold"][node])
        node = np.where(done, node, np.where(left, trees["left"][node], trees["right"][node]))
    return trees["value"][node]


def fallback_scores(stage: Stage, scores: np.ndarray) -> np.ndarray:
    """The single-image context score for image probabilities `scores`."""
    return 1 / (1 + np.exp(-(stage.fallback["slope"] * logit(scores) + stage.fallback["intercept"])))
