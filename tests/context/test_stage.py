"""The second stage: stored as plain numbers that predict exactly like scikit-learn, a monotone single-image
fallback, and, on patients simulated with numpy, a clear gain from judging lesions within the patient."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from melanoma.context.features import FEATURES, context_features
from melanoma.context.stage import HGB_SETTINGS, STAGE_JSON, STAGE_TREES, Stage, fallback_scores, fit_stage
from melanoma.errors import MelanomaError


def simulated_patients(
    n_patients: int, seed: int, context: bool = True
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """(frame, image scores, embeddings, targets) with the two patient-level effects of real data: each patient has
    a typical nevus look (an embedding centre), 70% of melanomas are ugly ducklings far from it, and each patient's
    scores share an offset (skin type, camera) that hides melanoma among patients but not within one. Without
    `context`, neither: the other images of a patient say nothing about an image."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(3, 13, n_patients)
    patient = np.repeat(np.arange(n_patients), counts)
    targets = (rng.random(len(patient)) < 0.1).astype(int)
    centres = rng.normal(0, 1, (n_patients, 16))
    ugly = (targets == 1) & (rng.random(len(patient)) < 0.7) & context
    embeddings = (
        centres[patient] + rng.normal(0, 0.3, (len(patient), 16)) + ugly[:, None] * rng.normal(0, 1, (len(patient), 16))
    )
    offsets = rng.normal(0, 1.0, n_patients)[patient] * context
    logits = 1.0 * targets + offsets + rng.normal(0, 0.8, len(patient)) - 2
    frame = pd.DataFrame(
        {
            "patient_id": [f"P{p}" for p in patient],
            "sex": rng.choice(["male", "female"], n_patients)[patient],
            "age_approx": rng.choice(np.arange(20, 90, 5), n_patients)[patient].astype(float),
            "site": rng.choice(["torso", "lower extremity", "upper extremity"], len(patient)),
        }
    )
    return frame, 1 / (1 + np.exp(-logits)), embeddings, targets


@pytest.mark.parametrize("kind", ["hgb", "logistic"])
def test_context_beats_the_image_score_on_simulated_patients(kind: str) -> None:
    frame, scores, embeddings, targets = simulated_patients(300, seed=0)
    stage = fit_stage(kind, context_features(frame, scores, embeddings), targets, frame["patient_id"], FEATURES)
    frame, scores, embeddings, targets = simulated_patients(300, seed=1)  # new patients
    context = stage.predict(context_features(frame, scores, embeddings))
    image_auc, context_auc = roc_auc_score(targets, scores), roc_auc_score(targets, context)
    assert context_auc > image_auc + 0.1, (image_auc, context_auc)
    assert stage.combine["context"] > 0.5  # the stacking trusts the context model


@pytest.mark.parametrize("kind", ["hgb", "logistic"])
def test_a_context_model_that_learned_nothing_leaves_the_image_ranking_nearly_alone(kind: str) -> None:
    """Stacked on the image score: with no patient-level effect to find, a small fitting set does not make the
    stage worse than the image model (a tree model alone would quantise the image score into a few steps)."""
    frame, scores, embeddings, targets = simulated_patients(40, seed=6, context=False)
    stage = fit_stage(kind, context_features(frame, scores, embeddings), targets, frame["patient_id"], FEATURES)
    frame, scores, embeddings, targets = simulated_patients(300, seed=7, context=False)
    context = stage.predict(context_features(frame, scores, embeddings))
    image_auc, context_auc = roc_auc_score(targets, scores), roc_auc_score(targets, context)
    assert context_auc > image_auc - 0.02, (image_auc, context_auc)


def test_hgb_stage_predicts_exactly_like_scikit_learn(tmp_path: Path) -> None:
    frame, scores, embeddings, targets = simulated_patients(120, seed=2)
    table = context_features(frame, scores, embeddings)
    stage = fit_stage("hgb", table, targets, frame["patient_id"], FEATURES, seed=0)
    context = table["single_image"] == 0
    reference = HistGradientBoostingClassifier(**HGB_SETTINGS, random_state=0).fit(
        table.loc[context, FEATURES].to_numpy(), targets[context]
    )
    test = context_features(*simulated_patients(60, seed=3)[:3])[FEATURES].to_numpy()
    test[::7, 5] = np.nan  # missing values where training had none, and more where it had some
    test[::5, FEATURES.index("age")] = np.nan
    assert stage.context_raw(test) == pytest.approx(reference.decision_function(test), abs=1e-9)

    stage.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [STAGE_JSON, STAGE_TREES]  # no pickle anywhere
    assert np.array_equal(Stage.load(tmp_path).raw(test), stage.raw(test))
    looping = dict(stage.trees, left=np.zeros_like(stage.trees["left"]))  # children pointing back to the root
    save_file(looping, str(tmp_path / STAGE_TREES))
    with pytest.raises(MelanomaError, match="not a valid set of trees"):
        Stage.load(tmp_path)
    (tmp_path / STAGE_JSON).write_text("{}")
    with pytest.raises(MelanomaError, match="not a valid context stage"):
        Stage.load(tmp_path)


def test_logistic_stage_is_readable_json_that_predicts_like_the_pipeline(tmp_path: Path) -> None:
    frame, scores, embeddings, targets = simulated_patients(120, seed=2)
    table = context_features(frame, scores, embeddings)
    stage = fit_stage("logistic", table, targets, frame["patient_id"], FEATURES)
    context = table["single_image"] == 0
    pipeline = make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(), LogisticRegression(max_iter=2000)
    ).fit(table.loc[context, FEATURES].to_numpy(), targets[context])
    test = context_features(*simulated_patients(60, seed=3)[:3])[FEATURES].to_numpy()
    test[::4, FEATURES.index("site_dist_mean")] = np.nan
    assert stage.context_raw(test) == pytest.approx(pipeline.decision_function(test), abs=1e-8)
    stage.save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [STAGE_JSON]
    loaded = Stage.load(tmp_path)
    assert loaded.kind == "logistic" and len(loaded.params["coef"]) == len(FEATURES)
    assert np.array_equal(loaded.raw(test), stage.raw(test))


def test_single_image_patients_fall_back_to_the_recalibrated_image_score() -> None:
    frame, scores, embeddings, targets = simulated_patients(150, seed=4)
    stage = fit_stage("hgb", context_features(frame, scores, embeddings), targets, frame["patient_id"], FEATURES)
    assert stage.fallback["slope"] > 0  # monotone: the fallback keeps the image model's order
    alone = frame.assign(patient_id=[f"alone {i}" for i in range(len(frame))])  # every image its own patient
    context = stage.predict(context_features(alone, scores, embeddings))
    assert context == pytest.approx(fallback_scores(stage, scores))
    assert roc_auc_score(targets, context) == pytest.approx(roc_auc_score(targets, scores))
    mixed = frame.copy()
    mixed.loc[0, "patient_id"] = None  # an image without a patient id in a set with context for the others
    table = context_features(mixed, scores, embeddings)
    assert table["single_image"][0] == 1
    assert stage.predict(table)[0] == pytest.approx(fallback_scores(stage, scores[:1])[0])


def test_a_stage_needs_both_classes() -> None:
    frame, scores, embeddings, targets = simulated_patients(20, seed=5)
    table = context_features(frame, scores, embeddings)
    with pytest.raises(MelanomaError, match="0 melanoma and"):
        fit_stage("hgb", table, np.zeros_like(targets), frame["patient_id"], FEATURES)
    with pytest.raises(MelanomaError, match="--stage forest: expected hgb or logistic"):
        fit_stage("forest", table, targets, frame["patient_id"], FEATURES)
