"""ONNX export: agrees with PyTorch, has a dynamic batch axis, and its sidecar is enough to preprocess by hand."""

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from PIL import Image, ImageOps

from melanoma.cli import main
from melanoma.config import EnsembleConfig, ExportConfig, PredictConfig
from melanoma.data.images import load_image
from melanoma.errors import MelanomaError
from melanoma.inference.ensemble import create_ensemble
from melanoma.inference.export import export
from melanoma.inference.predictor import Predictor, predict
from tests.inference.fake_runs import make_run, write_evaluation


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained run's ONNX export (outside the read-only run directory)."""
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    export(ExportConfig(run=trained_run, out=out))
    return out


def _session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnx_and_pytorch_agree_on_random_inputs_with_metadata(trained_run: Path, exported: Path) -> None:
    session = _session(exported)
    assert [i.name for i in session.get_inputs()] == ["image", "metadata"]
    assert isinstance(session.get_inputs()[0].shape[0], str)  # a named, dynamic batch axis
    model = Predictor.from_run(trained_run, device="cpu").model
    generator = torch.Generator().manual_seed(42)
    for batch in (1, 7):
        images = torch.randn(batch, 3, 32, 32, generator=generator)
        metadata = torch.randn(batch, session.get_inputs()[1].shape[1], generator=generator)
        with torch.inference_mode():
            logit = model(images, metadata)
        onnx_logit, onnx_probability = session.run(None, {"image": images.numpy(), "metadata": metadata.numpy()})
        assert onnx_logit.shape == (batch,)
        assert np.abs(onnx_logit - logit.numpy()).max() < 1e-4
        assert np.abs(onnx_probability - torch.sigmoid(logit).numpy()).max() < 1e-4
    check = json.loads(exported.with_suffix(".json").read_text())["check"]
    assert check["max_abs_difference_probability"] < 1e-4


def test_predict_with_the_onnx_engine_gives_the_torch_predictions(
    trained_run: Path, exported: Path, raw_data, tmp_path: Path
) -> None:
    images, metadata = raw_data
    common = dict(run=trained_run, images=images, metadata=metadata, num_workers=0, tta=2)
    torch_scores = predict(PredictConfig(**common, out=tmp_path / "torch.csv"))
    onnx_scores = predict(PredictConfig(**common, out=tmp_path / "onnx.csv", engine="onnx", onnx_model=exported))
    assert (torch_scores["image_name"] == onnx_scores["image_name"]).all()
    assert np.abs(torch_scores["target"] - onnx_scores["target"]).max() < 1e-4


def _hand_preprocessed(sidecar: dict, data: bytes) -> np.ndarray:
    """The sidecar's recipe with Pillow and NumPy only, as a user without this package would write it."""
    settings = sidecar["preprocessing"]["settings"]
    with Image.open(io.BytesIO(data)) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
    side = min(settings["prepared_size"], *image.size)
    image = ImageOps.fit(image, (side, side), method=Image.Resampling.LANCZOS)
    resize = round(settings["image_size"] / settings["crop_pct"])
    image = image.resize((resize, resize), Image.Resampling.BILINEAR)  # square already: shorter side = resize
    offset = (resize - settings["image_size"]) // 2
    image = image.crop((offset, offset, offset + settings["image_size"], offset + settings["image_size"]))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels - np.array(settings["mean"], dtype=np.float32)) / np.array(settings["std"], dtype=np.float32)
    return pixels.transpose(2, 0, 1)[None]


def _hand_encoded(sidecar: dict, sex: str | None, age: float | None, site: str | None, images: int) -> np.ndarray:
    encoding = sidecar["metadata_encoding"]
    settings = encoding["settings"]
    values = dict.fromkeys(encoding["features"], 0.0)
    values[f"sex={sex}" if sex in settings["sexes"] else "sex=missing"] = 1.0
    values[f"site={site}" if site in settings["sites"] else "site=missing"] = 1.0
    if age is None or math.isnan(age):
        values["age_missing"] = 1.0
    else:
        values["age_standardised"] = (age - settings["age_mean"]) / settings["age_std"]
    values["log_patient_image_count"] = math.log(images)
    return np.array([[values[name] for name in encoding["features"]]], dtype=np.float32)


