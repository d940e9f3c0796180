"""`context fit` on a trained run: the CONTEXT_RUN dir, no leakage, and evaluate / predict / the CLI using it."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from melanoma.cli import main
from melanoma.config import ContextConfig, EnsembleConfig, EvaluateConfig, PredictConfig
from melanoma.context.features import context_features
from melanoma.context.fit import fit_context
from melanoma.context.predictor import ContextPredictor
from melanoma.context.stage import fallback_scores
from melanoma.data.dataset import prepared_dataset
from melanoma.data.images import ImageSource
from melanoma.data.metadata import read_metadata
from melanoma.data.prepare import read_manifest
from melanoma.errors import MelanomaError
from melanoma.evaluation.evaluate import evaluate
from melanoma.evaluation.metrics import auc_confidence_interval
from melanoma.inference.ensemble import create_ensemble
from melanoma.inference.predictor import Predictor, dihedral, load_predictor, predict
from melanoma.rundir import RunConfig


def fit(run: Path, data: Path, out: Path, **settings) -> dict:
    return fit_context(ContextConfig(run=run, data=data, out=out, num_workers=0, **settings))


@pytest.fixture(scope="module")
def context_run(trained_run: Path, _split_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A context run fitted on the val split (read-only for tests)."""
    out = tmp_path_factory.mktemp("context") / "ctx"
    fit(trained_run, _split_dataset, out)
    return out


def test_fit_on_val_uses_only_images_the_run_was_not_trained_on(
    context_run: Path, trained_run: Path, _split_dataset: Path
) -> None:
    saved = yaml.safe_load((context_run / "config.yaml").read_text())
    assert saved["context"]["image_run"] == str(trained_run.resolve())
    assert (saved["context"]["stage"], saved["context"]["fit_on"]) == ("hgb", "val")
    assert {"stage.json", "stage.safetensors", "fit_rows.csv"} <= {p.name for p in context_run.iterdir()}
    fitted = pd.read_csv(context_run / "fit_rows.csv")
    manifest = read_manifest(_split_dataset)
    trained_on = set(manifest.loc[manifest["split"] == "train", "image_name"])  # a non-final run: train only
    assert set(fitted["image_name"]) == set(manifest.loc[manifest["split"] == "val", "image_name"])
    assert not set(fitted["image_name"]) & trained_on
    assert (fitted["scored_by"] == str(trained_run.resolve())).all()
    assert saved["result"]["images"] == len(fitted) and saved["result"]["melanomas"] == fitted["target"].sum()


def test_evaluate_reports_context_and_image_only_side_by_side(
    context_run: Path, trained_run: Path, split_data: Path, _split_dataset: Path
) -> None:
    assert isinstance(load_predictor(context_run), ContextPredictor)
    metrics = evaluate(EvaluateConfig(run=context_run, data=split_data, num_workers=0, n_bootstrap=300))
    manifest = read_manifest(split_data)
    rows = manifest[manifest["split"] == "test"]
    image_scores = load_predictor(trained_run).predict_prepared(split_data, rows, manifest, num_workers=0)
    targets, patients = rows["target"].to_numpy(), rows["patient_id"].to_numpy()
    image_auc = roc_auc_score(targets, image_scores)
    context = metrics["context"]
    assert context["image_auc"] == pytest.approx(image_auc)
    assert context["image_auc_ci"] == auc_confidence_interval(targets, image_scores, patients, 300, 0)["auc_ci"]
    assert context["auc_difference"] == pytest.approx(metrics["auc"] - image_auc)
    low, high = context["auc_difference_ci"]
    assert low <= context["auc_difference"] <= high and context["in_sample"] is False
    out = Path(metrics["out"])
    assert out == context_run / "eval" / "data-test"
    predictions = pd.read_csv(out / "predictions.csv")
    assert predictions["image_probability"].to_numpy() == pytest.approx(image_scores)
    assert json.loads((out / "metrics.json").read_text())["context"]["image_auc"] == context["image_auc"]
    report = (out / "report.html").read_text()
    assert "Patient context" in report and "Context − image only" in report
    fitted_on = EvaluateConfig(run=context_run, data=_split_dataset, split="val", num_workers=0, n_bootstrap=0)
    assert evaluate(fitted_on)["context"]["in_sample"]  # the very images the stage was fitted on: flagged


