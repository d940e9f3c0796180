import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from melanoma.config import EvaluateConfig
from melanoma.errors import MelanomaError
from melanoma.evaluation.evaluate import evaluate
from melanoma.evaluation.metrics import binary_metrics


def test_binary_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, 200)
    scores = rng.random(200) + targets * 0.3
    metrics = binary_metrics(targets, scores)
    assert metrics["auc"] == pytest.approx(roc_auc_score(targets, scores))
    assert (metrics["images"], metrics["melanomas"]) == (200, int(targets.sum()))


def test_evaluate_writes_metrics_predictions_plots_and_report(trained_run: Path, split_data: Path) -> None:
    metrics = evaluate(EvaluateConfig(run=trained_run, data=split_data, split="test", num_workers=0, seed=3))
    out = Path(metrics["out"])
    assert out == trained_run / "eval" / "data-test"
    saved = json.loads((out / "metrics.json").read_text())
    predictions = pd.read_csv(out / "predictions.csv")
    manifest = pd.read_csv(split_data / "manifest.csv")
    test = manifest[manifest["split"] == "test"]
    assert set(predictions["image_name"]) == set(test["image_name"])
    assert saved["auc"] == pytest.approx(roc_auc_score(predictions["target"], predictions["probability"]))
    assert predictions["probability"].between(0, 1).all()
    low, high = saved["auc_ci"]
    assert low <= saved["auc"] <= high
    assert (saved["n_bootstrap"], saved["bootstrap_seed"], saved["tta"], saved["scores"]) == (2000, 3, 1, "probability")
    assert (saved["patients"], saved["melanomas"]) == (test["patient_id"].nunique(), test["target"].sum())
    assert 0 <= saved["partial_auc_above_80_tpr"] <= 0.2
    assert set(saved["operating_points"]) == {
        "sensitivity_at_90_specificity",
        "sensitivity_at_95_specificity",
        "specificity_at_90_sensitivity",
        "specificity_at_95_sensitivity",
    }
    assert set(saved["subgroups"]) == {"site", "sex", "age"}
    assert sum(g["images"] for g in saved["subgroups"]["sex"]) == len(test)
    for name in ("roc", "precision_recall", "calibration", "score_histograms"):
        with Image.open(out / f"{name}.png") as image:
            assert image.format == "PNG" and image.size[0] > 100
    report = (out / "report.html").read_text()
    assert report.count('src="data:image/png;base64,') == 4
    assert "http" not in report.replace("http-equiv", "")  # self-contained: nothing to fetch
    assert f"{saved['auc']:.3f}" in report and "Subgroups" in report and "oversample: 5.0" in report


def test_report_escapes_what_it_shows(trained_run: Path, split_data: Path, tmp_path: Path) -> None:
    data = split_data.rename(tmp_path / "<b>data")
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    config = run / "config.yaml"
    config.write_text(config.read_text() + "# <script>alert(1)</script>\n")
    metrics = evaluate(EvaluateConfig(run=run, data=data, num_workers=0, n_bootstrap=50))
    report = (Path(metrics["out"]) / "report.html").read_text()
    assert "<script>" not in report and "&lt;script&gt;" in report
    assert "<b>data" not in report and "&lt;b&gt;data" in report


def test_tta_results_go_to_their_own_folder(trained_run: Path, split_data: Path) -> None:
    metrics = evaluate(EvaluateConfig(run=trained_run, data=split_data, num_workers=0, tta=8, n_bootstrap=0))
    assert Path(metrics["out"]).name == "data-test-tta8"
    assert (metrics["tta"], metrics["auc_ci"]) == (8, None)


def test_split_all_scores_every_labelled_row(trained_run: Path, split_data: Path) -> None:
    metrics = evaluate(EvaluateConfig(run=trained_run, data=split_data, split="all", num_workers=0))
    assert metrics["images"] == len(pd.read_csv(split_data / "manifest.csv"))


def test_bad_split_names_and_unfinished_runs_are_errors(trained_run: Path, split_data: Path, tmp_path: Path) -> None:
    with pytest.raises(MelanomaError, match="--split tset: expected one of"):
        evaluate(EvaluateConfig(run=trained_run, data=split_data, split="tset"))
    with pytest.raises(MelanomaError, match="not a run directory"):
        evaluate(EvaluateConfig(run=tmp_path, data=split_data))
