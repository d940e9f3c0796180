"""The synthetic generator must mimic the ISIC 2020 layout and carry a learnable, patient-level signal."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from melanoma.data.synthetic import generate_synthetic

EXPECTED_COLUMNS = [
    "image_name",
    "patient_id",
    "sex",
    "age_approx",
    "anatom_site_general_challenge",
    "target",
]
SITES = {"torso", "lower extremity", "upper extremity", "head/neck", "palms/soles", "oral/genital"}


def _generate(out_dir: Path, **kwargs) -> tuple[Path, Path, pd.DataFrame]:
    options = {"n_patients": 10, "image_size": 64, "seed": 0} | kwargs
    images_dir, metadata_csv = generate_synthetic(out_dir, **options)
    return images_dir, metadata_csv, pd.read_csv(metadata_csv)


def test_returns_paths_and_writes_isic_columns_in_order(tmp_path: Path) -> None:
    images_dir, metadata_csv, frame = _generate(tmp_path / "out")
    assert images_dir == tmp_path / "out" / "images"
    assert metadata_csv == tmp_path / "out" / "metadata.csv"
    assert metadata_csv.read_text().splitlines()[0] == ",".join(EXPECTED_COLUMNS)
    assert list(frame.columns) == EXPECTED_COLUMNS


def test_metadata_values_follow_the_isic_conventions(tmp_path: Path) -> None:
    _, _, frame = _generate(tmp_path, n_patients=40, image_size=32)
    assert frame["image_name"].is_unique
    assert frame["image_name"].map(lambda name: re.fullmatch(r"SYN_\d{7}", name) is not None).all()
    assert frame["patient_id"].map(lambda pid: re.fullmatch(r"SP_\d{4}", pid) is not None).all()
    assert set(frame["sex"].dropna()) <= {"male", "female"}
    assert set(frame["anatom_site_general_challenge"].dropna()) <= SITES
    assert frame["anatom_site_general_challenge"].value_counts().index[0] == "torso"
    ages = frame["age_approx"].dropna()
    assert ages.between(20, 85).all() and (ages % 5 == 0).all()
    assert set(frame["target"]) == {0, 1}
    for column in ("sex", "age_approx", "anatom_site_general_challenge"):
        assert 0 < frame[column].isna().sum() < 0.1 * len(frame), column
    assert 0.05 < frame["target"].mean() < 0.3


def test_every_row_has_an_rgb_image_of_the_requested_square_size(tmp_path: Path) -> None:
    images_dir, _, frame = _generate(tmp_path)
    assert len(list(images_dir.glob("*.jpg"))) == len(frame)
    for name in frame["image_name"]:
        with Image.open(images_dir / f"{name}.jpg") as image:
            assert image.mode == "RGB"
            assert image.size == (64, 64)


def test_non_square_size_is_width_by_height(tmp_path: Path) -> None:
    images_dir, _, frame = _generate(tmp_path, n_patients=3, image_size=(96, 64))
    for name in frame["image_name"]:
        with Image.open(images_dir / f"{name}.jpg") as image:
            assert image.mode == "RGB"
            assert image.size == (96, 64)


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    images_a, csv_a, frame = _generate(tmp_path / "a", seed=7)
    images_b, csv_b, _ = _generate(tmp_path / "b", seed=7)
    assert csv_a.read_bytes() == csv_b.read_bytes()
    name = f"{frame['image_name'].iloc[-1]}.jpg"
    assert (images_a / name).read_bytes() == (images_b / name).read_bytes()


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    images_a, csv_a, frame = _generate(tmp_path / "a", seed=1)
    images_b, csv_b, _ = _generate(tmp_path / "b", seed=2)
    assert csv_a.read_bytes() != csv_b.read_bytes()
    name = f"{frame['image_name'].iloc[0]}.jpg"
    assert (images_a / name).read_bytes() != (images_b / name).read_bytes()


def test_patient_image_counts_stay_within_the_range(tmp_path: Path) -> None:
    _, _, frame = _generate(tmp_path, images_per_patient=(3, 5), image_size=32)
    counts = frame["patient_id"].value_counts()
    assert len(counts) == 10
    assert counts.between(3, 5).all()


@pytest.mark.parametrize("melanoma_rate", [0.0, 0.15, 1.0])
def test_split_guarantees_hold_for_the_smallest_cohort(tmp_path: Path, melanoma_rate: float) -> None:
    _, _, frame = _generate(
        tmp_path, n_patients=2, images_per_patient=(1, 3), image_size=32, melanoma_rate=melanoma_rate
    )
    assert (frame["target"] == 1).sum() >= 2
    assert (frame["target"] == 0).sum() >= 2
    per_patient = frame.groupby("patient_id")["target"].agg(["size", "sum"])
    assert ((per_patient["size"] >= 2) & (per_patient["sum"] == 0)).any()
    assert per_patient["size"].between(1, 3).all()


def test_malignant_lesions_are_more_colour_variegated(tmp_path: Path) -> None:
    """Chromaticity spread among the darker centre pixels (the lesion) separates the classes on average."""
    images_dir, _, frame = _generate(tmp_path, n_patients=20)
    spreads = []
    for name in frame["image_name"]:
        with Image.open(images_dir / f"{name}.jpg") as image:
            pixels = np.asarray(image, dtype=np.float64) / 255.0
        centre = pixels[16:48, 16:48].reshape(-1, 3)
        luminance = centre.mean(axis=1) + 1e-3
        chromaticity = centre / luminance[:, None]
        dark = luminance < np.median(luminance)
        spreads.append(chromaticity[dark].std(axis=0).mean())
    by_class = pd.Series(spreads).groupby(frame["target"]).mean()
    assert by_class[1] > 1.1 * by_class[0]


def test_rejects_a_single_patient(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_patients"):
        generate_synthetic(tmp_path, n_patients=1)
