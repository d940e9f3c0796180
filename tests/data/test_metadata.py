import math
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melanoma.data.metadata import CANONICAL_COLUMNS, SITES, read_duplicates, read_metadata
from melanoma.errors import MelanomaError


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_official_layout_is_normalised(official_csv: Path) -> None:
    table = read_metadata(official_csv, source="isic2020")
    frame = table.frame
    assert list(frame.columns) == CANONICAL_COLUMNS
    assert frame["target"].tolist() == [0, 0, 1]
    assert frame["sex"].iloc[0] == "male" and pd.isna(frame["sex"].iloc[1])
    assert frame["age_approx"].tolist()[0] == 45.0 and math.isnan(frame["age_approx"].tolist()[1])
    assert frame["site"].tolist()[:2] == ["torso", "head/neck"] and pd.isna(frame["site"].iloc[2])
    assert set(frame["source"]) == {"isic2020"}
    assert table.problems == []


def test_missing_patient_id_falls_back_to_lesion_then_image(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "image_name,patient_id,lesion_id,target\na,P1,L1,0\nb,,L2,1\nc,,,0\n")
    assert read_metadata(path).frame["patient_id"].tolist() == ["P1", "L2", "c"]


def test_isic_archive_layout_derives_target_from_diagnosis(tmp_path: Path) -> None:
    path = write(
        tmp_path / "metadata.csv",
        "isic_id,attribution,age_approx,anatom_site_general,diagnosis,sex,patient_id,lesion_id\n"
        "ISIC_1,x,55,posterior torso,melanoma,male,IP_1,IL_1\n"
        "ISIC_2,x,30,lower extremity,nevus,female,,IL_2\n"
        "ISIC_3,x,,palms/soles,,female,IP_3,\n",
    )
    frame = read_metadata(path).frame
    assert frame["image_name"].tolist() == ["ISIC_1", "ISIC_2", "ISIC_3"]
    assert frame["site"].tolist() == ["torso", "lower extremity", "palms/soles"]
    assert frame["target"].tolist()[:2] == [1.0, 0.0] and math.isnan(frame["target"].iloc[2])
    assert frame["patient_id"].tolist() == ["IP_1", "IL_2", "IP_3"]


def test_original_ham10000_layout(tmp_path: Path) -> None:
    path = write(
        tmp_path / "HAM10000_metadata.csv",
        "lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        "HAM_1,ISIC_0024306,nv,follow_up,45.0,male,trunk\n"
        "HAM_1,ISIC_0024307,mel,histo,50.0,female,scalp\n"
        "HAM_2,ISIC_0024308,bkl,histo,unknown,unknown,unknown\n",
    )
    table = read_metadata(path)
    assert table.frame["target"].tolist() == [0.0, 1.0, 0.0]
    assert table.frame["site"].tolist()[:2] == ["torso", "head/neck"] and pd.isna(table.frame["site"].iloc[2])
    assert table.frame["patient_id"].tolist() == ["HAM_1", "HAM_1", "HAM_2"]
    assert table.problems == []  # "unknown" is a missing value, not an error


def test_kaggle_test_csv_without_target_gives_unknown_targets(tmp_path: Path) -> None:
    path = write(
        tmp_path / "test.csv",
        "image_name,patient_id,sex,age_approx,anatom_site_general_challenge\nISIC_1,IP_1,male,70.0,torso\n",
    )
    assert read_metadata(path).frame["target"].isna().all()


def test_bom_crlf_quotes_extra_columns_and_any_column_order(tmp_path: Path) -> None:
    text = 'extra,target,"image_name",sex\r\nx,1,"ISIC_1",Male\r\ny,0,ISIC_2,F\r\n'
    frame = read_metadata(write(tmp_path / "m.csv", text, encoding="utf-8-sig")).frame
    assert frame["image_name"].tolist() == ["ISIC_1", "ISIC_2"]
    assert frame["sex"].tolist() == ["male", "female"]
    assert frame["target"].tolist() == [1.0, 0.0]


def test_bad_values_become_missing_and_are_reported_with_their_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.csv",
        "image_name,sex,age_approx,anatom_site_general_challenge,target\n"
        "a,male,forty,torso,0\n"
        "b,robot,40,elbow,1\n"
        "c,female,40,torso,maybe\n"
        "a,male,40,torso,0\n",
    )
    table = read_metadata(path)
    problems = "\n".join(table.problems)
    assert f"{path}:2: age_approx 'forty' is not a number" in problems
    assert f"{path}:3: unknown sex value 'robot'" in problems
    assert f"{path}:3: unknown anatom_site_general_challenge value 'elbow'" in problems
    assert f"{path}:4: target 'maybe' is not 0 or 1" in problems
    assert f"{path}:5: image name a appears twice" in problems
    assert table.frame["image_name"].tolist() == ["a", "b", "c"]
    assert pd.isna(table.frame["site"].iloc[1])


