"""DDP on the CPU (gloo): two processes share the validation set and the gathered AUC is exact."""

from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from melanoma.data.prepare import read_manifest
from melanoma.inference.predictor import Predictor
from melanoma.rundir import RunConfig
from melanoma.training.datamodule import LesionDataModule
from melanoma.training.module import LesionClassifierModule
from tests.conftest import run_cli


def validation_auc(run: Path, data: Path, devices: int) -> float:
    config = RunConfig.load(run)
    model = config.create_model()
    model.load_state_dict(load_file(run / "model.safetensors"))
    manifest = read_manifest(data)
    val = manifest[manifest["split"] == "val"]
    features = config.metadata.encode(manifest)[manifest.index.get_indexer(val.index)]
    datamodule = LesionDataModule(data, val, val, features, features, config.preprocessing, batch_size=3, num_workers=0)
    module = LesionClassifierModule(model, lr=1e-3, backbone_lr=1e-3, weight_decay=0.0, warmup_epochs=0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val_auc"]


def test_two_process_validation_auc_equals_the_single_process_auc(trained_run: Path) -> None:
    data = Path(RunConfig.load(trained_run).train.data)
    manifest = read_manifest(data)
    val = manifest[manifest["split"] == "val"]
    expected = roc_auc_score(val["target"], Predictor.from_run(trained_run).predict_prepared(data, val, manifest))
    single = validation_auc(trained_run, data, devices=1)
    double = validation_auc(trained_run, data, devices=2)
    assert single == pytest.approx(expected, abs=1e-6)
    assert double == pytest.approx(single, abs=1e-6)


@pytest.mark.slow
def test_ddp_training_through_the_cli(split_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    finished = run_cli("train", str(split_data), "--out", str(run), "--epochs", "1", "--image-size", "32",
                       "--batch-size", "4", "--num-workers", "0", "--accelerator", "cpu", "--devices", "2",
                       "--strategy", "ddp")  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    config = RunConfig.load(run)
    assert config.result["devices"] == 2
    logged = pd.read_csv(run / "metrics.csv")
    assert np.isfinite(logged["val_auc"].dropna()).all() and len(logged["val_auc"].dropna()) == 1
    assert (run / "model.safetensors").exists()
