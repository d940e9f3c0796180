"""`melanoma download` against a local HTTP server (127.0.0.1 only) that serves small generated files."""

import errno
import hashlib
import io
import json
import random
import socket
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest

from melanoma.cli import main
from melanoma.config import DownloadConfig, PrepareConfig
from melanoma.data import download as download_module
from melanoma.data.download import RemoteFile, download, fetch
from melanoma.data.prepare import prepare, read_manifest
from melanoma.errors import MelanomaError


class FakeServer:
    """Files by URL path, with switchable misbehaviour; every request is recorded as (path, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.content_types: dict[str, str] = {}
        self.script: dict[str, list[str]] = {}  # path -> how the next answers go: "cut" halfway, "503"; then normal
        self.ignore_range = False
        self.etag = '"v1"'
        self.api: dict[str, list[dict]] = {}  # path -> pages of an ISIC API listing, selected by ?cursor=N
        self.requests: list[tuple[str, str | None]] = []
        self.queries: list[dict[str, list[str]]] = []
        self.url = ""

    def served(self, path: str) -> list[str | None]:
        """The Range header of each request for `path`."""
        return [rng for requested, rng in self.requests if requested == path]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        """Quiet: the tests read `FakeServer.requests` instead."""

    def do_GET(self) -> None:
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        fake.requests.append((url.path, self.headers.get("Range")))
        if url.path in fake.api:
            query = parse_qs(url.query)
            fake.queries.append(query)
            page = fake.api[url.path][int(query.get("cursor", ["0"])[0])]
            return self.reply(200, json.dumps(page).encode(), "application/json")
        data = fake.files.get(url.path)
        if data is None:
            return self.reply(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
        start, status, headers = 0, 200, {"ETag": fake.etag}
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and not fake.ignore_range and (if_range is None or if_range == fake.etag):
            start = int(wanted.removeprefix("bytes=").removesuffix("-"))
            if start >= len(data):
                return self.reply(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
            status, headers["Content-Range"] = 206, f"bytes {start}-{len(data) - 1}/{len(data)}"
        content_type = fake.content_types.get(url.path, "application/octet-stream")
        action = fake.script[url.path].pop(0) if fake.script.get(url.path) else "ok"
        if action == "503":
            return self.reply(503, b"Slow Down", "text/plain")
        stop_at = (len(data) - start) // 2 if action == "cut" else None
        return self.reply(status, data[start:], content_type, headers, stop_at=stop_at)

    def reply(
        self, status: int, body: bytes, content_type: str, headers: dict | None = None, stop_at: int | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body if stop_at is None else body[:stop_at])
        self.wfile.flush()
        self.close_connection = stop_at is not None or self.close_connection


@pytest.fixture
def server(monkeypatch) -> Iterator[FakeServer]:
    """A loopback-only server, shut down after the test; retries do not wait and no proxy is consulted."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(download_module.BASE_URL_ENV, raising=False)
    monkeypatch.delenv(download_module.API_URL_ENV, raising=False)
    monkeypatch.setattr(download_module, "BACKOFF_S", 0.0)
    fake = FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.fake = fake  # type: ignore[attr-defined]
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def settings(out: Path, **overrides) -> DownloadConfig:
    return DownloadConfig(**({"dataset": "isic2020", "out": out, "retries": 2, "timeout": 10.0} | overrides))


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zip_of_images(raw_images: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as handle:
        for path in sorted(raw_images.iterdir()):
            handle.write(path, f"train/{path.name}")
    return buffer.getvalue()


@pytest.fixture
def isic2020_table(server: FakeServer, raw_data, monkeypatch) -> dict[str, bytes]:
    """Small stand-ins for the official 2020 training files, in the code's table and on the server."""
    images, metadata = raw_data
    pair = ",".join(pd.read_csv(metadata)["image_name"][:2])
    files = {
        "ISIC_2020_Training_JPEG.zip": zip_of_images(images),
        "ISIC_2020_Training_GroundTruth.csv": metadata.read_bytes(),
        "ISIC_2020_Training_GroundTruth_v2.csv": metadata.read_bytes(),
        "ISIC_2020_Training_Duplicates.csv": f"image_name_1,image_name_2\n{pair}\n".encode(),
    }
    table = (
        RemoteFile("isic2020", "train", "2020/ISIC_2020_Training_JPEG.zip", "tiny", image_format="jpeg"),
        RemoteFile("isic2020", "train", "2020/ISIC_2020_Training_GroundTruth.csv", "tiny"),
        RemoteFile(
            "isic2020",
            "train",
            "2020/ISIC_2020_Training_GroundTruth_v2.csv",
            "tiny",
            len(files["ISIC_2020_Training_GroundTruth_v2.csv"]),
            sha(files["ISIC_2020_Training_GroundTruth_v2.csv"]),
        ),
        RemoteFile(
            "isic2020",
            "train",
            "2020/ISIC_2020_Training_Duplicates.csv",
            "tiny",
            len(files["ISIC_2020_Training_Duplicates.csv"]),
        ),
    )
    monkeypatch.setattr(download_module, "CHALLENGE_FILES", table)
    server.files.update({f"/2020/{name}": data for name, data in files.items()})
    return files


def test_the_official_files_download_and_prepare_reads_them(isic2020_table, server, tmp_path: Path, capsys) -> None:
    raw = tmp_path / "raw"
    code = main(["download", "isic2020", "--out", str(raw), "--base-url", server.url])
    out = capsys.readouterr().out
    assert code == 0, out
    assert {p.name for p in raw.iterdir()} == set(isic2020_table)
    assert all((raw / name).read_bytes() == data for name, data in isic2020_table.items())
    command = next(line.split() for line in out.splitlines() if line.strip().startswith("melanoma prepare"))
    flags = dict(zip(command[2::2], command[3::2], strict=True))
    assert flags["--images"] == str(raw / "ISIC_2020_Training_JPEG.zip")
    result = prepare(
        PrepareConfig(
            images=Path(flags["--images"]),
            metadata=Path(flags["--metadata"]),
            duplicates=Path(flags["--duplicates"]),
            out=tmp_path / "data",
            size=32,
            workers=1,
        )
    )
    assert result.prepared == len(pd.read_csv(raw / "ISIC_2020_Training_GroundTruth_v2.csv")) - 1


def test_a_rerun_skips_complete_files_without_a_request(isic2020_table, server, tmp_path: Path) -> None:
    config = settings(tmp_path / "raw", base_url=server.url)
    download(config)
    requests = len(server.requests)
    result = download(config)
    assert len(server.requests) == requests
    assert {status for _, status in result.files} == {"already complete"}


def test_a_transfer_cut_in_the_middle_resumes_with_a_range_request(server, tmp_path: Path, capsys) -> None:
    data = payload(300_000)
    server.files["/2020/big.zip"] = data
    server.script["/2020/big.zip"] = ["cut"]
    target = tmp_path / "big.zip"
    status = fetch([server.url + "2020/big.zip"], target, size=len(data), sha256=sha(data), config=settings(tmp_path))
    assert status == "downloaded" and target.read_bytes() == data
    assert server.served("/2020/big.zip") == [None, f"bytes={len(data) // 2}-"]
    assert "connection closed after 150,000 of 300,000 bytes; resuming" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.zip"]


def test_an_interrupted_run_leaves_only_a_part_file_and_the_next_run_resumes_it(server, tmp_path: Path) -> None:
    data = payload(200_000, seed=1)
    server.files["/f.zip"] = data
    server.script["/f.zip"] = ["cut", "503", "503"]  # the connection drops, then the server is down for a while
    target = tmp_path / "f.zip"
    with pytest.raises(MelanomaError, match=r"f.zip: HTTP 503 .*gave up after 1 retries.*keeps 100,000 bytes.*again"):
        fetch([server.url + "f.zip"], target, size=None, sha256=None, config=settings(tmp_path, retries=1))
    assert not target.exists() and (tmp_path / "f.zip.part").stat().st_size == 100_000
    status = fetch([server.url + "f.zip"], target, size=None, sha256=sha(data), config=settings(tmp_path))
    assert status == "resumed and complete" and target.read_bytes() == data
    assert server.served("/f.zip") == [None, "bytes=100000-", "bytes=100000-", "bytes=100000-"]
    assert not (tmp_path / "f.zip.part").exists() and not (tmp_path / "f.zip.part.json").exists()


def test_a_part_killed_just_before_its_rename_is_finished_without_downloading_again(server, tmp_path: Path) -> None:
    data = payload(5000, seed=4)
    server.files["/m.csv"] = data
    (tmp_path / "m.csv.part").write_bytes(data)
    status = fetch([server.url + "m.csv"], tmp_path / "m.csv", size=None, sha256=sha(data), config=settings(tmp_path))
    assert status == "resumed and complete" and (tmp_path / "m.csv").read_bytes() == data
    assert server.served("/m.csv") == ["bytes=5000-"]  # answered 416 with the total, nothing sent again


@pytest.mark.parametrize("why", ["server ignores Range", "file changed upstream"])
def test_a_resume_the_server_cannot_honour_restarts_cleanly(server, tmp_path: Path, why: str, capsys) -> None:
    data = payload(50_000, seed=2)
    server.files["/g.csv"] = data
    (tmp_path / "g.csv.part").write_bytes(b"stale bytes of another version")
    (tmp_path / "g.csv.part.json").write_text(json.dumps({"validator": '"v0"'}))
    server.ignore_range = why == "server ignores Range"
    server.etag = '"v0"' if server.ignore_range else '"v1"'
    fetch([server.url + "g.csv"], tmp_path / "g.csv", size=None, sha256=None, config=settings(tmp_path))
    assert (tmp_path / "g.csv").read_bytes() == data
    assert server.served("/g.csv") == ["bytes=30-"]
    assert "the server sent the whole file, not the rest" in capsys.readouterr().out


def test_a_file_of_the_wrong_size_is_refused_and_nothing_looks_complete(server, tmp_path: Path) -> None:
    server.files["/h.zip"] = payload(1000)
    with pytest.raises(MelanomaError, match=r"h.zip: the server offers 1,000 bytes but the official file has 1,234"):
        fetch([server.url + "h.zip"], tmp_path / "h.zip", size=1234, sha256=None, config=settings(tmp_path))
    assert not (tmp_path / "h.zip").exists()


def test_a_checksum_mismatch_deletes_the_copy(server, tmp_path: Path) -> None:
    server.files["/i.csv"] = payload(1000)
    with pytest.raises(MelanomaError, match="SHA-256 .* differs from the official"):
        fetch([server.url + "i.csv"], tmp_path / "i.csv", size=1000, sha256="0" * 64, config=settings(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_a_404_is_one_line_naming_the_url(isic2020_table, server, tmp_path: Path, capsys) -> None:
    del server.files["/2020/ISIC_2020_Training_Duplicates.csv"]
    code = main(["download", "isic2020", "--out", str(tmp_path / "raw"), "--base-url", server.url])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {server.url}2020/ISIC_2020_Training_Duplicates.csv: not found (HTTP 404)")
    assert not (tmp_path / "raw" / "ISIC_2020_Training_Duplicates.csv").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["download", "isic2021"], "unknown dataset 'isic2021'"),
        (["download", "isic2019", "--format", "dicom"], "ISIC 2019 is published as JPEG only"),
        (["download", "archive", "--limit", "0"], "--limit 0: must be at least 1"),
    ],
)
def test_bad_download_settings_are_one_line(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    code = main([*argv, "--out", str(tmp_path / "raw")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_the_next_official_host_is_tried_when_the_first_lacks_the_file(server, tmp_path: Path) -> None:
    server.files["/mirror/2020/j.csv"] = b"a,b\n1,2\n"
    urls = [server.url + "gone/2020/j.csv", server.url + "mirror/2020/j.csv"]
    assert fetch(urls, tmp_path / "j.csv", size=8, sha256=None, config=settings(tmp_path)) == "downloaded"


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/octet-stream"])
def test_an_html_page_instead_of_a_zip_is_refused(server, tmp_path: Path, content_type: str) -> None:
    server.files["/k.zip"] = b"\n<!DOCTYPE html><html><body>Please log in to the proxy</body></html>"
    server.content_types["/k.zip"] = content_type
    with pytest.raises(MelanomaError, match="k.zip: the server sent an HTML page instead of k.zip"):
        fetch([server.url + "k.zip"], tmp_path / "k.zip", size=None, sha256=None, config=settings(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_no_network_is_one_clear_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(download_module, "BACKOFF_S", 0.0)
    with socket.socket() as probe:  # a loopback port that nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    monkeypatch.setenv(download_module.BASE_URL_ENV, closed)
    code = main(["download", "isic2019", "--out", str(tmp_path / "raw"), "--retries", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "ISIC_2019_Training_Input.zip: cannot connect (" in err and "gave up after 1 retries" in err


def test_disk_full_keeps_the_part_for_a_later_resume(server, tmp_path: Path, monkeypatch) -> None:
    data = payload(3 * download_module.CHUNK_BYTES, seed=3)
    server.files["/l.zip"] = data
    calls = []

    def fill_disk(handle, chunk: bytes) -> None:
        calls.append(len(chunk))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        handle.write(chunk)

    monkeypatch.setattr(download_module, "_write_chunk", fill_disk)
    with pytest.raises(MelanomaError, match=r"l.zip.part: disk full after 1,048,576 bytes; free some space"):
        fetch([server.url + "l.zip"], tmp_path / "l.zip", size=len(data), sha256=None, config=settings(tmp_path))
    assert not (tmp_path / "l.zip").exists() and (tmp_path / "l.zip.part").stat().st_size == 1_048_576
    monkeypatch.undo()
    monkeypatch.setattr(download_module, "BACKOFF_S", 0.0)
    fetch([server.url + "l.zip"], tmp_path / "l.zip", size=len(data), sha256=sha(data), config=settings(tmp_path))
    assert (tmp_path / "l.zip").read_bytes() == data and server.served("/l.zip")[-1] == "bytes=1048576-"


def test_isic2019_metadata_and_ground_truth_are_joined_for_prepare(server, raw_data, tmp_path, monkeypatch) -> None:
    images, metadata = raw_data
    frame = pd.read_csv(metadata)
    meta = frame.rename(columns={"image_name": "image", "anatom_site_general_challenge": "anatom_site_general"})
    meta = meta[["image", "age_approx", "anatom_site_general", "sex"]].assign(lesion_id="")
    truth = pd.DataFrame({"image": frame.image_name, "MEL": frame.target.astype(float), "NV": 1 - frame.target})
    files = {
        "ISIC_2019_Training_Input.zip": zip_of_images(images),
        "ISIC_2019_Training_GroundTruth.csv": truth.to_csv(index=False).encode(),
        "ISIC_2019_Training_Metadata.csv": meta.to_csv(index=False).encode(),
    }
    server.files.update({f"/2019/{name}": data for name, data in files.items()})
    table = tuple(
        RemoteFile("isic2019", "train", f"2019/{name}", "tiny", image_format="jpeg" if ".zip" in name else None)
        for name in files
    )
    monkeypatch.setattr(download_module, "CHALLENGE_FILES", table)
    monkeypatch.setenv(download_module.BASE_URL_ENV, server.url)
    result = download(settings(tmp_path / "raw", dataset="isic2019"))
    combined = tmp_path / "raw" / "ISIC_2019_Training_Metadata_Target.csv"
    assert (combined.name, "written (metadata + MEL column as target)") in result.files
    images_zip = tmp_path / "raw" / "ISIC_2019_Training_Input.zip"
    prepare(PrepareConfig(images=images_zip, metadata=combined, out=tmp_path / "d", size=32, workers=1))
    manifest = read_manifest(tmp_path / "d").set_index("image_name").loc[frame.image_name]
    assert manifest["target"].tolist() == frame.target.tolist()
    assert manifest["sex"].fillna("").tolist() == frame.sex.fillna("").tolist()


def archive_listing(server: FakeServer, raw_images: Path, count: int) -> list[dict]:
    """Two pages of an ISIC API v2 search answer, images served by the same local server."""
    images = []
    for index, path in enumerate(sorted(raw_images.iterdir())[:count]):
        isic_id = f"ISIC_{9000000 + index}"
        server.files[f"/files/{isic_id}.JPG"] = path.read_bytes()
        clinical = {
            "patient_id": f"IP_{index // 2}",
            "sex": ["male", "female"][index % 2],
            "age_approx": 30 + 5 * index,
            "anatom_site_general": "posterior torso",
            "diagnosis_1": "Malignant" if index == 0 else "Benign",
            "diagnosis_3": "Melanoma Invasive" if index == 0 else "Nevus",
        }
        images.append(
            {
                "isic_id": isic_id,
                "copyright_license": "CC-BY",
                "attribution": "Hospital Clínic de Barcelona",
                "public": True,
                "files": {"full": {"url": f"{server.url}files/{isic_id}.JPG", "size": path.stat().st_size}},
                "metadata": {"acquisition": {"pixels_x": 80, "pixels_y": 64}, "clinical": clinical},
            }
        )
    search = f"{server.url}api/v2/images/search/"
    pages = [images[:2], images[2:]]
    return [
        {"count": count, "next": f"{search}?cursor={i + 1}" if i + 1 < len(pages) else None, "results": page}
        for i, page in enumerate(pages)
    ]


def test_an_archive_collection_downloads_images_and_metadata_prepare_reads(server, raw_data, tmp_path: Path) -> None:
    server.api["/api/v2/images/search/"] = archive_listing(server, raw_data[0], 4)
    out = tmp_path / "archive-70"
    api = server.url + "api/v2"
    config = settings(out, dataset="archive", collection="70", search="age_approx:[20 TO 60]", api_url=api)
    download(config)
    assert server.queries[0]["collections"] == ["70"] and server.queries[0]["query"] == ["age_approx:[20 TO 60]"]
    assert len(server.queries) == 2 and sorted(p.name for p in (out / "images").iterdir())[0] == "ISIC_9000000.jpg"
    metadata = pd.read_csv(out / "metadata.csv")
    assert list(metadata.columns[:3]) == ["isic_id", "attribution", "copyright_license"]
    assert "Hospital Clínic de Barcelona" in (out / "attribution.txt").read_text()
    result = prepare(
        PrepareConfig(images=out / "images", metadata=out / "metadata.csv", out=tmp_path / "data", size=32, workers=1)
    )
    assert result.problems == []
    manifest = read_manifest(tmp_path / "data").set_index("image_name")
    assert manifest["target"].tolist() == [1, 0, 0, 0] and manifest["patient_id"].tolist()[:2] == ["IP_0", "IP_0"]
    assert set(manifest["site"]) == {"torso"} and manifest["age_approx"].tolist() == [30, 35, 40, 45]
    assert set(manifest["source"]) == {"archive-70"}
    requests = len(server.requests)
    download(config)
    assert len(server.requests) == requests + 2  # the listing again, no image twice


def test_an_archive_limit_stops_paging_and_needs_a_filter(server, raw_data, tmp_path: Path) -> None:
    server.api["/api/v2/images/search/"] = archive_listing(server, raw_data[0], 4)
    api = server.url + "api/v2/"
    download(settings(tmp_path / "a", dataset="archive", limit=1, api_url=api))
    assert len(list((tmp_path / "a" / "images").iterdir())) == 1 and len(server.queries) == 1
    with pytest.raises(MelanomaError, match="give --collection, --search or --limit"):
        download(settings(tmp_path / "b", dataset="archive", api_url=api))
