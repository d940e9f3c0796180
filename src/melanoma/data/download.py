"""`melanoma download`: the official ISIC challenge files and ISIC Archive subsets, resumable and verified.

Every file streams to ``NAME.part`` beside its final name and is renamed into place only once its size (and
SHA-256 where known) check out, so a file under its real name is always complete: a re-run skips it, and
resumes a ``NAME.part`` with an HTTP Range request, restarting cleanly when the server ignores the range or
the remote file changed (``If-Range`` with the validator kept in ``NAME.part.json``). HTTP is the standard
library's urllib (proxies from the usual environment variables, no extra dependency); tqdm draws the bars.
Every request loop is bounded: retries without progress, attempts per file, and pages of an API listing.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pandas as pd
from tqdm import tqdm

from melanoma import __version__
from melanoma.config import DownloadConfig, atomic_write_text
from melanoma.data.metadata import read_csv_text
from melanoma.errors import MelanomaError

# Both official hosts serve the same paths ("2020/...", "2019/..."): the first is linked from the ISIC 2020
# challenge site and the 2019 data page, the second from today's challenge.isic-archive.com/data page.
CHALLENGE_HOSTS = ("https://isic-challenge-data.s3.amazonaws.com/", "https://isic-archive.s3.amazonaws.com/challenges/")
ISIC_API_URL = "https://api.isic-archive.com/api/v2/"
BASE_URL_ENV = "MELANOMA_ISIC_BASE_URL"
API_URL_ENV = "MELANOMA_ISIC_API_URL"
USER_AGENT = f"melanoma/{__version__}"
CHUNK_BYTES = 1 << 20
BACKOFF_S = 2.0  # wait before the first retry without progress; doubles each time, up to MAX_BACKOFF_S
MAX_BACKOFF_S = 60.0
MAX_ATTEMPTS = 100  # requests per file, progressing or not: the hard bound on one file's loop
API_PAGE_SIZE = 100
DATASETS = ("isic2020", "isic2019", "archive")
_ISIC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CONTENT_RANGE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")


@dataclass(frozen=True)
class RemoteFile:
    """One official challenge file: its path under a challenge host and how to recognise it complete."""

    dataset: str  # isic2020, isic2019
    part: str  # train, test
    path: str  # under a host in CHALLENGE_HOSTS
    published: str  # the size printed on the official data page
    size: int | None = None  # exact bytes where verified; None: the server's Content-Length is checked instead
    sha256: str | None = None
    image_format: str | None = None  # jpeg or dicom for an image archive, None for a CSV

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


# The official files. `published` is what https://challenge.isic-archive.com/data and
# https://challenge2020.isic-archive.com print (the duplicates list really is 11.5 kB, not the printed 2 MB).
# Exact sizes and SHA-256 are given only where public byte-level records of a download from the official
# bucket agree; every other file is checked against the Content-Length the server announces.
CHALLENGE_FILES = (
    RemoteFile("isic2020", "train", "2020/ISIC_2020_Training_JPEG.zip", "23 GB", 24_707_698_022, None, "jpeg"),
    RemoteFile("isic2020", "train", "2020/ISIC_2020_Train_DICOM_corrected.zip", "23.0 GB", image_format="dicom"),
    RemoteFile("isic2020", "train", "2020/ISIC_2020_Training_GroundTruth.csv", "2 MB"),
    RemoteFile(
        "isic2020",
        "train",
        "2020/ISIC_2020_Training_GroundTruth_v2.csv",
        "2 MB",
        2_387_418,
        "a1c7c97c59e5f49232dfe3b6f6817efaaee5dbf9bcb4ce584c1889e641be5c4e",
    ),
    RemoteFile(
        "isic2020",
        "train",
        "2020/ISIC_2020_Training_Duplicates.csv",
        "2 MB",
        11_500,
        "ddfd6c2d42430bd3581f3b2116bdb1433462a7109c715a02bf7f51115fcfabce",
    ),
    RemoteFile("isic2020", "test", "2020/ISIC_2020_Test_JPEG.zip", "6.7 GB", image_format="jpeg"),
    RemoteFile("isic2020", "test", "2020/ISIC_2020_Test_DICOM_corrected.zip", "6.7 GB", image_format="dicom"),
    RemoteFile("isic2020", "test", "2020/ISIC_2020_Test_Metadata.csv", "458 KB"),
    RemoteFile("isic2019", "train", "2019/ISIC_2019_Training_Input.zip", "9.1 GB", image_format="jpeg"),
    RemoteFile("isic2019", "train", "2019/ISIC_2019_Training_GroundTruth.csv", "1 MB"),
    RemoteFile("isic2019", "train", "2019/ISIC_2019_Training_Metadata.csv", "1 MB"),
    RemoteFile("isic2019", "test", "2019/ISIC_2019_Test_Input.zip", "3.6 GB", image_format="jpeg"),
    RemoteFile("isic2019", "test", "2019/ISIC_2019_Test_GroundTruth.csv", "454 KB"),
    RemoteFile("isic2019", "test", "2019/ISIC_2019_Test_Metadata.csv", "287 KB"),
)


@dataclass
class DownloadResult:
    out: Path
    files: list[tuple[str, str]] = field(default_factory=list)  # (path under `out`, what happened)
    next_steps: list[str] = field(default_factory=list)  # the `melanoma prepare` commands that read them


class _Transient(Exception):
    """A failure worth retrying (connection lost, timeout, HTTP 5xx): the .part is kept."""


class _NotFound(Exception):
    """This host does not serve the file (404, 410, or S3's 403 for a missing key): try the next host."""


def download(config: DownloadConfig) -> DownloadResult:
    """Fetch what `config` names into `config.out`; a re-run skips complete files and resumes partial ones."""
    _validate(config)
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise MelanomaError(f"{out}: exists and is not a folder; give a folder as --out")
    out.mkdir(parents=True, exist_ok=True)
    if config.dataset == "archive":
        return download_archive(config, out)
    files = select_files(config.dataset, config.part, config.image_format)
    hosts = _hosts(config.base_url, BASE_URL_ENV, CHALLENGE_HOSTS)
    print(f"{len(files)} files ({', '.join(f.published for f in files)} as published) into {out}")
    result = DownloadResult(out)
    for remote in files:
        urls = [urllib.parse.urljoin(host, remote.path) for host in hosts]
        status = fetch(urls, out / remote.name, size=remote.size, sha256=remote.sha256, config=config)
        result.files.append((remote.name, status))
    if config.dataset == "isic2019":
        for part in _parts(config.part):
            combined = combine_isic2019(out, part)
            if combined is not None:
                result.files.append((combined.name, "written (metadata + MEL column as target)"))
    result.next_steps = _next_steps(config, out)
    return result


def select_files(dataset: str, part: str, image_format: str) -> list[RemoteFile]:
    """The table rows for one dataset, part (train, test, all) and image format."""
    if dataset == "isic2019" and image_format != "jpeg":
        raise MelanomaError(f"--format {image_format}: ISIC 2019 is published as JPEG only")
    return [
        f
        for f in CHALLENGE_FILES
        if f.dataset == dataset and f.part in _parts(part) and f.image_format in (None, image_format)
    ]


def fetch(
    urls: Sequence[str],
    target: Path,
    *,
    size: int | None,
    sha256: str | None,
    config: DownloadConfig,
    bar: bool = True,
) -> str:
    """Make `target` a complete copy of the file at the first of `urls` that has it; say what was done.

    Hosts are tried in order only while they answer "not found"; any other failure is final for this run
    and keeps the `.part` (except when its bytes are known to be wrong) for the next run to resume.
    `bar` draws a byte progress bar (off for the many small files of an archive subset).
    """
    target = Path(target)
    if target.exists():
        actual = target.stat().st_size
        if size is None or actual == size:
            return "already complete"
        tqdm.write(f"{target}: {actual:,} bytes, not the {size:,} expected; fetching it again (replaced once complete)")
    missing = []
    for url in urls:
        try:
            resumed = _fetch_url(url, target, size, config, bar)
        except _NotFound as exc:
            missing.append(f"{url}: {exc}")
            continue
        _verify_and_move(url, target, size, sha256)
        return "resumed and complete" if resumed else "downloaded"
    raise MelanomaError("; ".join(missing))


def _fetch_url(url: str, target: Path, size: int | None, config: DownloadConfig, bar: bool) -> bool:
    """Bring `target`.part to its full length from `url`, retrying; True when it continued an earlier part."""
    part = _part_path(target)
    resumed = part.exists() and part.stat().st_size > 0
    failures = 0
    for _ in range(MAX_ATTEMPTS):
        before = _size_of(part)
        try:
            _attempt(url, target, size, config.timeout, bar)
            return resumed
        except _Transient as exc:
            progressed = _size_of(part) > before
            failures = 0 if progressed else failures + 1
            if failures > config.retries:
                kept = f"; {part.name} keeps {_size_of(part):,} bytes" if part.exists() else ""
                raise MelanomaError(
                    f"{url}: {exc} (gave up after {config.retries} retries){kept}; run the same command again to resume"
                ) from None
            retry = "resuming" if part.exists() and _size_of(part) else "retrying"
            tqdm.write(f"{target.name}: {exc}; {retry}")
            if not progressed:
                time.sleep(min(BACKOFF_S * 2 ** (failures - 1), MAX_BACKOFF_S))
    raise MelanomaError(f"{url}: no complete copy after {MAX_ATTEMPTS} attempts; run the same command again to resume")


def _attempt(url: str, target: Path, size: int | None, timeout: float, bar: bool) -> None:
    """One request: append the missing bytes to the .part (or restart it); raise _Transient when cut short."""
    part, state_path = _part_path(target), _state_path(target)
    offset = _size_of(part)
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    state = _read_state(state_path) if offset else {}
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if state.get("validator"):
            headers["If-Range"] = state["validator"]
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            _handle_http_error(exc, url, part, offset)
        return
    except urllib.error.URLError as exc:
        raise _Transient(f"cannot connect ({_reason(exc.reason)})") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as exc:
        raise _Transient(f"no answer ({_reason(exc)})") from None
    with response:
        _reject_html_type(response.headers.get("Content-Type", ""), url, target)
        total = _expected_total(response, part, offset)
        if response.status != 206:
            offset = 0
        if size is not None and total is not None and total != size:
            raise MelanomaError(
                f"{url}: the server offers {total:,} bytes but the official file has {size:,}; not downloaded "
                "(the file may have changed upstream)"
            )
        first = _read(response, offset)
        if offset == 0:
            _reject_html_body(first, url, target)
        _write_state(state_path, url, response.headers, total)
        expected = total if total is not None else size
        if expected is not None:
            _check_free_space(part, expected - offset)
        received = _stream(response, first, target.name, part, offset, expected, bar)
    if expected is not None and received < expected:
        raise _Transient(f"connection closed after {received:,} of {expected:,} bytes")


def _handle_http_error(exc: urllib.error.HTTPError, url: str, part: Path, offset: int) -> None:
    """Classify an HTTP error status: not here, retry later, already complete (416), or fatal."""
    code = exc.code
    if code == 416 and offset:
        total = _parse_content_range(exc.headers.get("Content-Range", ""))[2]
        if total == offset:
            return
        part.unlink(missing_ok=True)
        raise _Transient("the partial file does not match the server's; restarting it")
    if code in (404, 410):
        raise _NotFound(f"not found (HTTP {code})")
    if code == 403:
        raise _NotFound("not found or not public (HTTP 403)")
    if code in (408, 425, 429) or code >= 500:
        raise _Transient(f"HTTP {code} {exc.reason}")
    raise MelanomaError(f"{url}: HTTP {code} {exc.reason}")


def _expected_total(response: http.client.HTTPResponse, part: Path, offset: int) -> int | None:
    """Total file size announced by a 206 (Content-Range) or 200 (Content-Length) answer."""
    if response.status == 206:
        start, _, total = _parse_content_range(response.headers.get("Content-Range", ""))
        if start != offset:
            part.unlink(missing_ok=True)
            raise _Transient(f"the server sent bytes from {start}, not {offset}; restarting")
        return total
    if offset:
        tqdm.write(
            f"{part.name}: the server sent the whole file, not the rest (it ignores ranges, or the file changed); "
            "restarting from the beginning"
        )
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _stream(
    response: http.client.HTTPResponse, first: bytes, name: str, part: Path, offset: int, total: int | None, bar: bool
) -> int:
    """Append the body to `part` (or rewrite it from byte 0) with a progress bar; return the bytes now held."""
    chunk = first
    received = offset
    try:
        with (
            part.open("ab" if offset else "wb") as handle,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=name,
                disable=None if bar else True,
                leave=False,
            ) as progress,
        ):
            while chunk:
                _write_chunk(handle, chunk)
                received += len(chunk)
                progress.update(len(chunk))
                chunk = _read(response, received)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise MelanomaError(
                f"{part}: disk full after {received:,} bytes; free some space and run the same command again to resume"
            ) from None
        raise MelanomaError(f"{part}: cannot write ({exc.strerror or exc})") from None
    return received


