import json
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


@pytest.mark.parametrize(
    ("targets", "scores", "message"),
    [
        ([0, 0, 0], [0.1, 0.2, 0.3], "only non-melanoma images"),
        ([1, 1], [0.1, 0.2], "only melanoma images"),
        ([0, 1], [0.1, np.nan], "1 scores are NaN"),
        ([], [], "no labelled images"),
    ],
)
def test_degenerate_inputs_give_a_message_not_a_number(targets, scores, message) -> None:
    with pytest.raises(MelanomaError, match=message):
        binary_metrics(np.array(targets), np.array(scores))


def test_evaluate_writes_metrics_predictions_and_roc(trained_run: Path, split_data: Path, tmp_path: Path) -> None:
    metrics = evaluate(EvaluateConfig(run=trained_run, data=split_data, split="test", num_workers=0))
    out = Path(metrics["out"])
    assert out.parent == trained_run / "eval"
    saved = json.loads((out / "metrics.json").read_text())
    predictions = pd.read_csv(out / "predictions.csv")
    manifest = pd.read_csv(split_data / "manifest.csv")
    assert set(predictions["image_name"]) == set(manifest.loc[manifest["split"] == "test", "image_name"])
    assert saved["auc"] == pytest.approx(roc_auc_score(predictions["target"], predictions["probability"]))
    assert predictions["probability"].between(0, 1).all()
    with Image.open(out / "roc.png") as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_split_all_scores_every_labelled_row(trained_run: Path, split_data: Path) -> None:
    metrics = evaluate(EvaluateConfig(run=trained_run, data=split_data, split="all", num_workers=0))
    assert metrics["images"] == len(pd.read_csv(split_data / "manifest.csv"))


def test_bad_split_names_and_unfinished_runs_are_errors(trained_run: Path, split_data: Path, tmp_path: Path) -> None:
    with pytest.raises(MelanomaError, match="--split tset: expected one of"):
        evaluate(EvaluateConfig(run=trained_run, data=split_data, split="tset"))
    with pytest.raises(MelanomaError, match="not a run directory"):
        evaluate(EvaluateConfig(run=tmp_path, data=split_data))
