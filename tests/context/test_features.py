"""Context features on a hand-made patient whose ranks and distances are known."""

import numpy as np
import pandas as pd
import pytest

from melanoma.context.features import FEATURES, context_features, logit


def hand_made() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Patient P1 with 4 images (a and d look identical), P2 with one, and two images without a patient id."""
    frame = pd.DataFrame(
        {
            "image_name": list("abcdefg"),
            "patient_id": ["P1", "P1", "P1", "P1", "P2", "", None],
            "sex": ["male"] * 4 + ["female", None, None],
            "age_approx": [40.0, 45.0, np.nan, 40.0, 60.0, np.nan, 30.0],
            "site": ["torso", "torso", "lower extremity", "lower extremity", "torso", None, "torso"],
        }
    )
    scores = np.array([0.1, 0.5, 0.9, 0.5, 0.3, 0.7, 0.2])
    embeddings = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 0, 0], [0, 1, 0], [0, 0, 3], [0, 5, 0]], dtype=float)
    return frame, scores, embeddings


def test_features_of_a_hand_made_patient() -> None:
    frame, scores, embeddings = hand_made()
    table = context_features(frame, scores, embeddings)
    assert list(table.columns) == FEATURES and len(table) == 7
    p1 = table.iloc[:4]
    assert p1["n_images"].tolist() == [4, 4, 4, 4] and p1["single_image"].tolist() == [0, 0, 0, 0]
    assert p1["score_rank"].tolist() == pytest.approx([0, 0.5, 1, 0.5])  # b and d tie: average rank
    spread = np.std(logit(scores[:4]))
    assert p1["score_z"].tolist() == pytest.approx([-logit(0.9)[()] / spread, 0, logit(0.9)[()] / spread, 0])
    assert p1["score_gap"].tolist() == pytest.approx(
        [2 * logit(0.1)[()], logit(0.1)[()], logit(0.9)[()], logit(0.1)[()]]
    )
    # embeddings are normalised, so d = (2, 0, 0) looks exactly like a; the others' mean excludes the image itself
    a_to_mean, b_to_mean = np.sqrt(6) / 3, np.sqrt(14) / 3
    assert p1["dist_mean"].tolist() == pytest.approx([a_to_mean, b_to_mean, b_to_mean, a_to_mean])
    assert p1["dist_nn"].tolist() == pytest.approx([0, np.sqrt(2), np.sqrt(2), 0])
    typical = (a_to_mean + b_to_mean) / 2
    assert p1["dist_mean_ratio"].tolist() == pytest.approx(
        [a_to_mean / typical, b_to_mean / typical, b_to_mean / typical, a_to_mean / typical]
    )
    # same site: a and b on the torso, c and d on the leg: each pair's only other image is at distance sqrt 2
    assert p1["n_same_site"].tolist() == [1, 1, 1, 1]
    assert p1["site_dist_mean"].tolist() == pytest.approx([np.sqrt(2)] * 4)
    assert p1["site_dist_nn"].tolist() == pytest.approx([np.sqrt(2)] * 4)
    assert p1["age_minus_patient_min"].iloc[[0, 1, 3]].tolist() == [0, 5, 0] and np.isnan(
        p1["age_minus_patient_min"][2]
    )
    assert p1["image_logit"].tolist() == pytest.approx(logit(scores[:4]).tolist())


def test_single_image_patients_and_missing_patient_ids_get_neutral_values() -> None:
    frame, scores, embeddings = hand_made()
    table = context_features(frame, scores, embeddings).iloc[4:]  # P2, an empty id, a missing id: three patients
    assert table["n_images"].tolist() == [1, 1, 1] and table["single_image"].tolist() == [1, 1, 1]
    assert table[["score_rank", "score_z", "score_gap"]].to_numpy().tolist() == [[0.5, 0, 0]] * 3
    distances = ["dist_mean", "dist_nn", "dist_mean_ratio", "site_dist_mean", "site_dist_nn"]
    assert table[distances].isna().all().all()
    assert table["n_same_site"].tolist() == [0, 0, 0]
    assert table["image_logit"].tolist() == pytest.approx(logit(scores[4:]).tolist())


def test_metadata_features() -> None:
    frame, scores, embeddings = hand_made()
    table = context_features(frame, scores, embeddings)
    assert table["sex_male"].tolist() == [1, 1, 1, 1, 0, 0, 0] and table["sex_female"].tolist() == [0, 0, 0, 0, 1, 0, 0]
    assert table["site_torso"].tolist() == [1, 1, 0, 0, 1, 0, 1] and table["site_missing"].tolist() == [0] * 5 + [1, 0]
    assert table["age_missing"].tolist() == [0, 0, 1, 0, 0, 1, 0] and table["age"][0] == 40


def test_features_do_not_depend_on_row_order_or_index() -> None:
    frame, scores, embeddings = hand_made()
    expected = context_features(frame, scores, embeddings)
    order = np.array([6, 2, 4, 0, 5, 3, 1])
    shuffled = frame.iloc[order].set_axis([10, 11, 12, 13, 14, 15, 16])
    got = context_features(shuffled, scores[order], embeddings[order])
    pd.testing.assert_frame_equal(got, expected.iloc[order].reset_index(drop=True))