def test_the_sidecar_is_enough_to_preprocess_without_the_package(
    trained_run: Path, exported: Path, raw_data, tmp_path: Path
) -> None:
    images, metadata = raw_data
    sidecar = json.loads(exported.with_suffix(".json").read_text())
    assert sidecar["model_file"] == exported.name
    table = pd.read_csv(metadata).set_index("image_name")
    patient_counts = table["patient_id"].value_counts()
    predictor = Predictor.from_run(trained_run, device="cpu")
    names = sorted(p.stem for p in images.iterdir())[:6]
    session = _session(exported)
    for name in names:
        row = table.loc[name]
        sex = row["sex"] if isinstance(row["sex"], str) else None
        site = row["anatom_site_general_challenge"]
        site = site if isinstance(site, str) else None
        features = _hand_encoded(sidecar, sex, row["age_approx"], site, int(patient_counts[row["patient_id"]]))
        frame = pd.DataFrame({"patient_id": table["patient_id"], "sex": table["sex"]})
        frame["age_approx"] = table["age_approx"]
        frame["site"] = table["anatom_site_general_challenge"]
        expected = predictor.features(frame.reset_index(drop=True))[table.index.get_loc(name)]
        np.testing.assert_allclose(features[0], expected, atol=1e-6)  # the same metadata vector, by hand

        data = (images / f"{name}.jpg").read_bytes()
        by_hand = _hand_preprocessed(sidecar, data)
        exact = predictor.transform(load_image(data, predictor.prepared_size)).numpy()[None]
        assert np.abs(by_hand - exact).max() < 0.05  # Pillow's vs torchvision's antialiased bilinear: < 1 level
        (by_hand_probability,) = session.run(["probability"], {"image": by_hand, "metadata": features})[0]
        with torch.inference_mode():
            reference = torch.sigmoid(predictor.model(torch.from_numpy(exact), torch.from_numpy(features)))
        assert by_hand_probability == pytest.approx(float(reference[0]), abs=2e-3)


def test_an_image_only_timm_model_exports_with_one_input_and_the_operating_points(
    trained_run: Path, tmp_path: Path
) -> None:
    run = make_run(tmp_path / "effnet", trained_run, model="test_efficientnet", metadata=False)
    write_evaluation(
        run, "data-val", "val", {"specificity_at_95_sensitivity": 0.2, "sensitivity_at_95_specificity": 0.7}
    )
    result = export(ExportConfig(run=run))
    assert result.onnx == run / "model.onnx" and result.max_abs_difference < 1e-4
    session = _session(result.onnx)
    assert [i.name for i in session.get_inputs()] == ["image"]
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["metadata_encoding"] is None and "metadata" not in sidecar["inputs"]
    assert sidecar["operating_points"]["thresholds"]["specificity_at_95_sensitivity"]["threshold"] == 0.2
    assert "val split" in sidecar["operating_points"]["source"]


def test_the_onnx_engine_refuses_a_missing_or_foreign_export(trained_run: Path, exported: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    with pytest.raises(MelanomaError, match="no exported model; run `melanoma export"):
        Predictor.from_run(run, engine="onnx")
    other = make_run(tmp_path / "other", trained_run, image_size=40)
    with pytest.raises(MelanomaError, match="differs from"):
        Predictor.from_run(other, engine="onnx", onnx_model=exported)
    shutil.copy(exported, run / "model.onnx")
    with pytest.raises(MelanomaError, match="sidecar is missing"):
        Predictor.from_run(run, engine="onnx")
    with pytest.raises(MelanomaError, match="--engine tensorrt"):
        Predictor.from_run(run, engine="tensorrt")


def test_export_errors_are_one_line(trained_run: Path, tmp_path: Path, capsys) -> None:
    ensemble = create_ensemble(EnsembleConfig(members=[trained_run], out=tmp_path / "ens"))
    assert main(["export", str(ensemble), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "is an ensemble" in capsys.readouterr().err
    assert main(["export", str(trained_run), "--out", str(tmp_path / "model.bin")]) == 2
    assert "name the file *.onnx" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert "not a run directory" in capsys.readouterr().err
