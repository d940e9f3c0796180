import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from melanoma.cli import main
from melanoma.config import EnsembleConfig, EvaluateConfig, PredictConfig
from melanoma.data.prepare import read_manifest
from melanoma.errors import MelanomaError
from melanoma.evaluation.evaluate import evaluate
from melanoma.inference.ensemble import combine_scores, create_ensemble
from melanoma.inference.predictor import EnsemblePredictor, load_predictor, predict


def test_rank_averaging_uses_ranks_within_the_scored_set() -> None:
    a = np.array([0.1, 0.5, 0.3, 0.3])
    b = np.array([10.0, 20.0, 40.0, 30.0])
    ranks_a = np.array([1, 4, 2.5, 2.5]) / 4  # ties share the average rank
    ranks_b = np.array([1, 2, 4, 3]) / 4
    assert combine_scores([a, b], "rank") == pytest.approx((ranks_a + ranks_b) / 2)
    assert combine_scores([a, b], "mean") == pytest.approx((a + b) / 2)
    with_unreadable = combine_scores([np.array([0.2, np.nan, 0.9])], "rank")
    assert with_unreadable[[0, 2]] == pytest.approx([0.5, 1.0]) and np.isnan(with_unreadable[1])


def test_an_ensemble_of_one_run_scores_exactly_like_the_run(
    trained_run: Path, split_data: Path, tmp_path: Path
) -> None:
    out = create_ensemble(EnsembleConfig(members=[trained_run], out=tmp_path / "ens", method="mean"))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["ensemble"] == {"method": "mean", "members": [str(trained_run.resolve())]}
    assert not (out / "model.safetensors").exists()
    manifest = read_manifest(split_data)
    rows = manifest[manifest["split"] == "test"]
    run_scores = load_predictor(trained_run).predict_prepared(split_data, rows, manifest, num_workers=0)
    ensemble = load_predictor(out)
    assert isinstance(ensemble, EnsemblePredictor)
    assert np.array_equal(ensemble.predict_prepared(split_data, rows, manifest, num_workers=0), run_scores)


def test_evaluate_and_predict_accept_an_ensemble(trained_run: Path, split_data: Path, raw_data, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(trained_run, tmp_path / "copy", ignore=shutil.ignore_patterns("eval")))
    ensemble = create_ensemble(EnsembleConfig(members=[trained_run, copy], out=tmp_path / "ens", method="rank"))
    metrics = evaluate(EvaluateConfig(run=ensemble, data=split_data, num_workers=0, n_bootstrap=100))
    alone = evaluate(EvaluateConfig(run=trained_run, data=split_data, num_workers=0, n_bootstrap=100))
    assert metrics["auc"] == pytest.approx(alone["auc"])  # ranks keep the order, so the AUC is the run's
    assert (metrics["scores"], metrics["brier"], metrics["calibration"]) == ("rank", None, None)
    assert Path(metrics["out"]).parent == ensemble / "eval"
    assert "rank ensemble" in (Path(metrics["out"]) / "report.html").read_text()
    result = predict(PredictConfig(run=ensemble, images=raw_data[0], out=tmp_path / "p.csv", num_workers=0))
    assert len(result) == len(pd.read_csv(raw_data[1])) and result["target"].between(0, 1).all()


def test_ensemble_members_are_checked(trained_run: Path, tmp_path: Path) -> None:
    def create(members: list, method: str = "mean", out: Path = tmp_path / "ens") -> Path:
        return create_ensemble(EnsembleConfig(members=members, out=out, method=method))

    with pytest.raises(MelanomaError, match="nowhere: no such run directory"):
        create([trained_run, tmp_path / "nowhere"])
    with pytest.raises(MelanomaError, match="not a run directory"):
        create([tmp_path])
    with pytest.raises(MelanomaError, match="listed twice"):
        create([trained_run, trained_run])
    with pytest.raises(MelanomaError, match="--method median: expected mean or rank"):
        create([trained_run], method="median")
    with pytest.raises(MelanomaError, match="already holds a run that is not an ensemble"):
        create([trained_run], out=trained_run)
    unfinished = Path(shutil.copytree(trained_run, tmp_path / "unfinished"))
    (unfinished / "model.safetensors").unlink()
    with pytest.raises(MelanomaError, match="the run has not finished"):
        create([unfinished])
    ensemble = create([trained_run])
    with pytest.raises(MelanomaError, match="is itself an ensemble"):
        create([ensemble], out=tmp_path / "ens2")
    config = ensemble / "config.yaml"
    config.write_text(config.read_text().replace(str(trained_run.resolve()), str(tmp_path / "moved")))
    with pytest.raises(MelanomaError, match=r"ens/config.yaml: ensemble member .*moved: not a run directory"):
        load_predictor(ensemble)


def test_the_cli_builds_an_ensemble_and_compares_it(
    trained_run: Path, split_data: Path, tmp_path: Path, capsys
) -> None:
    ensemble = tmp_path / "ens"
    assert main(["ensemble", str(trained_run), "--out", str(ensemble)]) == 0
    assert "Ensemble of 1 runs (mean)" in capsys.readouterr().out
    code = main(
        [
            "compare",
            str(trained_run),
            str(ensemble),
            "--data",
            str(split_data),
            "--n-bootstrap",
            "200",
            "--out",
            str(tmp_path / "c.json"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "A - B: +0.0000 (95% CI +0.0000 to +0.0000" in out
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["auc_difference"] == 0 and saved["auc_a"] == saved["auc_b"] and saved["n_bootstrap"] == 200
    assert main(["ensemble", str(tmp_path / "nowhere"), "--out", str(tmp_path / "e2")]) == 2
    assert "no such run directory" in capsys.readouterr().err