def test_predict_groups_patients_from_the_metadata_and_falls_back_without_it(
    context_run: Path, trained_run: Path, raw_data: tuple[Path, Path], tmp_path: Path
) -> None:
    images, metadata = raw_data
    image_only = predict(PredictConfig(run=trained_run, images=images, out=tmp_path / "image.csv", num_workers=0))
    stage = load_predictor(context_run).stage
    alone = predict(PredictConfig(run=context_run, images=images, out=tmp_path / "alone.csv", num_workers=0))
    # no metadata: every image is its own patient, scored by the recalibrated image score (same order)
    assert alone["target"].to_numpy() == pytest.approx(fallback_scores(stage, image_only["target"].to_numpy()))
    config = PredictConfig(run=context_run, images=images, metadata=metadata, out=tmp_path / "p.csv", num_workers=0)
    with_patients = predict(config)
    assert with_patients["image_name"].tolist() == image_only["image_name"].tolist()
    assert pd.read_csv(tmp_path / "p.csv").shape == (len(pd.read_csv(metadata)), 2)
    # with metadata: each image judged among its patient's images, as the metadata groups them
    source = ImageSource(images)
    found, _ = source.index()
    frame = with_patients[["image_name"]].merge(read_metadata(metadata).frame, on="image_name", how="left")
    predictor = load_predictor(context_run)
    scores, embeddings = predictor.image.embed_raw(
        source, frame, [found[n] for n in frame["image_name"]], num_workers=0
    )
    assert (context_features(frame, scores, embeddings)["n_images"] >= 3).all()
    assert with_patients["target"].to_numpy() == pytest.approx(predictor.contextualise(frame, scores, embeddings))