def _read(response: http.client.HTTPResponse, received: int) -> bytes:
    try:
        return response.read(CHUNK_BYTES)
    except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as exc:
        raise _Transient(f"connection lost after {received:,} bytes ({_reason(exc)})") from None


def _write_chunk(handle: BinaryIO, chunk: bytes) -> None:
    handle.write(chunk)


def _verify_and_move(url: str, target: Path, size: int | None, sha256: str | None) -> None:
    """Check the finished .part against the table, then rename it into place (the only way a file appears)."""
    part = _part_path(target)
    actual = part.stat().st_size
    if size is not None and actual != size:
        part.unlink()
        raise MelanomaError(f"{url}: received {actual:,} bytes but the official file has {size:,}; deleted the copy")
    if sha256 is not None:
        digest = _sha256(part)
        if digest != sha256.lower():
            part.unlink()
            _state_path(target).unlink(missing_ok=True)
            raise MelanomaError(
                f"{url}: SHA-256 {digest[:16]}... differs from the official {sha256[:16]}...; deleted the copy, "
                "run again to fetch it afresh"
            )
    os.replace(part, target)
    _state_path(target).unlink(missing_ok=True)


def _reject_html_type(content_type: str, url: str, target: Path) -> None:
    if content_type.split(";")[0].strip().lower() == "text/html" and target.suffix.lower() not in {".html", ".htm"}:
        raise MelanomaError(
            f"{url}: the server sent an HTML page instead of {target.name} (a proxy, captive portal or login page?)"
        )


