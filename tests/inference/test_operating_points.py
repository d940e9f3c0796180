"""Which evaluation's thresholds give a probability its operating-point meaning, and what is said without one."""

import json
import os
from pathlib import Path

from melanoma.inference.operating_points import NO_OPERATING_POINT, describe, find_operating_points
from tests.inference.fake_runs import write_evaluation

THRESHOLDS = {
    "sensitivity_at_95_specificity": 0.8,
    "specificity_at_95_sensitivity": 0.1,
    "specificity_at_90_sensitivity": 0.2,
    "sensitivity_at_90_specificity": 0.6,
}


def _age(path: Path, seconds_ago: float) -> None:
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime - seconds_ago))


def test_the_validation_split_wins_over_a_newer_test_evaluation(tmp_path: Path) -> None:
    val = write_evaluation(tmp_path, "isic-val", "val", THRESHOLDS)
    _age(val, 3600)
    write_evaluation(tmp_path, "isic-test", "test", {"specificity_at_95_sensitivity": 0.5})
    write_evaluation(tmp_path, "isic-val-tta8", "val", {"specificity_at_95_sensitivity": 0.9}, tta=8)
    points = find_operating_points(tmp_path)
    assert points.source == val and points.split == "val" and points.tta == 1
    assert [p.threshold for p in points.points] == [0.1, 0.2, 0.6, 0.8]  # most sensitive first
    assert "val split of isic (100 images, 10 melanomas)" in points.description


def test_without_a_validation_split_the_most_recent_evaluation_is_used(tmp_path: Path) -> None:
    old = write_evaluation(tmp_path, "a-test", "test", THRESHOLDS)
    _age(old, 3600)
    new = write_evaluation(tmp_path, "b-all", "all", THRESHOLDS)
    assert find_operating_points(tmp_path).source == new


def test_the_meaning_says_which_thresholds_the_probability_reaches(tmp_path: Path) -> None:
    points = find_operating_points(Path(write_evaluation(tmp_path, "d-val", "val", THRESHOLDS).parents[2]))
    meaning = describe(points, 0.25)
    assert meaning["available"] and meaning["summary"] == "Above the 90%-sensitivity threshold (0.2)."
    assert [p["above"] for p in meaning["points"]] == [True, True, False, False]
    assert meaning["points"][0]["text"].startswith("At or above the 95%-sensitivity threshold (0.1)")
    assert meaning["points"][3]["text"].startswith("Below the 95%-specificity threshold (0.8)")
    low = describe(points, 0.05)
    assert low["summary"].startswith("Below every calibrated threshold (the lowest is the 95%-sensitivity threshold")
    assert describe(points, 0.8)["summary"] == "Above the 95%-specificity threshold (0.8)."


def test_no_evaluation_means_no_calibrated_operating_point(tmp_path: Path) -> None:
    assert find_operating_points(tmp_path) is None
    assert describe(None, 0.5) == {"available": False, "source": None, "summary": NO_OPERATING_POINT, "points": []}
    rank = write_evaluation(tmp_path, "r-val", "val", THRESHOLDS)
    rank.write_text(json.dumps(json.loads(rank.read_text()) | {"scores": "rank"}))  # ranks are not probabilities
    (tmp_path / "eval" / "broken").mkdir()
    (tmp_path / "eval" / "broken" / "metrics.json").write_text("{not json")
    nothing = write_evaluation(tmp_path, "n-val", "val", {"specificity_at_95_sensitivity": None})
    assert nothing.exists() and find_operating_points(tmp_path) is None
