import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from melanoma.config import EvaluateConfig, PredictConfig
from melanoma.data.dataset import LesionDataset
from melanoma.errors import MelanomaError
from melanoma.evaluation.evaluate import evaluate
from melanoma.inference.predictor import Predictor, dihedral, predict
from melanoma.rundir import RunConfig


def test_predict_writes_the_kaggle_layout_for_a_folder(trained_run: Path, raw_data, tmp_path: Path) -> None:
    images, metadata = raw_data
    out = tmp_path / "submission.csv"
    predict(PredictConfig(run=trained_run, images=images, metadata=metadata, out=out, num_workers=0))
    result = pd.read_csv(out)
    assert list(result.columns) == ["image_name", "target"]
    assert set(result["image_name"]) == set(pd.read_csv(metadata)["image_name"])
    assert result["target"].between(0, 1).all()


def test_raw_images_score_like_their_prepared_copies(
    trained_run: Path, raw_data, split_data: Path, tmp_path: Path
) -> None:
    """predict decodes raw files the way prepare does, so scores agree up to JPEG re-encoding."""
    images, metadata = raw_data
    evaluated = pd.read_csv(
        Path(evaluate(EvaluateConfig(run=trained_run, data=split_data, split="all", num_workers=0))["out"])
        / "predictions.csv"
    )
    predict(PredictConfig(run=trained_run, images=images, metadata=metadata, out=tmp_path / "p.csv", num_workers=0))
    merged = evaluated.merge(pd.read_csv(tmp_path / "p.csv"), on="image_name")
    assert len(merged) == len(evaluated)
    assert (merged["probability"] - merged["target_y"]).abs().max() < 0.05


def test_predict_reads_a_zip_and_works_without_metadata(trained_run: Path, raw_data, tmp_path: Path) -> None:
    images, _ = raw_data
    archive = tmp_path / "new.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(images.iterdir())[:5]:
            handle.write(path, f"test/{path.name}")
    result = predict(PredictConfig(run=trained_run, images=archive, out=tmp_path / "p.csv", num_workers=0))
    assert len(result) == 5 and result["target"].notna().all()


def test_an_unreadable_image_gets_no_score_and_a_warning(trained_run: Path, raw_data, tmp_path: Path, capsys) -> None:
    folder = Path(shutil.copytree(raw_data[0], tmp_path / "images"))
    broken = sorted(folder.iterdir())[0]
    broken.write_bytes(b"not a jpeg")
    result = predict(PredictConfig(run=trained_run, images=folder, out=tmp_path / "p.csv", num_workers=0))
    assert result.set_index("image_name")["target"].isna().to_dict()[broken.stem]
    assert result["target"].notna().sum() == len(result) - 1
    assert f"{broken.name}: not a JPEG or PNG image; no prediction" in capsys.readouterr().out


def test_tampered_weights_give_a_clear_error(trained_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(MelanomaError, match="cannot read weights"):
        Predictor.from_run(run)
    weights.unlink()
    with pytest.raises(MelanomaError, match="the run has not finished"):
        Predictor.from_run(run)


def test_prediction_does_not_import_lightning(trained_run: Path, raw_data, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from melanoma.config import PredictConfig\n"
        "from melanoma.inference.predictor import predict\n"
        f"predict(PredictConfig(run={str(trained_run)!r}, images={str(raw_data[0])!r}, out={str(tmp_path / 'p.csv')!r},"
        " num_workers=0))\n"
        "assert 'lightning' not in sys.modules and 'pytorch_lightning' not in sys.modules, 'lightning imported'\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": src}, capture_output=True)


class PixelWeights(torch.nn.Module):
    """A stand-in model that depends on orientation: a fixed random linear function of the pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1)) / 50)

    def forward(self, images: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
        return (images * self.weight).sum(dim=(1, 2, 3))


def _scores(predictor: Predictor, images: list[torch.Tensor]) -> np.ndarray:
    """Scores for network-ready image tensors (no decoding or resizing), without metadata."""
    dataset = LesionDataset(images, np.zeros((len(images), 0)), np.full(len(images), np.nan), lambda x: x, lambda x: x)
    return predictor.predict_dataset(dataset, num_workers=0)


def test_the_eight_dihedral_transforms_are_distinct_and_start_with_the_identity() -> None:
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    seen = {tuple(dihedral(image, index).flatten().tolist()) for index in range(8)}
    assert len(seen) == 8
    assert torch.equal(dihedral(image, 0), image)
    assert torch.equal(dihedral(image, 5), torch.rot90(image, -1, dims=(-2, -1)))


def test_tta_leaves_a_symmetric_image_unchanged_and_makes_any_image_orientation_free(trained_run: Path) -> None:
    config = RunConfig.load(trained_run)
    plain = Predictor(config, PixelWeights(), torch.device("cpu"))
    tta = Predictor(config, PixelWeights(), torch.device("cpu"), tta=8)
    centre = torch.arange(32.0) - 15.5
    radius = (centre[:, None] ** 2 + centre[None, :] ** 2).sqrt()
    disc = torch.stack([torch.cos(radius / 3), torch.sin(radius / 5), radius / 20])  # same under every flip/turn
    views = [dihedral(torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0)), index) for index in range(8)]
    plain_scores = _scores(plain, [disc, *views])
    assert np.ptp(plain_scores[1:]) > 0.05  # the model alone depends on orientation
    tta_scores = _scores(tta, [disc, *views])
    assert tta_scores[0] == pytest.approx(plain_scores[0], abs=1e-6)  # nothing to average for a symmetric image
    assert tta_scores[1:] == pytest.approx(np.full(8, tta_scores[1]), abs=1e-6)  # every orientation scores alike
    assert tta_scores[1] == pytest.approx(plain_scores[1:].mean(), abs=1e-6)  # the mean over the 8 views
    two = Predictor(config, PixelWeights(), torch.device("cpu"), tta=2)
    assert _scores(two, views[:1]) == pytest.approx(plain_scores[1:3].mean(), abs=1e-6)  # the first k views


def test_tta_count_is_checked(trained_run: Path) -> None:
    with pytest.raises(MelanomaError, match="--tta 9: expected 1"):
        Predictor.from_run(trained_run, tta=9)
    with pytest.raises(MelanomaError, match="--tta 0: expected 1"):
        Predictor.from_run(trained_run, tta=0)
