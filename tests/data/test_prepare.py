import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from melanoma.config import PrepareConfig
from melanoma.data import prepare as prepare_module
from melanoma.data.prepare import MANIFEST_COLUMNS, prepare, read_manifest
from melanoma.errors import MelanomaError
from tests.conftest import kill_cli_when, run_cli


def config(images: Path, metadata: Path, out: Path, **overrides) -> PrepareConfig:
    return PrepareConfig(images=images, metadata=metadata, out=out, **({"size": 32, "workers": 1} | overrides))


def test_prepare_writes_manifest_images_and_info(raw_data, tmp_path: Path) -> None:
    images, metadata = raw_data
    result = prepare(config(images, metadata, tmp_path / "data", workers=2))
    manifest = read_manifest(tmp_path / "data")
    expected = pd.read_csv(metadata)
    assert result.prepared == len(expected) == len(manifest) and result.problems == []
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert set(manifest["image_name"]) == set(expected["image_name"])
    assert (manifest["split"] == "").all()
    for path in manifest["path"]:
        with Image.open(tmp_path / "data" / path) as image:
            assert image.size == (32, 32) and image.format == "JPEG"
    info = json.loads((tmp_path / "data" / "dataset.json").read_text())
    assert info["size"] == 32 and info["sources"][0]["prepared"] == len(expected)


def test_prepare_reads_a_zip_in_place(raw_data, tmp_path: Path) -> None:
    images, metadata = raw_data
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in images.iterdir():
            handle.write(path, f"train/{path.name}")
    result = prepare(config(archive, metadata, tmp_path / "data"))
    assert result.prepared == len(pd.read_csv(metadata))
    assert set(read_manifest(tmp_path / "data")["source"]) == {"images"}


def test_rerun_skips_prepared_images_and_rewrites_nothing(raw_data, tmp_path: Path) -> None:
    images, metadata = raw_data
    prepare(config(images, metadata, tmp_path / "data"))
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "data" / "images").iterdir()}
    result = prepare(config(images, metadata, tmp_path / "data"))
    assert result.prepared == 0 and result.already_there == len(before)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "data" / "images").iterdir()} == before


def test_a_killed_run_resumes_without_decoding_finished_images_again(raw_data, tmp_path: Path, monkeypatch) -> None:
    images, metadata = raw_data
    out = tmp_path / "data"
    prepare(config(images, metadata, out))
    (out / "manifest.csv").unlink()  # killed after writing images but before the manifest
    (out / "images" / sorted((out / "images").iterdir())[0].name).unlink()
    decoded = []
    original = prepare_module._prepare_one
    monkeypatch.setattr(prepare_module, "_prepare_one", lambda job: decoded.append(job) or original(job))
    result = prepare(config(images, metadata, out))
    assert len(decoded) == 1
    assert result.prepared == len(pd.read_csv(metadata))


def test_bad_images_and_unmatched_rows_are_reported_and_the_rest_prepared(raw_data, tmp_path: Path) -> None:
    images, metadata = raw_data
    folder = Path(shutil.copytree(images, tmp_path / "images"))
    names = sorted(p.stem for p in folder.iterdir())
    (folder / f"{names[0]}.jpg").write_bytes((folder / f"{names[0]}.jpg").read_bytes()[:300])  # truncated
    (folder / f"{names[1]}.jpg").write_bytes(b"")  # zero bytes
    (folder / f"{names[2]}.jpg").unlink()  # row without image
    Image.new("RGB", (40, 40)).save(folder / "EXTRA_1.jpg")  # image without row
    result = prepare(config(folder, metadata, tmp_path / "data"))
    text = "\n".join(result.problems)
    assert f"{names[0]}.jpg: cannot decode" in text
    assert f"{names[1]}.jpg: empty file" in text
    assert f"no image named {names[2]}" in text
    assert "EXTRA_1.jpg: no row for EXTRA_1" in text
    manifest = read_manifest(tmp_path / "data")
    assert len(manifest) == len(names) - 3 and not set(names[:3]) & set(manifest["image_name"])
    assert not list((tmp_path / "data" / "images").glob(".*"))  # no temporary files left


def test_nothing_usable_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"junk")
    metadata = tmp_path / "m.csv"
    metadata.write_text("image_name,target\na,0\n")
    with pytest.raises(MelanomaError, match="no image could be prepared"):
        prepare(config(folder, metadata, tmp_path / "data"))
    (folder / "a.jpg").unlink()
    with pytest.raises(MelanomaError, match="no JPEG or PNG images found"):
        prepare(config(folder, metadata, tmp_path / "data2"))


