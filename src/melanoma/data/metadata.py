"""Read a metadata CSV in any of the common ISIC layouts and normalise it to one canonical table.

Supported layouts (detected from the column names, case-insensitively):
- ISIC 2020 challenge ground truth / Kaggle ``train.csv`` and ``test.csv``
  (``image_name, patient_id, sex, age_approx, anatom_site_general_challenge, target``),
- the ISIC 2020 test metadata (``image, patient, sex, age_approx, anatom_site_general``),
- ISIC Archive export (``isic_id, patient_id, lesion_id, sex, age_approx, anatom_site_general, diagnosis...``),
- the original HAM10000 table (``image_id, lesion_id, dx, age, sex, localization``).

Values that cannot be read (an unknown site, a non-numeric age) become missing and are reported with their
CSV line number; only a missing image-name column or an unreadable file is fatal. DICOM files carry the same
fields in their tags (data/dicom.py), which go through the same normalisation.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from melanoma.errors import MelanomaError

SITES = ("head/neck", "upper extremity", "lower extremity", "torso", "palms/soles", "oral/genital")
SEXES = ("male", "female")
CANONICAL_COLUMNS = ["image_name", "patient_id", "sex", "age_approx", "site", "target", "source"]

COLUMN_ALIASES = {
    "image_name": ("image_name", "isic_id", "image_id", "image"),
    "patient_id": ("patient_id", "patient"),
    "lesion_id": ("lesion_id",),
    "sex": ("sex",),
    "age_approx": ("age_approx", "age"),
    "site": ("anatom_site_general_challenge", "anatom_site_general", "anatom_site", "localization", "site"),
    "target": ("target", "melanoma"),
    "diagnosis": ("diagnosis", "dx", "diagnosis_3", "diagnosis_2", "diagnosis_1"),
    "source": ("source",),
}

_SITE_SYNONYMS = {
    **{site: site for site in SITES},
    "head neck": "head/neck",
    "head": "head/neck",
    "neck": "head/neck",
    "face": "head/neck",
    "scalp": "head/neck",
    "ear": "head/neck",
    "anterior torso": "torso",
    "posterior torso": "torso",
    "lateral torso": "torso",
    "trunk": "torso",
    "chest": "torso",
    "abdomen": "torso",
    "back": "torso",
    "upper limb": "upper extremity",
    "upper extremities": "upper extremity",
    "hand": "upper extremity",
    "arm": "upper extremity",
    "lower limb": "lower extremity",
    "lower extremities": "lower extremity",
    "foot": "lower extremity",
    "leg": "lower extremity",
    "palms soles": "palms/soles",
    "acral": "palms/soles",
    "palm": "palms/soles",
    "sole": "palms/soles",
    "oral genital": "oral/genital",
    "genital": "oral/genital",
    "oral": "oral/genital",
}
_MISSING_WORDS = {"", "nan", "na", "n/a", "none", "null", "unknown", "missing", "?"}
_SEX_SYNONYMS = {"male": "male", "m": "male", "female": "female", "f": "female"}


@dataclass
class MetadataTable:
    """The canonical table plus the problems found while reading it (one readable line each)."""

    frame: pd.DataFrame
    problems: list[str] = field(default_factory=list)


def read_csv_text(path: Path) -> pd.DataFrame:
    """Read a CSV as strings (BOM and CRLF tolerated), with a one-line error for a missing or unparsable file."""
    path = Path(path)
    if not path.is_file():
        raise MelanomaError(f"{path}: metadata file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise MelanomaError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise MelanomaError(f"{path}: not a readable CSV ({str(exc).strip().splitlines()[-1]})") from None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    return frame


def _find_column(frame: pd.DataFrame, canonical: str) -> str | None:
    return next((alias for alias in COLUMN_ALIASES[canonical] if alias in frame.columns), None)


def _line(index: int) -> int:
    """CSV line number of a data row (the header is line 1)."""
    return index + 2


def read_metadata(path: Path, source: str | None = None) -> MetadataTable:
    """Read `path` into the canonical columns; `source` fills the `source` column where the CSV has none."""
    path = Path(path)
    return normalise_metadata(read_csv_text(path), str(path), source or path.stem, lambda i: f"{path}:{_line(i)}")


def normalise_metadata(raw: pd.DataFrame, origin: str, source: str, where: Callable[[int], str]) -> MetadataTable:
    """Map a table of strings in any supported layout onto the canonical columns.

    Shared by the CSV reader and the DICOM-tag reader so both accept and report values the same way;
    `where(row index)` names a row in problem lines (a CSV line, or a DICOM file).
    """
    name_col = _find_column(raw, "image_name")
    if name_col is None:
        expected = ", ".join(COLUMN_ALIASES["image_name"])
        close = difflib.get_close_matches("image_name", list(raw.columns), n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise MelanomaError(f"{origin}: no image-name column; expected one of: {expected}{hint}")

    if raw.empty:
        raise MelanomaError(f"{origin}: has a header but no rows")
    problems: list[str] = []
    out = pd.DataFrame(index=raw.index)
    out["image_name"] = raw[name_col].str.strip()
    bad_names = out["image_name"].map(_bad_name).astype(bool)
    for index in out.index[bad_names]:
        problems.append(f"{where(index)}: image name {out.at[index, 'image_name']!r} is not a usable file name")
    out = out.loc[~bad_names]

    duplicated = out["image_name"].duplicated()
    for index in out.index[duplicated]:
        problems.append(f"{where(index)}: image name {out.at[index, 'image_name']} appears twice; kept the first")
    out = out[~duplicated]
    raw = raw.loc[out.index]

    patient = _column_or_empty(raw, "patient_id")
    lesion = _column_or_empty(raw, "lesion_id")
    out["patient_id"] = patient.where(patient != "", lesion).where(lambda s: s != "", out["image_name"])

    out["sex"] = _read_vocabulary(raw, "sex", _SEX_SYNONYMS, where, problems)
    out["age_approx"] = _read_age(raw, where, problems)
    out["site"] = _read_vocabulary(raw, "site", _SITE_SYNONYMS, where, problems)
    out["target"] = _read_target(raw, where, problems)
    source_values = _column_or_empty(raw, "source")
    out["source"] = source_values.where(source_values != "", source)
    return MetadataTable(out[CANONICAL_COLUMNS].reset_index(drop=True), problems)


def _bad_name(name: str) -> bool:
    return name in {"", ".", ".."} or "/" in name or "\\" in name or "\x00" in name or name.startswith(".")


def _column_or_empty(raw: pd.DataFrame, canonical: str) -> pd.Series:
    column = _find_column(raw, canonical)
    if column is None:
        return pd.Series("", index=raw.index, dtype=object)
    return raw[column].astype(object).str.strip()


def _read_vocabulary(
    raw: pd.DataFrame, canonical: str, synonyms: dict[str, str], where: Callable[[int], str], problems: list[str]
) -> pd.Series:
    column = _find_column(raw, canonical)
    values = pd.Series(None, index=raw.index, dtype=object)
    if column is None:
        return values
    for index, text in raw[column].items():
        key = " ".join(str(text).strip().lower().replace("_", " ").replace("/", " ").split())
        if key in _MISSING_WORDS:
            continue
        mapped = synonyms.get(key) or synonyms.get(str(text).strip().lower())
        if mapped is None:
            problems.append(f"{where(index)}: unknown {column} value {text!r}; treated as missing")
        values.at[index] = mapped
    return values


def _read_age(raw: pd.DataFrame, where: Callable[[int], str], problems: list[str]) -> pd.Series:
    column = _find_column(raw, "age_approx")
    if column is None:
        return pd.Series(np.nan, index=raw.index, dtype=float)
    text = raw[column].str.strip()
    ages = pd.to_numeric(text, errors="coerce")
    for index in ages.index[ages.isna() & ~text.str.lower().isin(_MISSING_WORDS)]:
        problems.append(f"{where(index)}: {column} {text[index]!r} is not a number; treated as missing")
    implausible = (ages < 0) | (ages > 120)
    for index in ages.index[implausible]:
        problems.append(f"{where(index)}: {column} {text[index]!r} is outside 0-120; treated as missing")
    return ages.mask(implausible).astype(float)


def _read_target(raw: pd.DataFrame, where: Callable[[int], str], problems: list[str]) -> pd.Series:
    """1 = melanoma, 0 = not, NaN = unknown (e.g. a test set)."""
    column = _find_column(raw, "target")
    if column is not None:
        text = raw[column].str.strip().str.lower()
        mapping = {"1": 1.0, "1.0": 1.0, "true": 1.0, "0": 0.0, "0.0": 0.0, "false": 0.0}
        target = text.map(mapping)
        for index in target.index[target.isna() & ~text.isin(_MISSING_WORDS)]:
            problems.append(f"{where(index)}: {column} {raw.at[index, column]!r} is not 0 or 1; treated as unknown")
        return target.astype(float)
    column = _find_column(raw, "diagnosis")
    if column is not None:
        text = raw[column].str.strip().str.lower()
        is_melanoma = text.str.contains("melanoma", regex=False) | (text == "mel")
        return is_melanoma.astype(float).mask(text.isin(_MISSING_WORDS))
    return pd.Series(np.nan, index=raw.index, dtype=float)


def read_duplicates(path: Path) -> set[str]:
    """The second image of each pair in the official ISIC 2020 duplicates CSV (image_name_1, image_name_2)."""
    frame = read_csv_text(path)
    if "image_name_2" not in frame.columns:
        raise MelanomaError(f"{path}: expected columns image_name_1,image_name_2 (the official duplicates list)")
    return set(frame["image_name_2"].str.strip()) - {""}