def _reject_html_body(first: bytes, url: str, target: Path) -> None:
    """A page served with a binary content type still starts like HTML; nothing of it is written."""
    head = first.lstrip()[:16].lower()
    if head.startswith((b"<!doctype html", b"<html")) and target.suffix.lower() not in {".html", ".htm"}:
        raise MelanomaError(
            f"{url}: the server sent an HTML page instead of {target.name} (a proxy, captive portal or login page?)"
        )


def _check_free_space(part: Path, needed: int) -> None:
    try:
        free = shutil.disk_usage(part.parent).free
    except OSError:
        return
    if needed > free:
        raise MelanomaError(
            f"{part.parent}: {part.name.removesuffix('.part')} needs {_human(needed)} more but only {_human(free)} "
            "is free; free some space and run the same command again"
        )


def _part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _state_path(target: Path) -> Path:
    return target.with_name(target.name + ".part.json")


def _size_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _read_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(path: Path, url: str, headers: http.client.HTTPMessage, total: int | None) -> None:
    """Keep the server's validator so a later resume is refused (200, full file) if the file changed."""
    etag = headers.get("ETag") or ""
    validator = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified") or ""
    atomic_write_text(path, json.dumps({"url": url, "validator": validator, "total": total}))


def _parse_content_range(value: str) -> tuple[int | None, int | None, int | None]:
    match = _CONTENT_RANGE.match(value.strip())
    if match is None:
        raise _Transient(f"unreadable Content-Range {value!r}")
    start, end, total = match.groups()
    return (
        int(start) if start is not None else None,
        int(end) if end is not None else None,
        int(total) if total != "*" else None,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _reason(error: object) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _human(size: int) -> str:
    return tqdm.format_sizeof(size, "B")


def _hosts(configured: str | None, env: str, default: Sequence[str]) -> list[str]:
    """The configured base URL (flag or YAML, then environment variable), else the official hosts."""
    chosen = configured or os.environ.get(env)
    if not chosen:
        return list(default)
    return [chosen if chosen.endswith("/") else chosen + "/"]


def _parts(part: str) -> tuple[str, ...]:
    return ("train", "test") if part == "all" else (part,)


def _validate(config: DownloadConfig) -> None:
    if config.dataset not in DATASETS:
        raise MelanomaError(f"download: unknown dataset {config.dataset!r}; choose one of {', '.join(DATASETS)}")
    if config.part not in {"train", "test", "all"}:
        raise MelanomaError(f"--part {config.part}: choose train, test or all")
    if config.image_format not in {"jpeg", "dicom"}:
        raise MelanomaError(f"--format {config.image_format}: choose jpeg or dicom")
    if config.limit is not None and config.limit < 1:
        raise MelanomaError(f"--limit {config.limit}: must be at least 1")
    if config.retries < 0 or config.timeout <= 0 or config.workers < 1:
        raise MelanomaError("download: --retries must be >= 0, --timeout > 0 and --workers >= 1")


def combine_isic2019(out: Path, part: str) -> Path | None:
    """ISIC 2019 keeps age/sex/site and the diagnosis in two CSVs; join them with MEL as `target` for prepare."""
    stem = "Training" if part == "train" else "Test"
    truth_path, metadata_path = out / f"ISIC_2019_{stem}_GroundTruth.csv", out / f"ISIC_2019_{stem}_Metadata.csv"
    if not (truth_path.exists() and metadata_path.exists()):
        return None
    truth, metadata = read_csv_text(truth_path), read_csv_text(metadata_path)
    if "image" not in truth.columns or "mel" not in truth.columns or "image" not in metadata.columns:
        raise MelanomaError(f"{truth_path}: expected columns image and MEL (the official ISIC 2019 ground truth)")
    target = truth[["image", "mel"]].rename(columns={"mel": "target"})
    combined = metadata.merge(target, on="image", how="outer")
    path = out / f"ISIC_2019_{stem}_Metadata_Target.csv"
    atomic_write_text(path, combined.to_csv(index=False))
    return path


def _next_steps(config: DownloadConfig, out: Path) -> list[str]:
    """The prepare command for each downloaded part (the DATA folder name is only a suggestion)."""
    steps = []
    for part in _parts(config.part):
        images = next(
            (
                f.name
                for f in CHALLENGE_FILES
                if f.dataset == config.dataset and f.part == part and f.image_format == config.image_format
            ),
            "IMAGES.zip",
        )
        data = f"data/{config.dataset}" if part == "train" else f"data/{config.dataset}-test"
        if config.dataset == "isic2020" and part == "train":
            csvs = f"--metadata {out / 'ISIC_2020_Training_GroundTruth_v2.csv'} "
            csvs += f"--duplicates {out / 'ISIC_2020_Training_Duplicates.csv'}"
        elif config.dataset == "isic2020":
            csvs = f"--metadata {out / 'ISIC_2020_Test_Metadata.csv'}"
        else:
            stem = "Training" if part == "train" else "Test"
            csvs = f"--metadata {out / f'ISIC_2019_{stem}_Metadata_Target.csv'}"
        steps.append(f"melanoma prepare --images {out / images} {csvs} --out {data}")
    return steps


def download_archive(config: DownloadConfig, out: Path) -> DownloadResult:
    """Images + metadata.csv (ISIC Archive export layout) for a collection and/or search of the ISIC Archive.

    Uses the public API v2 that the official `isic-cli` client wraps (`images/search/` with cursor pagination,
    each image's `files.full.url` and `size`), page by page so the signed image URLs are used while fresh.
    """
    if not (config.collection or config.search or config.limit):
        raise MelanomaError(
            "download archive: give --collection, --search or --limit (the whole ISIC Archive is several hundred "
            "thousand images; the challenge files are `melanoma download isic2020`)"
        )
    api = _hosts(config.api_url, API_URL_ENV, [ISIC_API_URL])[0]
    page_size = min(API_PAGE_SIZE, config.limit or API_PAGE_SIZE)
    query = {"query": config.search or "", "collections": config.collection or "", "limit": str(page_size)}
    images_dir = out / "images"
    images_dir.mkdir(exist_ok=True)
    records: list[dict] = []
    statuses: Counter[str] = Counter()
    with tqdm(total=config.limit, desc="archive images", unit="img", disable=None) as bar:
        for page in _api_pages(f"{api}images/search/?{urllib.parse.urlencode(query)}", api, config):
            page = page[: config.limit - len(records)] if config.limit else page
            with ThreadPoolExecutor(max_workers=config.workers) as pool:
                for record, status in pool.map(lambda image: _fetch_archive_image(image, images_dir, config), page):
                    records.append(record)
                    statuses[status] += 1
                    bar.update()
            if config.limit and len(records) >= config.limit:
                break
    if not records:
        raise MelanomaError(f"{api}images/search/: no images match {_describe(config)}")
    _write_archive_metadata(out, records, config)
    result = DownloadResult(out)
    result.files = [(f"images/ ({count} images)", status) for status, count in sorted(statuses.items())]
    result.files += [("metadata.csv", f"written ({len(records)} rows)"), ("attribution.txt", "written")]
    result.next_steps = [f"melanoma prepare --images {images_dir} --metadata {out / 'metadata.csv'} --out data/archive"]
    return result


def _api_pages(url: str, api: str, config: DownloadConfig) -> Iterator[list[dict]]:
    """Follow the cursor's `next` links; bounded by twice the page count the first answer announces."""
    origin = urllib.parse.urlsplit(api)[:2]
    max_pages: int | None = None
    pages = 0
    while url:
        pages += 1
        if max_pages is not None and pages > max_pages:
            raise MelanomaError(f"{url}: the API keeps paging past the images it announced; stopping")
        payload = _get_json(url, config)
        results = payload.get("results") if isinstance(payload, dict) else None
        if not isinstance(results, list):
            raise MelanomaError(f"{url}: not an ISIC Archive API answer (no 'results' list)")
        if max_pages is None:
            count = payload.get("count")
            wanted = min(count, config.limit or count) if isinstance(count, int) else config.limit or 10**6
            max_pages = 2 * -(-wanted // max(len(results), 1)) + 2
        yield [image for image in results if isinstance(image, dict)]
        link = payload.get("next")
        url = urllib.parse.urljoin(url, link) if isinstance(link, str) and link else ""
        if url and urllib.parse.urlsplit(url)[:2] != origin:
            raise MelanomaError(f"{url}: the API's next page is on another host than {api}; stopping")


def _get_json(url: str, config: DownloadConfig) -> object:
    """GET a JSON document with the same bounded retries as file downloads; one clear line on failure."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "application/json"})
    for failures in range(config.retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=config.timeout) as response:
                _reject_html_type(response.headers.get("Content-Type", ""), url, Path("answer.json"))
                body = response.read()
            break
        except urllib.error.HTTPError as exc:
            with exc:
                detail = exc.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
            if exc.code not in (408, 429) and exc.code < 500:
                raise MelanomaError(f"{url}: HTTP {exc.code} {exc.reason} {detail}".rstrip()) from None
            reason = f"HTTP {exc.code} {exc.reason}"
        except urllib.error.URLError as exc:
            reason = f"cannot connect ({_reason(exc.reason)})"
        except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as exc:
            reason = f"no answer ({_reason(exc)})"
        if failures == config.retries:
            raise MelanomaError(f"{url}: {reason} (gave up after {config.retries} retries)")
        tqdm.write(f"ISIC Archive API: {reason}; retrying")
        time.sleep(min(BACKOFF_S * 2**failures, MAX_BACKOFF_S))
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MelanomaError(f"{url}: the answer is not JSON") from None


def _fetch_archive_image(image: dict, images_dir: Path, config: DownloadConfig) -> tuple[dict, str]:
    """Download one listed image (skipped when complete) and return its metadata row in the export layout."""
    isic_id = str(image.get("isic_id", ""))
    full = (image.get("files") or {}).get("full") or {}
    url, size = full.get("url"), full.get("size")
    if not _ISIC_ID.match(isic_id) or not isinstance(url, str):
        raise MelanomaError(f"ISIC Archive API: an image without a usable isic_id or file URL ({isic_id!r})")
    suffix = Path(urllib.parse.urlsplit(url).path).suffix.lower()
    target = images_dir / f"{isic_id}{suffix if suffix in {'.jpg', '.jpeg', '.png'} else '.jpg'}"
    status = fetch([url], target, size=size if isinstance(size, int) else None, sha256=None, config=config, bar=False)
    metadata = image.get("metadata") or {}
    record = {
        "isic_id": isic_id,
        "attribution": image.get("attribution", ""),
        "copyright_license": image.get("copyright_license", ""),
    }
    for group in ("acquisition", "clinical"):
        values = metadata.get(group) if isinstance(metadata, dict) else None
        record.update(values if isinstance(values, dict) else {})
    return record, status


def _write_archive_metadata(out: Path, records: list[dict], config: DownloadConfig) -> None:
    """metadata.csv in the layout of the ISIC Archive / isic-cli export, plus the attributions the licences ask."""
    first = ["isic_id", "attribution", "copyright_license"]
    columns = first + sorted({key for record in records for key in record} - set(first))
    atomic_write_text(out / "metadata.csv", pd.DataFrame(records, columns=columns).to_csv(index=False))
    licences = Counter(str(r.get("copyright_license") or "unknown") for r in records)
    attributions = Counter(str(r.get("attribution") or "Anonymous") for r in records)
    lines = [
        f"ISIC Archive images ({_describe(config)}), downloaded with melanoma {__version__}.",
        "Licences: " + ", ".join(f"{name} ({count} images)" for name, count in sorted(licences.items())),
        "",
        "Attributions:",
        *(name for name, _ in sorted(attributions.items(), key=lambda item: (-item[1], item[0]))),
    ]
    atomic_write_text(out / "attribution.txt", "\n".join(lines) + "\n")


def _describe(config: DownloadConfig) -> str:
    parts = [
        f"collection {config.collection}" if config.collection else "",
        f"search {config.search!r}" if config.search else "",
    ]
    return ", ".join(p for p in parts if p) or f"the first {config.limit} images"