def test_refuses_a_different_size_or_a_foreign_folder(raw_data, tmp_path: Path) -> None:
    images, metadata = raw_data
    prepare(config(images, metadata, tmp_path / "data"))
    with pytest.raises(MelanomaError, match="prepared at --size 32, not 64"):
        prepare(config(images, metadata, tmp_path / "data", size=64))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.docx").write_text("precious")
    with pytest.raises(MelanomaError, match="not empty and holds no melanoma dataset"):
        prepare(config(images, metadata, tmp_path / "other"))
    assert (tmp_path / "other" / "thesis.docx").read_text() == "precious"


def test_several_sources_go_into_one_dataset(raw_data, tmp_path: Path) -> None:
    images, metadata = raw_data
    frame = pd.read_csv(metadata)
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    frame.iloc[:10].to_csv(first, index=False)
    frame.iloc[10:].to_csv(second, index=False)
    prepare(config(images, first, tmp_path / "data", source="clinic-a"))
    prepare(config(images, second, tmp_path / "data", source="clinic-b"))
    manifest = read_manifest(tmp_path / "data")
    assert manifest["source"].value_counts().to_dict() == {"clinic-a": 10, "clinic-b": len(frame) - 10}


def test_duplicates_list_drops_the_second_image(raw_data, tmp_path: Path) -> None:
    images, metadata = raw_data
    names = pd.read_csv(metadata)["image_name"].tolist()
    duplicates = tmp_path / "ISIC_2020_Training_Duplicates.csv"
    duplicates.write_text(f"image_name_1,image_name_2\n{names[0]},{names[1]}\n")
    prepare(config(images, metadata, tmp_path / "data", duplicates=duplicates))
    kept = set(read_manifest(tmp_path / "data")["image_name"])
    assert names[0] in kept and names[1] not in kept


def test_images_with_odd_names_are_prepared(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 100, 50)).save(buffer, "PNG")
    for name in ["lésion 1.PNG", "UPPER.JPG"]:
        (folder / name).write_bytes(buffer.getvalue())
    (folder / "UPPER.JPG").write_bytes(buffer.getvalue())  # a PNG with a .JPG name: read by content
    metadata = tmp_path / "m.csv"
    metadata.write_text("image_name,target\nlésion 1,0\nUPPER,1\n", encoding="utf-8")
    result = prepare(config(folder, metadata, tmp_path / "data"))
    assert result.prepared == 2 and result.problems == []


def test_a_manifest_cannot_point_outside_its_dataset(split_data: Path) -> None:
    manifest = read_manifest(split_data)
    manifest.loc[3, "path"] = "../../etc/passwd"
    manifest.to_csv(split_data / "manifest.csv", index=False)
    with pytest.raises(MelanomaError, match=r"manifest.csv:5: path '../../etc/passwd' is not a file in images/"):
        read_manifest(split_data)


@pytest.mark.slow
def test_prepare_killed_mid_run_leaves_no_partial_image_and_resumes(tmp_path: Path) -> None:
    """SIGKILL a real `melanoma prepare`, then run it again: it finishes without redoing finished images."""
    images, metadata = tmp_path / "raw", tmp_path / "metadata.csv"
    images.mkdir()
    noise = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).resize((2400, 1800)).save(buffer, "JPEG", quality=90)  # ~30 ms to prepare each
    names = [f"ISIC_{i:07d}" for i in range(80)]
    for name in names:
        (images / f"{name}.jpg").write_bytes(buffer.getvalue())
    pd.DataFrame({"image_name": names, "target": [i % 2 for i in range(80)]}).to_csv(metadata, index=False)
    out = tmp_path / "data"
    command = ["prepare", "--images", str(images), "--metadata", str(metadata), "--out", str(out), "--size", "256",
               "--workers", "1"]  # fmt: skip
    kill_cli_when(lambda: len(list(out.glob("images/*.jpg"))) >= 5, *command, timeout=60)
    finished_before = {p.name: p.stat().st_mtime_ns for p in out.glob("images/*.jpg")}
    total = len(pd.read_csv(metadata))
    assert 5 <= len(finished_before) < total, "the kill should land mid-run"
    assert not (out / "manifest.csv").exists()
    for name in finished_before:  # every image that looks finished is complete
        with Image.open(out / "images" / name) as image:
            image.load()

    finished = run_cli(*command)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert len(read_manifest(out)) == total
    assert not list(out.glob("images/.*"))
    assert {n: (out / "images" / n).stat().st_mtime_ns for n in finished_before} == finished_before
