"""The `serve` command: a web page and a JSON API (FastAPI, OpenAPI schema at /openapi.json) for single lesions.

An upload is decoded and preprocessed by the same code as `predict` (`load_image`, the run's transforms and
`MetadataEncoder`), scored, and explained with Grad-CAM (inference/explain.py). The operating-point meaning comes
from the run's own `evaluate` results (inference/operating_points.py). Uploads are bounded before they are
read (BodyLimit), checked by content (JPEG/PNG signature, then Pillow's decoder with its decompression-bomb
guard), and never saved: Starlette holds a file part in memory up to 1 MiB and spools a larger one to an
anonymous temporary file (deleted when the request ends); this code writes nothing. Lightning is never imported.
"""

from __future__ import annotations

import base64
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import pandas as pd
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from melanoma import __version__
from melanoma.config import ServeConfig
from melanoma.data.images import load_image
from melanoma.data.metadata import SEXES, SITES
from melanoma.errors import MelanomaError
from melanoma.inference.explain import Explainer
from melanoma.inference.operating_points import describe, find_operating_points

DISCLAIMER = (
    "Research tool, not a diagnosis. This model has not been validated for clinical use; its probability must "
    "not decide on care. Any lesion that worries you or your patient needs examination by a dermatologist."
)
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FORM_OVERHEAD = 64 * 1024  # the metadata fields and multipart boundaries on top of the image itself
SexName = Literal[SEXES]  # the canonical values, listed as an enum in the OpenAPI schema
SiteName = Literal[SITES]
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


class ErrorMessage(BaseModel):
    detail: str = Field(description="what was wrong with the request, in one line")


class OperatingPointStatement(BaseModel):
    name: str = Field(description="e.g. specificity_at_95_sensitivity")
    label: str = Field(description="e.g. 95%-sensitivity threshold")
    threshold: float
    sensitivity: float = Field(description="on the evaluation split the threshold was chosen on")
    specificity: float
    above: bool = Field(description="probability >= threshold")
    text: str


class OperatingPointMeaning(BaseModel):
    available: bool = Field(description="false when the run has no evaluate results")
    source: str | None = Field(description="which evaluation the thresholds come from")
    summary: str
    points: list[OperatingPointStatement]


class Prediction(BaseModel):
    probability: float = Field(description="melanoma probability from the model (0-1), as `melanoma predict` gives")
    operating_point: OperatingPointMeaning
    heatmap: str | None = Field(
        description="PNG data URL: Grad-CAM overlaid on the image as the network saw it; null when not asked for"
    )
    heatmap_empty: bool | None = Field(
        description="true when no region raised the melanoma score (an all-zero map); null without a heatmap"
    )
    metadata: dict[str, float | str | None] = Field(description="the metadata the probability was computed with")
    model: str
    disclaimer: str


class ModelInfo(BaseModel):
    model: str
    melanoma_version: str
    image_size: int
    uses_metadata: bool
    target_layer: str = Field(description="the image network's layer Grad-CAM explains")
    operating_point_source: str | None
    max_upload_bytes: int
    sexes: list[str]
    sites: list[str]
    disclaimer: str


ERRORS = {
    400: {"model": ErrorMessage, "description": "empty body or empty image"},
    413: {"model": ErrorMessage, "description": "upload over the size limit"},
    415: {"model": ErrorMessage, "description": "not a JPEG or PNG image (judged by its content)"},
    422: {"model": ErrorMessage, "description": "unreadable image (truncated, decompression bomb) or a bad field"},
}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        field = ".".join(str(p) for p in error.get("loc", ()) if p not in {"body", "query"}) or "request"
        parts.append(f"{field}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


class BodyLimit:
    """Refuse request bodies over `max_bytes` with a JSON 413, and empty POST bodies with a JSON 400.

    A declared Content-Length is judged before anything is read; a chunked body is counted as it arrives and
    stopped at the limit. (Starlette's own RequestBodyLimitMiddleware, behind FastAPI's `max_body_size`, answers
    a declared oversize in plain text, whatever the app's exception handlers say.)
    """

    def __init__(self, app: ASGIApp, max_bytes: int, too_large: str) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.too_large = too_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in {"POST", "PUT", "PATCH"}:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self.too_large}, status_code=413)(scope, receive, send)
            return
        if declared == b"0" or (declared is None and b"transfer-encoding" not in headers):  # HTTP: no body at all
            detail = "empty request body: POST multipart/form-data with the lesion image in the `image` field"
            await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise StarletteHTTPException(413, self.too_large)  # FastAPI turns it into the JSON answer
            return message

        await self.app(scope, counted, send)


