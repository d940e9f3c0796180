from pathlib import Path

import pytest

from melanoma.config import SplitConfig
from melanoma.data.prepare import read_manifest, write_manifest
from melanoma.data.split import split
from melanoma.errors import MelanomaError


def test_no_patient_is_on_two_sides_and_every_split_has_melanoma(split_data: Path) -> None:
    summary = split(SplitConfig(data=split_data, test_size=0.25, val_size=0.25, seed=3))
    manifest = read_manifest(split_data)
    assert (manifest.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert (summary["melanomas"] > 0).all()
    assert summary["images"].sum() == len(manifest)
    assert summary.loc["test", "patients"] == manifest.loc[manifest["split"] == "test", "patient_id"].nunique()


def test_the_split_is_a_function_of_the_seed(split_data: Path) -> None:
    def assignment(seed: int) -> list[str]:
        split(SplitConfig(data=split_data, test_size=0.25, val_size=0.25, seed=seed))
        return read_manifest(split_data)["split"].tolist()

    assert assignment(1) == assignment(1)
    assert assignment(1) != assignment(2)


def test_rows_without_target_are_left_out(split_data: Path) -> None:
    manifest = read_manifest(split_data)
    manifest.loc[:3, "target"] = None
    write_manifest(split_data, manifest)
    summary = split(SplitConfig(data=split_data, test_size=0.25, val_size=0.25))
    assert summary.loc["(none)", "images"] == 4
    assert (read_manifest(split_data).loc[:3, "split"] == "").all()


def test_zero_val_size_gives_no_val_split(split_data: Path) -> None:
    summary = split(SplitConfig(data=split_data, test_size=0.25, val_size=0))
    assert "val" not in read_manifest(split_data)["split"].tolist()
    assert summary.loc["val", "images"] == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"test_size": 1.5}, "--test-size 1.5: must be"),
        ({"test_size": 0.01}, "needs at least 100 patients"),
    ],
)
def test_bad_sizes_are_one_line_errors(split_data: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(MelanomaError, match=message):
        split(SplitConfig(data=split_data, **kwargs))


def test_an_unprepared_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MelanomaError, match="not a prepared dataset"):
        split(SplitConfig(data=tmp_path))