def test_a_misspelt_image_column_is_fatal_and_suggests_the_right_name(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "imagename,target\na,0\n")
    with pytest.raises(MelanomaError, match=r"no image-name column.*did you mean 'imagename'"):
        read_metadata(path)


def test_unsafe_image_names_are_rejected(tmp_path: Path) -> None:
    table = read_metadata(write(tmp_path / "m.csv", "image_name,target\n../evil,0\nok,1\n"))
    assert table.frame["image_name"].tolist() == ["ok"]
    assert "not a usable file name" in table.problems[0]


@pytest.mark.parametrize("text", ["", "\n"])
def test_empty_or_missing_files_are_one_line_errors(tmp_path: Path, text: str) -> None:
    with pytest.raises(MelanomaError, match="empty"):
        read_metadata(write(tmp_path / "m.csv", text))
    with pytest.raises(MelanomaError, match="not found"):
        read_metadata(tmp_path / "absent.csv")


def test_duplicates_list_names_the_second_image(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "image_name_1,image_name_2\nA,B\nC,D\n")
    assert read_duplicates(path) == {"B", "D"}
    with pytest.raises(MelanomaError, match="image_name_2"):
        read_duplicates(write(tmp_path / "x.csv", "a,b\n1,2\n"))


def test_the_real_isic2020_metadata_reads_without_problems() -> None:
    path = Path(__file__).resolve().parents[3] / "shared/data/isic2020-metadata/ISIC_2020_Training_GroundTruth.csv"
    if not path.exists():
        pytest.skip(f"real ISIC 2020 metadata not available at {path}")
    table = read_metadata(path)
    frame = table.frame
    assert len(frame) == 33126 and frame["patient_id"].nunique() == 2056
    assert int(frame["target"].sum()) == 584
    assert int(frame["site"].isna().sum()) == 527 and int(frame["sex"].isna().sum()) == 65
    assert table.problems == []
    assert isinstance(frame, pd.DataFrame)


def test_only_an_image_column_is_required(tmp_path: Path) -> None:
    frame = read_metadata(write(tmp_path / "m.csv", "image_name\na\nb\n")).frame
    assert frame["patient_id"].tolist() == ["a", "b"]
    assert frame[["sex", "age_approx", "site", "target"]].isna().all().all()


_cell = st.one_of(
    st.sampled_from(["", "male", "F", "45", "45.0", "unknown", "torso", "Posterior Torso", "1", "0", "2", "NaN"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
)
_optional_columns = ["patient_id", "lesion_id", "sex", "age_approx", "anatom_site_general_challenge", "target",
                     "diagnosis", "extra column"]  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    columns=st.lists(st.sampled_from(_optional_columns), unique=True, max_size=6).flatmap(st.permutations),
    rows=st.integers(min_value=0, max_value=6),
    data=st.data(),
    bom=st.booleans(),
    newline=st.sampled_from(["\n", "\r\n"]),
)
def test_any_csv_is_read_or_refused_in_one_line(tmp_path: Path, columns, rows, data, bom, newline) -> None:
    """Whatever the cells hold, the reader returns canonical values or raises MelanomaError, nothing else."""
    header = ["image_name", *columns]
    names = data.draw(st.lists(st.text(min_size=0, max_size=8), min_size=rows, max_size=rows))
    body = [[name, *(data.draw(_cell) for _ in columns)] for name in names]
    frame = pd.DataFrame(body, columns=header)
    path = tmp_path / "m.csv"
    path.write_bytes(frame.to_csv(index=False, lineterminator=newline).encode("utf-8-sig" if bom else "utf-8"))
    try:
        table = read_metadata(path)
    except MelanomaError as exc:
        assert "\n" not in str(exc)
        return
    out = table.frame
    assert list(out.columns) == CANONICAL_COLUMNS
    assert out["image_name"].is_unique and (out["patient_id"].str.len() > 0).all()
    assert set(out["sex"].dropna()) <= {"male", "female"}
    assert set(out["site"].dropna()) <= set(SITES)
    assert set(out["target"].dropna()) <= {0.0, 1.0}
    assert out["age_approx"].dropna().between(0, 120).all()
    assert all("\n" not in problem for problem in table.problems)
