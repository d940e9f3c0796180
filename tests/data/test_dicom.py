"""DICOM input: pixels through the shared decode path, metadata from the tags when no CSV is given."""

import io
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from melanoma.cli import main
from melanoma.config import PredictConfig, PrepareConfig
from melanoma.data.dicom import is_dicom, read_tags
from melanoma.data.images import ImageSource, load_image
from melanoma.data.prepare import prepare, read_manifest
from melanoma.errors import MelanomaError
from melanoma.inference.predictor import predict

VL_PHOTOGRAPHIC_IMAGE = "1.2.840.10008.5.1.4.1.1.77.1.4"


def dicom_bytes(
    pixels: np.ndarray | None = None,
    photometric: str = "RGB",
    bits_stored: int = 8,
    *,
    jpeg_of: np.ndarray | None = None,
    **tags: object,
) -> bytes:
    """A DICOM file written by pydicom: raw pixels, or (like the ISIC release) a YBR_FULL_422 baseline JPEG.

    Tag values pydicom would warn about (the original ISIC release has ages like '45Y' and sites like
    'HEAD/NECK', which strict DICOM forbids) are written as given.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VL_PHOTOGRAPHIC_IMAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg_of is not None else ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = VL_PHOTOGRAPHIC_IMAGE, meta.MediaStorageSOPInstanceUID
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for keyword, value in tags.items():
            setattr(dataset, keyword, value)
    if jpeg_of is not None:
        encoded = io.BytesIO()
        Image.fromarray(jpeg_of).save(encoded, "JPEG", quality=95)
        dataset.Rows, dataset.Columns = jpeg_of.shape[:2]
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PlanarConfiguration = 3, "YBR_FULL_422", 0
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
        dataset.PixelData = encapsulate([encoded.getvalue()])
        dataset["PixelData"].VR = "OB"
    else:
        dataset.set_pixel_data(pixels, photometric, bits_stored)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def lesion(seed: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """A smooth RGB test picture (smooth so that JPEG round trips stay close)."""
    rows, cols = np.mgrid[0 : size[0], 0 : size[1]]
    picture = np.stack([rows * 4 + seed * 10, cols * 3, np.full(size, 120 + seed)], axis=-1)
    return np.clip(picture, 0, 255).astype(np.uint8)


def test_dicom_is_recognised_by_content_and_rgb_pixels_round_trip() -> None:
    data = dicom_bytes(lesion(0))
    assert is_dicom(data) and not is_dicom(b"\xff\xd8\xff" + bytes(200))
    image = load_image(data, 64)
    assert image.mode == "RGB" and image.size == (48, 48)
    expected = Image.fromarray(lesion(0)).crop((8, 0, 56, 48))
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1


def test_the_isic_layout_jpeg_ybr_full_422_is_converted_to_rgb() -> None:
    picture = lesion(3, (40, 40))
    image = load_image(dicom_bytes(jpeg_of=picture), 40)
    assert np.abs(np.asarray(image, dtype=int) - picture.astype(int)).mean() < 3


@pytest.mark.parametrize(
    ("photometric", "pixels", "bits", "expected"),
    [
        ("MONOCHROME2", np.full((20, 20), 200, np.uint8), 8, (200, 200, 200)),
        ("MONOCHROME1", np.full((20, 20), 200, np.uint8), 8, (55, 55, 55)),  # 0 is white: inverted
        ("MONOCHROME2", np.full((20, 20), 4095, np.uint16), 12, (255, 255, 255)),  # 12 of 16 bits rescaled
        ("YBR_FULL", convert_color_space(np.full((20, 20, 3), (200, 30, 90), np.uint8), "RGB", "YBR_FULL"), 8, None),
    ],
)
def test_photometric_interpretations_become_the_colours_they_mean(photometric, pixels, bits, expected) -> None:
    pixel = load_image(dicom_bytes(pixels, photometric, bits), 20).getpixel((5, 5))
    if expected is None:
        assert np.abs(np.subtract(pixel, (200, 30, 90))).max() <= 2
    else:
        assert pixel == expected


def test_palette_colour_goes_through_its_lookup_table() -> None:
    indices = np.zeros((20, 20), np.uint8)
    indices[:, 10:] = 1
    table = np.zeros((3, 256), np.uint16)
    table[:, 0], table[:, 1] = (65535, 0, 0), (0, 0, 65535)
    luts = {}
    for channel, colour in enumerate(["Red", "Green", "Blue"]):
        luts[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, 16]
        luts[f"{colour}PaletteColorLookupTableData"] = table[channel].tobytes()
    image = load_image(dicom_bytes(indices, "PALETTE COLOR", 8, **luts), 20)
    assert image.getpixel((2, 5)) == (255, 0, 0) and image.getpixel((17, 5)) == (0, 0, 255)


def test_a_broken_dicom_is_a_short_reason_not_a_crash() -> None:
    with pytest.raises(ValueError, match="cannot decode DICOM"):
        load_image(b"\0" * 128 + b"DICM" + b"garbage", 32)
    with pytest.raises(ValueError, match="cannot decode DICOM"):
        load_image(dicom_bytes(lesion(0))[:400], 32)


def test_tags_give_patient_sex_age_and_site() -> None:
    data = dicom_bytes(lesion(0), PatientID="IP_7", PatientSex="M", PatientAge="045Y", BodyPartExamined="HEAD_NECK")
    assert read_tags(io.BytesIO(data)) == {
        "patient_id": "IP_7",
        "sex": "male",
        "age_approx": "45",
        "anatom_site_general": "HEAD_NECK",
    }
    months = dicom_bytes(lesion(0), PatientSex="O", PatientAge="018M")
    assert read_tags(io.BytesIO(months)) | {"anatom_site_general": ""} == {
        "patient_id": "",
        "sex": "",
        "age_approx": "1.5",
        "anatom_site_general": "",
    }


def write_dicom_folder(folder: Path) -> Path:
    folder.mkdir()
    patients = [("IP_1", "F", "045Y", "UPPER EXTREMITY"), ("IP_1", "F", "45Y", "HEAD/NECK"), ("IP_2", "M", "070Y", "")]
    for index, (patient, sex, age, site) in enumerate(patients):
        tags = {"PatientID": patient, "PatientSex": sex, "PatientAge": age}
        if site:
            tags["BodyPartExamined"] = site
        (folder / f"ISIC_{index:07d}.dcm").write_bytes(dicom_bytes(jpeg_of=lesion(index), **tags))
    return folder


def test_prepare_reads_dicom_pixels_and_tag_metadata_without_a_csv(tmp_path: Path) -> None:
    images = write_dicom_folder(tmp_path / "dicom")
    found, _ = ImageSource(images).index()
    assert sorted(found) == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
    archive = tmp_path / "ISIC_2020_Train_DICOM_corrected.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(images.iterdir()):
            handle.write(path, f"train/{path.name}")
    result = prepare(PrepareConfig(images=archive, out=tmp_path / "data", size=32, workers=1))
    assert result.prepared == 3 and result.problems == []
    manifest = read_manifest(tmp_path / "data").set_index("image_name")
    assert manifest["patient_id"].tolist() == ["IP_1", "IP_1", "IP_2"]
    assert manifest["sex"].tolist() == ["female", "female", "male"]
    assert manifest["age_approx"].tolist() == [45.0, 45.0, 70.0]
    assert manifest["site"].tolist()[:2] == ["upper extremity", "head/neck"] and manifest["site"].isna().iloc[2]
    assert manifest["target"].isna().all()
    with Image.open(tmp_path / "data" / manifest.at["ISIC_0000001", "path"]) as image:
        assert image.size == (32, 32) and image.mode == "RGB"


def test_a_csv_still_wins_over_the_tags_and_unknown_tag_values_are_listed(tmp_path: Path) -> None:
    images = write_dicom_folder(tmp_path / "dicom")
    (images / "ISIC_0000009.dcm").write_bytes(dicom_bytes(lesion(9), PatientSex="M", BodyPartExamined="ELBOW"))
    result = prepare(PrepareConfig(images=images, out=tmp_path / "tags", size=32, workers=1))
    assert any("ISIC_0000009.dcm: unknown anatom_site_general value 'ELBOW'" in p for p in result.problems)
    metadata = tmp_path / "truth.csv"
    metadata.write_text("image_name,patient_id,target\nISIC_0000000,P9,1\nISIC_0000001,P9,0\n")
    prepare(PrepareConfig(images=images, metadata=metadata, out=tmp_path / "csv", size=32, workers=1))
    manifest = read_manifest(tmp_path / "csv")
    assert set(manifest["patient_id"]) == {"P9"} and sorted(manifest["target"]) == [0, 1]


def test_metadata_is_required_for_jpeg_images(raw_data, tmp_path: Path, capsys) -> None:
    images, _ = raw_data
    with pytest.raises(MelanomaError, match="--metadata CSV is required"):
        prepare(PrepareConfig(images=images, out=tmp_path / "data", size=32, workers=1))
    dicom = write_dicom_folder(tmp_path / "dicom")
    assert (
        main(["prepare", "--images", str(dicom), "--out", str(tmp_path / "d"), "--size", "32", "--workers", "1"]) == 0
    )
    assert "Prepared 3 images" in capsys.readouterr().out


def test_predict_reads_dicom_through_the_same_decode_path(trained_run: Path, tmp_path: Path) -> None:
    images = write_dicom_folder(tmp_path / "dicom")
    result = predict(PredictConfig(run=trained_run, images=images, out=tmp_path / "p.csv", num_workers=0))
    assert result["image_name"].tolist() == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
    assert result["target"].between(0, 1).all()
