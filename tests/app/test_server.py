"""The JSON API: the same probability as `predict`, the operating-point meaning, and a clear 4xx for bad uploads."""

import asyncio
import io
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from melanoma.app.server import DISCLAIMER, BodyLimit, create_app
from melanoma.cli import main
from melanoma.config import PredictConfig
from melanoma.inference.predictor import predict
from tests.inference.fake_runs import write_evaluation

LIMIT = 200_000  # bytes of image accepted by the test app


@pytest.fixture(scope="module")
def unevaluated_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared trained run without its eval/ folder, which other tests fill: no operating points yet."""
    target = tmp_path_factory.mktemp("app") / "run"
    return Path(shutil.copytree(trained_run, target, ignore=shutil.ignore_patterns("eval", "checkpoints")))


@pytest.fixture(scope="module")
def client(unevaluated_run: Path) -> TestClient:
    return TestClient(create_app(unevaluated_run, max_upload_bytes=LIMIT, device="cpu"))


@pytest.fixture(scope="module")
def lesion(raw_data) -> tuple[str, bytes, dict]:
    """(image name, JPEG bytes, its metadata row) of the first synthetic lesion."""
    images, metadata = raw_data
    path = sorted(images.iterdir())[0]
    row = pd.read_csv(metadata).set_index("image_name").loc[path.stem]
    fields = {"age": str(row["age_approx"]), "sex": row["sex"], "site": row["anatom_site_general_challenge"]}
    return path.stem, path.read_bytes(), fields


def _png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height: Pillow judges the size before decoding any pixel."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _encoded(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def test_the_api_gives_the_probability_predict_gives(
    client: TestClient, unevaluated_run: Path, lesion, tmp_path
) -> None:
    name, data, fields = lesion
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / f"{name}.jpg").write_bytes(data)
    csv = tmp_path / "one.csv"
    pd.DataFrame(
        [{"image_name": name, "sex": fields["sex"], "age_approx": fields["age"], "site": fields["site"]}]
    ).to_csv(csv, index=False)
    expected = predict(PredictConfig(run=unevaluated_run, images=folder, metadata=csv, out=tmp_path / "p.csv"))
    response = client.post("/api/predict", files={"image": ("lesion.jpg", data, "image/jpeg")}, data=fields)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["probability"] == pytest.approx(float(expected["target"][0]), abs=1e-5)
    assert body["metadata"] == {"age_approx": float(fields["age"]), "sex": fields["sex"], "site": fields["site"]}
    assert body["heatmap"].startswith("data:image/png;base64,") and body["disclaimer"] == DISCLAIMER
    assert isinstance(body["heatmap_empty"], bool)
    assert body["operating_point"]["available"] is False
    assert "No calibrated operating point is available" in body["operating_point"]["summary"]

    without = predict(PredictConfig(run=unevaluated_run, images=folder, out=tmp_path / "q.csv"))
    response = client.post(
        "/api/predict",
        files={"image": ("lesion.jpg", data, "image/jpeg")},
        data={"age": "", "sex": "", "site": "", "heatmap": "false"},  # an HTML form's empty fields = unknown
    )
    assert response.json()["probability"] == pytest.approx(float(without["target"][0]), abs=1e-5)
    assert response.json()["heatmap"] is None and response.json()["heatmap_empty"] is None


def test_types_are_judged_by_content_not_by_name(client: TestClient, lesion) -> None:
    png = _encoded(Image.open(io.BytesIO(lesion[1])), "PNG")
    assert client.post("/api/predict", files={"image": ("lesion.jpg", png, "image/jpeg")}).status_code == 200
    gif = _encoded(Image.new("RGB", (40, 40), (200, 100, 50)), "GIF")
    for content, name in [(b"%PDF-1.7 not a lesion", "lesion.png"), (gif, "lesion.jpg")]:
        response = client.post("/api/predict", files={"image": (name, content, "image/png")})
        assert response.status_code == 415 and "not a JPEG or PNG image" in response.json()["detail"]


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("truncated JPEG", 422, "cannot use this image: cannot decode"),
        ("huge dimensions", 422, "decompression bomb"),
        ("empty file", 400, "the uploaded image is empty"),
        ("empty body", 400, "empty request body"),
        ("wrong field", 422, "image: Field required"),
        ("age out of range", 422, "age: Input should be less than or equal to 120"),
        ("unknown site", 422, "site: Input should be 'head/neck'"),
        ("too large", 413, "upload too large"),
        ("too large, streamed", 413, "upload too large"),
    ],
)
def test_bad_uploads_get_a_4xx_with_a_message(client: TestClient, lesion, case: str, status: int, message: str) -> None:
    data = lesion[1]
    requests = {
        "truncated JPEG": dict(files={"image": ("a.jpg", data[: len(data) // 2], "image/jpeg")}),
        "huge dimensions": dict(files={"image": ("a.png", _png(20000, 20000), "image/png")}),
        "empty file": dict(files={"image": ("a.jpg", b"", "image/jpeg")}),
        "empty body": {},
        "wrong field": dict(files={"file": ("a.jpg", data, "image/jpeg")}),
        "age out of range": dict(files={"image": ("a.jpg", data, "image/jpeg")}, data={"age": "130"}),
        "unknown site": dict(files={"image": ("a.jpg", data, "image/jpeg")}, data={"site": "elbow"}),
        "too large": dict(files={"image": ("a.jpg", data + b"\0" * (LIMIT * 2), "image/jpeg")}),
        "too large, streamed": dict(
            content=(b"x" * 50_000 for _ in range(10)), headers={"content-type": "multipart/form-data; boundary=b"}
        ),
    }
    response = client.post("/api/predict", **requests[case])
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["detail"]


def test_a_post_with_neither_length_nor_chunks_has_an_empty_body() -> None:
    """HTTP: without Content-Length or Transfer-Encoding there is no body (curl -X POST sends such a request)."""
    sent = []

    async def app(scope, receive, send) -> None:
        raise AssertionError("the request must not reach the app")

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/predict", "headers": [(b"host", b"127.0.0.1")]}
    asyncio.run(BodyLimit(app, 1000, "too large")(scope, receive, send))
    assert sent[0]["status"] == 400 and b"empty request body" in sent[1]["body"]


def test_the_operating_point_comes_from_the_validation_evaluation(trained_run: Path, lesion, tmp_path: Path) -> None:
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    write_evaluation(
        run, "data-val", "val", {"specificity_at_95_sensitivity": 0.0, "sensitivity_at_95_specificity": 1.0}
    )
    write_evaluation(run, "data-test", "test", {"specificity_at_95_sensitivity": 0.5})
    client = TestClient(create_app(run, device="cpu"))
    assert "val split of data" in client.get("/api/info").json()["operating_point_source"]
    response = client.post("/api/predict", files={"image": ("a.jpg", lesion[1], "image/jpeg")}, data={"heatmap": "0"})
    meaning = response.json()["operating_point"]
    assert meaning["available"] and "val split of data (100 images, 10 melanomas)" in meaning["source"]
    assert [(p["label"], p["above"]) for p in meaning["points"]] == [
        ("95%-sensitivity threshold", True),
        ("95%-specificity threshold", False),
    ]
    assert meaning["summary"] == "Above the 95%-sensitivity threshold (0)."


def test_the_page_and_the_openapi_schema(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "Research tool, not a diagnosis." in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/api/predict"]["post"]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    fields = schema["components"]["schemas"][form]["properties"]
    assert {"image", "age", "sex", "site", "heatmap"} <= set(fields)
    assert {"200", "400", "413", "415", "422"} <= set(operation["responses"])
    info = client.get("/api/info").json()
    assert info["model"] == "basic-cnn" and info["uses_metadata"] and info["operating_point_source"] is None


def test_export_onnx_prediction_and_the_app_do_not_import_lightning(
    trained_run: Path, raw_data, lesion, tmp_path: Path
) -> None:
    onnx, csv = str(tmp_path / "m.onnx"), str(tmp_path / "p.csv")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from fastapi.testclient import TestClient\n"
        "from melanoma.app.server import create_app\n"
        "from melanoma.config import ExportConfig, PredictConfig\n"
        "from melanoma.inference.export import export\n"
        "from melanoma.inference.predictor import predict\n"
        f"export(ExportConfig(run={str(trained_run)!r}, out={onnx!r}))\n"
        f"predict(PredictConfig(run={str(trained_run)!r}, images={str(raw_data[0])!r}, out={csv!r}, num_workers=0,"
        f" engine='onnx', onnx_model={onnx!r}))\n"
        f"client = TestClient(create_app(Path({str(trained_run)!r})))\n"
        f"response = client.post('/api/predict', files={{'image': ('a.jpg', {lesion[1]!r}, 'image/jpeg')}})\n"
        "assert response.status_code == 200, response.text\n"
        "assert 'lightning' not in sys.modules and 'pytorch_lightning' not in sys.modules, 'lightning imported'\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    result = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": src}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(pd.read_csv(csv)) == len(list(raw_data[0].iterdir()))


def test_serve_refuses_bad_settings_in_one_line(trained_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["serve", str(trained_run), "--port", "70000"]) == 2
    assert "--port 70000: expected 0-65535" in capsys.readouterr().err
    assert main(["serve", str(trained_run), "--max-upload-mb", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
    assert main(["serve", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
