"""DICOM input: pixels with their photometric interpretation handled by pydicom, and metadata from the tags.

The ISIC 2020 release also ships as DICOM (JPEG-compressed YBR_FULL_422 pixels, with the patient id, sex, age
and anatomic site in the tags). `load_image` (data/images.py) recognises a DICOM by its content and calls
`dicom_to_image`, so `prepare` and `predict` read DICOM through the same decode path as JPEG and PNG.
"""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import pandas as pd
import pydicom
from PIL import Image
from pydicom.pixels import apply_color_lut, pixel_array
from tqdm import tqdm

from melanoma.data.metadata import MetadataTable, normalise_metadata

if TYPE_CHECKING:
    from melanoma.data.images import ImageSource

DICOM_EXTENSIONS = {".dcm", ".dicom"}
_MAGIC_OFFSET = 128  # a DICOM file is a 128-byte preamble, then b"DICM" (PS3.10 section 7.1)
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0, "": 1.0}
_SEX = {"M": "male", "F": "female", "O": ""}  # DICOM 'O' (other) has no level in the model: missing


def is_dicom(data: bytes) -> bool:
    """True for a DICOM Part 10 file, whatever its name: the 'DICM' magic follows the 128-byte preamble."""
    return data[_MAGIC_OFFSET : _MAGIC_OFFSET + 4] == b"DICM"


def dicom_to_image(data: bytes) -> Image.Image:
    """The first frame as an 8-bit RGB or greyscale PIL image.

    pydicom decodes the pixel data (JPEG, JPEG-LS, RLE, ... via its plugins) and converts YBR_FULL /
    YBR_FULL_422 to RGB; palette colour is expanded through its lookup table and MONOCHROME1 (0 = white) is
    inverted so every image means the same thing as a photograph. Raises ValueError with a short reason.
    """
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        pixels = pixel_array(dataset, index=0) if frames > 1 else pixel_array(dataset)
        photometric = str(dataset.get("PhotometricInterpretation", "")).strip().upper()
        bits = int(dataset.get("BitsStored", 8) or 8)
        signed = int(dataset.get("PixelRepresentation", 0) or 0) == 1
        if photometric == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, dataset)[..., :3]
            bits, signed = int(dataset.RedPaletteColorLookupTableDescriptor[2]), False
    except Exception as exc:  # pydicom signals a malformed file with many exception types; all mean "unusable"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot decode DICOM ({reason})") from None
    pixels = _to_uint8(pixels, bits, signed)
    if photometric in {"MONOCHROME1", "MONOCHROME2"} and pixels.ndim == 2:
        return Image.fromarray(255 - pixels if photometric == "MONOCHROME1" else pixels)
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        return Image.fromarray(pixels)
    raise ValueError(f"unsupported DICOM photometric interpretation {photometric or 'missing'!r}")


def _to_uint8(pixels: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Rescale the stored range (e.g. 12 of 16 bits, or signed) to 0-255."""
    if pixels.dtype == np.uint8:
        return pixels
    values = pixels.astype(np.float64)
    if signed:
        values += 2.0 ** (bits - 1)
    top = 2.0**bits - 1.0
    return np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)


def read_tags(stream: BinaryIO) -> dict[str, str]:
    """Patient id, sex, age and anatomic site from a DICOM header, named like the ISIC Archive columns.

    Only the header is parsed (the pixel data is never read). The site comes from Body Part Examined, else
    the first Anatomic Region Sequence item's code meaning.
    """
    dataset = pydicom.dcmread(stream, stop_before_pixels=True)
    site = str(dataset.get("BodyPartExamined", "") or "").strip()
    regions = dataset.get("AnatomicRegionSequence") or []
    if not site and len(regions):
        site = str(regions[0].get("CodeMeaning", "") or "").strip()
    sex = str(dataset.get("PatientSex", "") or "").strip()
    return {
        "patient_id": str(dataset.get("PatientID", "") or "").strip(),
        "sex": _SEX.get(sex.upper(), sex),
        "age_approx": _age_years(str(dataset.get("PatientAge", "") or "")),
        "anatom_site_general": site,
    }


def _age_years(text: str) -> str:
    """A DICOM age string ('045Y', '018M', '003W', '010D') in years; anything else is passed on to be reported."""
    match = _AGE.match(text)
    if match is None:
        return text.strip()
    years = int(match.group(1)) / _AGE_UNIT_YEARS[match.group(2).upper()]
    return f"{years:g}" if years.is_integer() else f"{years:.1f}"


def metadata_from_dicom(source: ImageSource, found: dict[str, str], source_name: str) -> MetadataTable:
    """One canonical row per DICOM image from its tags (target unknown), for `prepare` without a metadata CSV.

    A header that cannot be read leaves the row's metadata missing; decoding the same file then fails and is
    reported once, with the file name, by `prepare`.
    """
    names = sorted(found)
    rows = []
    for name in tqdm(names, desc="DICOM tags", unit="file", disable=None):
        try:
            with source.open(found[name]) as stream:
                tags = read_tags(stream)
        except Exception:  # any unreadable header: the pixels fail to decode too, and that is reported
            tags = {}
        rows.append({"image_name": name, **tags, "target": ""})
    columns = ["image_name", "patient_id", "sex", "age_approx", "anatom_site_general", "target"]
    raw = pd.DataFrame(rows, columns=columns, dtype=object).fillna("")
    return normalise_metadata(
        raw, f"{source.root} (DICOM tags)", source_name, lambda index: f"{source.root}/{found[names[index]]}"
    )
