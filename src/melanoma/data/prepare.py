"""raw images + metadata CSV -> DATASET dir (`manifest.csv`, `images/`, `dataset.json`).

DICOM images may come without a CSV: their tags give the patient id, sex, age and site (target unknown).

Each image is decoded once, centre-cropped and resized, and cached as a JPEG, so training never touches the
23 GB originals again. The prepared image file is written atomically and is itself the record that the work
is done: a killed run, re-run, skips it. Several sources can be prepared into one dataset.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pandas as pd
from tqdm import tqdm

from melanoma import __version__
from melanoma.config import PrepareConfig, atomic_write_text
from melanoma.data.dicom import DICOM_EXTENSIONS, metadata_from_dicom
from melanoma.data.images import ImageSource, load_image
from melanoma.data.metadata import CANONICAL_COLUMNS, MetadataTable, read_duplicates, read_metadata
from melanoma.errors import MelanomaError

MANIFEST = "manifest.csv"
DATASET_INFO = "dataset.json"
IMAGES_DIR = "images"
MANIFEST_COLUMNS = [*CANONICAL_COLUMNS, "path", "split"]
JPEG_QUALITY = 95


@dataclass
class PrepareResult:
    out: Path
    prepared: int = 0
    already_there: int = 0
    problems: list[str] = field(default_factory=list)
    total_rows: int = 0


def read_manifest(data_dir: Path) -> pd.DataFrame:
    """The manifest of a prepared dataset, with a one-line error when `data_dir` is not one."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise MelanomaError(f"{data_dir}: not a prepared dataset (no {MANIFEST}); run `melanoma prepare` first")
    frame = pd.read_csv(
        path,
        dtype={
            "image_name": str,
            "patient_id": str,
            "sex": str,
            "site": str,
            "source": str,
            "path": str,
            "split": str,
        },
        keep_default_na=False,
        na_values={"age_approx": [""], "target": [""]},
    )
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise MelanomaError(f"{path}: missing column(s) {', '.join(missing)}")
    outside = frame.index[~frame["path"].map(_is_image_path)]
    if len(outside):
        row = outside[0]
        raise MelanomaError(
            f"{path}:{row + 2}: path {frame.at[row, 'path']!r} is not a file in {IMAGES_DIR}/; "
            f"a manifest may not point outside its dataset"
        )
    for column in ("sex", "site"):
        frame[column] = frame[column].replace("", None)
    return frame


