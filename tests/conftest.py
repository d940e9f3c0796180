"""Small synthetic data shared by the whole suite: raw images + CSV, a prepared dataset, a split, a trained run.

Everything runs on the CPU in seconds; session-scoped fixtures are built once and treated as read-only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from melanoma.config import PrepareConfig, SplitConfig, TrainConfig
from melanoma.data.prepare import prepare
from melanoma.data.split import split
from melanoma.data.synthetic import generate_synthetic

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PREPARED_SIZE = 48
IMAGE_SIZE = 32


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`melanoma ARGS` in a fresh Python process, as a user runs it; output captured as text."""
    return subprocess.run(_cli(args), env=_CLI_ENV, capture_output=True, text=True, timeout=timeout)


def kill_cli_when(ready: Callable[[], bool], *args: str, timeout: float) -> None:
    """Start `melanoma ARGS` and SIGKILL it once `ready()` holds (or it ended, or `timeout` passed): a crash at a
    known point of a long job, with no chance to clean up."""
    process = subprocess.Popen(_cli(args), env=_CLI_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not ready() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()


_CLI_ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


def _cli(args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "melanoma", *args]


def tiny_train_config(data: Path, out: Path, **overrides) -> TrainConfig:
    """Settings that train in a few seconds on a CPU."""
    settings = dict(
        data=data,
        out=out,
        epochs=2,
        batch_size=16,
        image_size=IMAGE_SIZE,
        num_workers=0,
        accelerator="cpu",
        devices="1",
        metadata_hidden=[8],
        fused_width=16,
    )
    return TrainConfig(**(settings | overrides))


@pytest.fixture(scope="session")
def raw_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(images folder, metadata CSV) of 16 synthetic patients in the official ISIC 2020 layout."""
    return generate_synthetic(
        tmp_path_factory.mktemp("raw"),
        n_patients=16,
        images_per_patient=(3, 7),
        image_size=(80, 64),
        melanoma_rate=0.3,
        seed=0,
    )


@pytest.fixture(scope="session")
def _split_dataset(raw_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    images, metadata = raw_data
    data = tmp_path_factory.mktemp("prepared") / "data"
    prepare(PrepareConfig(images=images, metadata=metadata, out=data, size=PREPARED_SIZE, workers=1))
    split(SplitConfig(data=data, test_size=0.25, val_size=0.25, seed=0))
    return data


@pytest.fixture
def split_data(_split_dataset: Path, tmp_path: Path) -> Path:
    """A prepared and split dataset: a fresh copy per test, so a test may change it."""
    return Path(shutil.copytree(_split_dataset, tmp_path / "data"))


@pytest.fixture(scope="session")
def trained_run(_split_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run directory (read-only for tests: copy it before changing it)."""
    from melanoma.training.fit import train

    return train(tiny_train_config(_split_dataset, tmp_path_factory.mktemp("runs") / "run"))


@pytest.fixture
def official_csv(tmp_path: Path) -> Path:
    """A small metadata file in the official ISIC 2020 ground-truth layout."""
    path = tmp_path / "ISIC_2020_Training_GroundTruth.csv"
    pd.DataFrame(
        {
            "image_name": ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003"],
            "patient_id": ["IP_1", "IP_1", ""],
            "sex": ["male", "", "female"],
            "age_approx": ["45", "", "60.0"],
            "anatom_site_general_challenge": ["torso", "head/neck", ""],
            "diagnosis": ["unknown", "nevus", "melanoma"],
            "benign_malignant": ["benign", "benign", "malignant"],
            "target": ["0", "0", "1"],
        }
    ).to_csv(path, index=False)
    return path