def create_app(run_dir: Path, max_upload_bytes: int = 20 * 1024 * 1024, device: str | None = None) -> FastAPI:
    """The app for one trained run; the model is loaded once, here."""
    run_dir = Path(run_dir)
    explainer = Explainer.from_run(run_dir, device=device)
    predictor = explainer.predictor
    points = find_operating_points(run_dir)
    model_name = predictor.config.train.model
    info = ModelInfo(
        model=model_name,
        melanoma_version=__version__,
        image_size=predictor.config.preprocessing.image_size,
        uses_metadata=predictor.config.metadata is not None,
        target_layer=explainer.layer_name,
        operating_point_source=points.description if points else None,
        max_upload_bytes=max_upload_bytes,
        sexes=list(SEXES),
        sites=list(SITES),
        disclaimer=DISCLAIMER,
    )
    static = resources.files("melanoma.app") / "static"
    page = (static / "index.html").read_text(encoding="utf-8")

    app = FastAPI(
        title="melanoma",
        version=__version__,
        description=f"Melanoma probability and Grad-CAM heatmap for one dermoscopic image. {DISCLAIMER}",
        form_limits={"max_files": 1, "max_fields": 8, "max_part_size": 1024},
    )
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    too_large = f"upload too large: images up to {max_upload_bytes / 2**20:.3g} MiB are accepted"
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes + FORM_OVERHEAD, too_large=too_large)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})

    @app.get("/api/info", response_model=ModelInfo, summary="The served model and what the page needs to know")
    def model_info() -> ModelInfo:
        return info

    @app.post(
        "/api/predict",
        response_model=Prediction,
        responses=ERRORS,
        summary="Melanoma probability, operating-point meaning and Grad-CAM heatmap for one image",
    )
    def predict(
        image: Annotated[UploadFile, File(description="dermoscopic image, JPEG or PNG")],
        age: Annotated[float | None, Form(ge=0, le=120, description="age in years")] = None,
        sex: Annotated[SexName | None, Form()] = None,
        site: Annotated[SiteName | None, Form(description="anatomic site")] = None,
        heatmap: Annotated[bool, Form(description="also compute the Grad-CAM overlay")] = True,
    ) -> Prediction:
        data = image.file.read(max_upload_bytes + 1)
        if not data:
            raise HTTPException(400, "the uploaded image is empty")
        if len(data) > max_upload_bytes:
            raise HTTPException(413, too_large)
        if not data.startswith((JPEG_MAGIC, PNG_MAGIC)):
            raise HTTPException(415, "not a JPEG or PNG image (judged by its content, not its name or type)")
        try:
            prepared = load_image(data, predictor.prepared_size)
        except ValueError as exc:
            raise HTTPException(422, f"cannot use this image: {exc}") from None
        metadata = {"age_approx": age, "sex": sex, "site": site}
        row = pd.DataFrame([{"image_name": "upload", "patient_id": "upload", **metadata}])
        features = predictor.features(row)[0]
        overlay, empty = None, None
        if heatmap:
            explanation = explainer.explain(prepared, features)
            probability, empty = explanation.probability, explanation.empty
            overlay = "data:image/png;base64," + base64.b64encode(explanation.overlay_png()).decode("ascii")
        else:
            probability = explainer.score(prepared, features)
        return Prediction(
            probability=probability,
            operating_point=OperatingPointMeaning(**describe(points, probability)),
            heatmap=overlay,
            heatmap_empty=empty,
            metadata=metadata if info.uses_metadata else {},
            model=model_name,
            disclaimer=DISCLAIMER,
        )

    return app


def serve(config: ServeConfig) -> None:
    """The `serve` command: run the app with uvicorn until interrupted."""
    try:
        import uvicorn
    except ImportError:
        raise MelanomaError("serving needs the serve extra: pip install 'melanoma[serve]'") from None
    if config.max_upload_mb <= 0:
        raise MelanomaError(f"--max-upload-mb {config.max_upload_mb}: must be positive")
    if not 0 <= config.port <= 65535:
        raise MelanomaError(f"--port {config.port}: expected 0-65535")
    app = create_app(Path(config.run), max_upload_bytes=int(config.max_upload_mb * 2**20))
    if config.host not in {"127.0.0.1", "localhost", "::1"}:
        print(
            f"warning: serving on {config.host}: anyone who can reach this machine can use it "
            "(no authentication, no encryption)"
        )
    print(f"Serving {config.run} at http://{config.host}:{config.port}/ (Ctrl-C to stop). {DISCLAIMER}")
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