def test_fit_on_oof_never_scores_an_image_with_a_model_trained_on_it(
    trained_run: Path, split_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ctx"
    result = fit(trained_run, split_data, out, fit_on="oof", oof_folds=2, stage="logistic")
    fitted = pd.read_csv(out / "fit_rows.csv")
    manifest = read_manifest(split_data)
    assert set(fitted["image_name"]) == set(manifest.loc[manifest["split"] == "train", "image_name"])
    assert result["images"] == len(fitted)
    fold_runs = yaml.safe_load((out / "config.yaml").read_text())["context"]["fold_runs"]
    assert sorted(fold_runs) == sorted(set(fitted["scored_by"])) and len(fold_runs) == 2
    for fold_run in fold_runs:
        fold_config = RunConfig.load(Path(fold_run)).train
        fold_manifest = read_manifest(fold_config.data)
        trained_on = set(fold_manifest.loc[fold_manifest["split"] == "train", "image_name"])
        scored = set(fitted.loc[fitted["scored_by"] == fold_run, "image_name"])
        assert scored and trained_on and not scored & trained_on
        assert not fold_config.final and Path(fold_run).parent.parent == (out / "folds").resolve()
    assert (fitted.groupby("patient_id")["scored_by"].nunique() == 1).all()  # a patient's images share a model
    assert (stage := json.loads((out / "stage.json").read_text()))["kind"] == "logistic"
    assert len(stage["params"]["coef"]) == len(stage["features"])
    # fitting again reuses the finished fold runs; other settings into the same folder are refused
    assert fit(trained_run, split_data, out, fit_on="oof", oof_folds=2, stage="logistic")["images"] == len(fitted)
    with pytest.raises(MelanomaError, match=r"different settings \(stage: 'logistic' there, 'hgb' now\)"):
        fit(trained_run, split_data, out, fit_on="oof", oof_folds=2)


def test_bad_input_is_one_line(trained_run: Path, split_data: Path, tmp_path: Path) -> None:
    final = Path(shutil.copytree(trained_run, tmp_path / "final", ignore=shutil.ignore_patterns("eval")))
    config = final / "config.yaml"
    config.write_text(config.read_text().replace("final: false", "final: true"))
    with pytest.raises(MelanomaError, match="trained with --final .* use --fit-on oof"):
        fit(final, split_data, tmp_path / "c1")
    ensemble = create_ensemble(EnsembleConfig(members=[trained_run], out=tmp_path / "ens"))
    with pytest.raises(MelanomaError, match="is an ensemble"):
        fit(ensemble, split_data, tmp_path / "c2")
    with pytest.raises(MelanomaError, match="--stage forest: expected hgb or logistic"):
        fit(trained_run, split_data, tmp_path / "c3", stage="forest")
    with pytest.raises(MelanomaError, match="--fit-on test: expected val or oof"):
        fit(trained_run, split_data, tmp_path / "c3", fit_on="test")
    with pytest.raises(MelanomaError, match="--oof-folds 1: needs at least 2"):
        fit(trained_run, split_data, tmp_path / "c3", fit_on="oof", oof_folds=1)
    with pytest.raises(MelanomaError, match="--oof-folds 50: the rows to fit on hold only"):
        fit(trained_run, split_data, tmp_path / "c3", fit_on="oof", oof_folds=50)
    with pytest.raises(MelanomaError, match="is the image run itself"):
        fit(trained_run, split_data, trained_run)
    with pytest.raises(MelanomaError, match="not empty and is not a context run"):
        fit(trained_run, split_data, split_data)
    manifest = split_data / "manifest.csv"
    frame = pd.read_csv(manifest, keep_default_na=False)
    frame.loc[frame["split"] == "train", "split"] = "val"  # split again after training: val now holds train images
    frame.to_csv(manifest, index=False)
    with pytest.raises(MelanomaError, match="val images .* are training images of"):
        fit(trained_run, split_data, tmp_path / "c4")


def test_the_cli_fits_and_evaluates_a_context_run(trained_run: Path, split_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ctx"
    argv = ["context", "fit", trained_run, "--data", split_data, "--out", out, "--stage", "logistic"]
    assert main([str(a) for a in [*argv, "--num-workers", 0]]) == 0
    printed = capsys.readouterr().out
    assert "Context stage (logistic) fitted on" in printed and f"melanoma evaluate {out}" in printed
    assert main(["evaluate", str(out), "--data", str(split_data), "--n-bootstrap", "100", "--num-workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("AUC ") and "Image-only AUC" in printed and "context - image-only: " in printed
    assert main(["context", "fit", str(trained_run), "--data", str(split_data), "--out", str(trained_run)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_embeddings_are_the_image_networks_pooled_features_from_the_same_pass(
    trained_run: Path, split_data: Path
) -> None:
    predictor = Predictor.from_run(trained_run, device="cpu", tta=2)
    manifest = read_manifest(split_data)
    rows = manifest[manifest["split"] == "test"]
    scores, embeddings = predictor.embed_prepared(split_data, rows, manifest, num_workers=0)
    assert scores == pytest.approx(predictor.predict_prepared(split_data, rows, manifest, num_workers=0))
    features = predictor.features(manifest)[manifest.index.get_indexer(rows.index)]
    images = torch.stack([item[0] for item in prepared_dataset(split_data, rows, features, predictor.transform)])
    image_net = predictor.model.image_net  # the basic CNN: its pooled conv features, before the linear layers
    with torch.inference_mode():
        expected = sum(image_net.pool(image_net.features(dihedral(images, k))).flatten(1) for k in range(2)) / 2
    assert embeddings.shape == (len(rows), image_net.features[-1][0].out_channels)
    assert embeddings == pytest.approx(expected.numpy(), abs=1e-5)