def _is_image_path(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return len(parts) == 2 and parts[0] == IMAGES_DIR and parts[1] not in {"", ".", ".."} and "\\" not in path


def write_manifest(data_dir: Path, frame: pd.DataFrame) -> None:
    frame = frame[MANIFEST_COLUMNS].astype({"target": "Int64"})
    atomic_write_text(Path(data_dir) / MANIFEST, frame.to_csv(index=False))


def prepare(config: PrepareConfig) -> PrepareResult:
    out = Path(config.out)
    if config.size < 16:
        raise MelanomaError(f"--size {config.size}: must be at least 16 pixels")
    info = _check_out_dir(out, config.size)
    source = ImageSource(Path(config.images))
    source_name = config.source or source.name
    if config.metadata is not None:
        table = read_metadata(Path(config.metadata), source=source_name)
    found, index_problems = source.index()
    if not found:
        raise MelanomaError(f"{config.images}: no JPEG or PNG images found (nor DICOM .dcm files)")
    if config.metadata is None:
        table = _metadata_from_dicom_tags(source, found, source_name)
    metadata_name = config.metadata or f"the DICOM tags in {config.images}"
    result = PrepareResult(out=out, problems=list(table.problems), total_rows=len(table.frame))
    rows = table.frame
    if config.duplicates is not None:
        dropped = read_duplicates(Path(config.duplicates))
        keep = ~rows["image_name"].isin(dropped)
        print(f"Dropping {int((~keep).sum())} duplicate images listed in {config.duplicates}")
        rows = rows[keep]

    result.problems += index_problems
    has_image = rows["image_name"].isin(found)
    result.problems += [
        f"{metadata_name}: {name}: no image named {name} in {config.images}"
        for name in rows.loc[~has_image, "image_name"]
    ]
    rows = rows[has_image]
    listed = set(table.frame["image_name"])
    result.problems += [
        f"{config.images}/{found[name]}: no row for {name} in {metadata_name}" for name in found if name not in listed
    ]

    out.joinpath(IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / DATASET_INFO, json.dumps(info, indent=2))  # marks the folder as ours from the start
    for leftover in out.joinpath(IMAGES_DIR).glob(".*.tmp"):  # from a run killed mid-write
        leftover.unlink(missing_ok=True)
    manifest = read_manifest(out) if (out / MANIFEST).exists() else pd.DataFrame(columns=MANIFEST_COLUMNS)
    new_rows = rows[~rows["image_name"].isin(set(manifest["image_name"]))].copy()
    result.already_there = len(rows) - len(new_rows)
    new_rows["path"] = [f"{IMAGES_DIR}/{name}.jpg" for name in new_rows["image_name"]]
    new_rows["split"] = ""

    tasks = [
        (name, found[name])
        for name, path in zip(new_rows["image_name"], new_rows["path"], strict=True)
        if not (out / path).exists()
    ]
    failed = _prepare_images(source, tasks, out / IMAGES_DIR, config.size, config.workers)
    result.problems += [f"{config.images}/{found[name]}: {reason}" for name, reason in failed.items()]
    new_rows = new_rows[~new_rows["image_name"].isin(failed)]
    result.prepared = len(new_rows)

    frames = [f for f in (manifest, new_rows[MANIFEST_COLUMNS]) if len(f)]
    combined = pd.concat(frames, ignore_index=True) if frames else manifest
    if combined.empty:
        raise MelanomaError(
            f"{config.images}: no image could be prepared ({len(result.problems)} problems listed above)"
        )
    write_manifest(out, combined)
    info.setdefault("sources", []).append(
        {
            "source": source_name,
            "images": str(config.images),
            "metadata": str(config.metadata) if config.metadata is not None else "DICOM tags",
            "rows": result.total_rows,
            "prepared": result.prepared,
            "problems": len(result.problems),
            "prepared_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "melanoma_version": __version__,
        }
    )
    atomic_write_text(out / DATASET_INFO, json.dumps(info, indent=2))
    return result


def _metadata_from_dicom_tags(source: ImageSource, found: dict[str, str], source_name: str) -> MetadataTable:
    """Without a metadata CSV, DICOM images describe themselves; JPEG and PNG images cannot."""
    not_dicom = [member for member in found.values() if Path(member).suffix.lower() not in DICOM_EXTENSIONS]
    if not_dicom:
        raise MelanomaError(
            f"{source.root}: --metadata CSV is required: {len(not_dicom)} images (e.g. {not_dicom[0]}) are not "
            "DICOM files, which alone carry their own patient metadata"
        )
    return metadata_from_dicom(source, found, source_name)


def _check_out_dir(out: Path, size: int) -> dict:
    """Refuse to mix image sizes or to write into a folder that holds something else."""
    info_path = out / DATASET_INFO
    if info_path.exists():
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError:
            raise MelanomaError(f"{info_path}: unreadable; is {out} a melanoma dataset?") from None
        if info.get("size") != size:
            raise MelanomaError(
                f"{out}: holds a dataset prepared at --size {info.get('size')}, not {size}; use another --out"
            )
        return info
    if out.exists() and any(out.iterdir()):
        raise MelanomaError(f"{out}: folder is not empty and holds no melanoma dataset; use a new or empty --out")
    return {"format": "melanoma-dataset", "version": 1, "size": size, "image_format": f"JPEG q{JPEG_QUALITY}"}


def _prepare_images(
    source: ImageSource, tasks: list[tuple[str, str]], images_dir: Path, size: int, workers: int | None
) -> dict[str, str]:
    """Prepare images in parallel with a progress bar; return {image name: reason} for those that failed."""
    if not tasks:
        return {}
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    jobs = [(source, member, images_dir / f"{name}.jpg", size) for name, member in tasks]
    failed: dict[str, str] = {}
    progress = tqdm(total=len(jobs), desc="prepare", unit="img", disable=None)
    if workers == 1:
        outcomes = map(_prepare_one, jobs)
    else:
        executor = ProcessPoolExecutor(max_workers=workers)
        outcomes = executor.map(_prepare_one, jobs, chunksize=8)
    try:
        for (name, _), reason in zip(tasks, outcomes, strict=True):
            if reason is not None:
                failed[name] = reason
            progress.update()
    finally:
        progress.close()
        if workers > 1:
            executor.shutdown(cancel_futures=True)
    return failed


def _prepare_one(job: tuple[ImageSource, str, Path, int]) -> str | None:
    """Decode one raw image and write it atomically; a reason string if it cannot be used."""
    source, member, target, size = job
    try:
        image = load_image(source.read_bytes(member), size)
    except (ValueError, OSError) as exc:
        return str(exc)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        handle.write(buffer.getvalue())
    os.replace(tmp, target)
    return None
