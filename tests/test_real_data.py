"""The whole path on real dermoscopic images (../shared/data/smoke); skipped where that folder is absent."""

from pathlib import Path

import pandas as pd
import pytest

from melanoma.cli import main
from tests.conftest import SHARED_DATA

SMOKE = SHARED_DATA / "smoke"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SMOKE / "metadata.csv").exists(), reason=f"real smoke data not found at {SMOKE}"),
]


def test_prepare_split_train_evaluate_predict_on_real_images(tmp_path: Path, capsys) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    assert (
        main(
            [
                "prepare",
                "--images",
                str(SMOKE / "images"),
                "--metadata",
                str(SMOKE / "metadata.csv"),
                "--out",
                str(data),
                "--size",
                "96",
            ]
        )
        == 0
    )
    manifest = pd.read_csv(data / "manifest.csv")
    assert len(manifest) == 80 and set(manifest["source"]) == {
        "isic2020_train_512_toregore",
        "derm7pt_384_napoles",
    }
    assert main(["split", str(data), "--test-size", "0.25", "--val-size", "0.25"]) == 0
    manifest = pd.read_csv(data / "manifest.csv")
    assert (manifest.groupby("patient_id")["split"].nunique() == 1).all()
    assert (
        main(
            [
                "train",
                str(data),
                "--out",
                str(run),
                "--epochs",
                "2",
                "--image-size",
                "64",
                "--num-workers",
                "0",
                "--accelerator",
                "cpu",
            ]
        )
        == 0
    )
    assert main(["evaluate", str(run), "--data", str(data)]) == 0
    assert "AUC" in capsys.readouterr().out
    assert (
        main(
            [
                "predict",
                str(run),
                "--images",
                str(SMOKE / "images"),
                "--metadata",
                str(SMOKE / "metadata.csv"),
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    predictions = pd.read_csv(tmp_path / "p.csv")
    assert len(predictions) == 80 and predictions["target"].between(0, 1).all()
