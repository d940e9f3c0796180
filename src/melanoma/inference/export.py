"""The `export` command: a RUN dir -> `model.onnx` (dynamic batch axis) plus a JSON sidecar, and the ONNX engine.

The ONNX file takes the network-ready inputs (`image`, and `metadata` when the model uses it) and returns `logit`
and `probability` per image. Everything before that (decoding, crop and resize, normalisation, metadata
encoding) is written to the sidecar in enough detail to reproduce it without this package; inside this package
`Predictor(engine="onnx")` wraps the session in `OnnxModel` so it reuses the exact preprocessing code of training.
Lightning is never imported.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from melanoma import __version__
from melanoma.config import ExportConfig, atomic_write_text, to_plain
from melanoma.data.dataset import MetadataEncoder
from melanoma.errors import MelanomaError
from melanoma.inference.ensemble import read_ensemble
from melanoma.inference.operating_points import find_operating_points
from melanoma.rundir import Preprocessing, RunConfig

if TYPE_CHECKING:
    import onnxruntime

ONNX_FILE = "model.onnx"
SIDECAR_FORMAT = "melanoma-onnx-sidecar/1"
FORMATS = ("onnx",)
CHECK_BATCHES = (1, 3)  # neither is the traced batch (2): the check also proves the batch axis is dynamic


def sidecar_path(onnx_path: Path) -> Path:
    return Path(onnx_path).with_suffix(".json")


class Exportable(nn.Module):
    """The fused classifier with the probability as a second output; image-only models take only `image`.

    (The submodule is not named `meta`: that name breaks torch.export.)
    """

    def __init__(self, model: nn.Module, uses_metadata: bool) -> None:
        super().__init__()
        self.model = model
        self.uses_metadata = uses_metadata

    def forward(self, image: torch.Tensor, metadata: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if metadata is None:
            metadata = image.new_zeros((image.shape[0], 0))
        logit = self.model(image, metadata)
        return logit, torch.sigmoid(logit)


def feature_names(encoder: MetadataEncoder) -> list[str]:
    """The metadata vector's columns in MetadataEncoder.encode's order."""
    return [
        *(f"sex={sex}" for sex in encoder.sexes),
        "sex=missing",
        "age_standardised",
        "age_missing",
        *(f"site={site}" for site in encoder.sites),
        "site=missing",
        "log_patient_image_count",
    ]


def preprocessing_spec(preprocessing: Preprocessing) -> dict:
    """The image steps of `load_image` then `Preprocessing.transforms(train=False)`, as a reader-independent recipe."""
    resize = round(preprocessing.image_size / preprocessing.crop_pct)
    return {
        "settings": to_plain(preprocessing),
        "steps": [
            "Decode the JPEG or PNG (DICOM: the pixel data) and apply the EXIF orientation.",
            "Convert to 8-bit RGB: 16-bit and float images are scaled to 0-255, transparency is flattened onto "
            "white, greyscale and palette images are expanded.",
            f"Centre-crop the largest square and resize it to {preprocessing.prepared_size} x "
            f"{preprocessing.prepared_size} with Lanczos resampling (Pillow ImageOps.fit); an image smaller than "
            "that is only cropped, never enlarged. JPEGs may be decoded at a reduced DCT scale that stays at least "
            "that size (Pillow draft mode), as training did.",
            f"Resize so that the shorter side is {resize} px ({preprocessing.interpolation}, antialiased; "
            "torchvision.transforms.v2.Resize on the uint8 tensor).",
            f"Centre-crop {preprocessing.image_size} x {preprocessing.image_size}.",
            "Scale to float32 in 0-1 (divide by 255).",
            f"Normalise each channel: (x - mean) / std with mean {preprocessing.mean} and std {preprocessing.std}.",
            f"Lay out as float32 NCHW, RGB: (batch, 3, {preprocessing.image_size}, {preprocessing.image_size}).",
        ],
    }


def metadata_spec(encoder: MetadataEncoder | None) -> dict | None:
    """How MetadataEncoder.encode builds the metadata vector, column by column."""
    if encoder is None:
        return None
    return {
        "settings": to_plain(encoder),
        "features": feature_names(encoder),
        "rules": {
            "sex": f"one-hot over {encoder.sexes}, then a last column for missing or any other value",
            "age_standardised": f"(age_approx - {encoder.age_mean}) / {encoder.age_std}; 0 when the age is missing",
            "age_missing": "1 when the age is missing, else 0",
            "site": f"one-hot over {encoder.sites}, then a last column for missing or any other value",
            "log_patient_image_count": "natural log of the number of images of this patient scored together "
            "(0 for a single image: a missing patient id counts as its own patient)",
        },
        "dtype": "float32",
    }


def write_sidecar(path: Path, config: RunConfig, run_dir: Path, check: dict) -> dict:
    """The sidecar JSON: inputs and outputs, preprocessing, metadata encoding, operating points, the check."""
    size = config.preprocessing.image_size
    inputs = {"image": {"shape": ["batch", 3, size, size], "dtype": "float32", "layout": "NCHW, RGB"}}
    if config.metadata is not None:
        inputs["metadata"] = {"shape": ["batch", config.metadata.dim], "dtype": "float32"}
    points = find_operating_points(run_dir)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "model_file": Path(path).with_suffix(".onnx").name,
        "melanoma_version": __version__,
        "run": str(Path(run_dir).resolve()),
        "model": config.train.model,
        "inputs": inputs,
        "outputs": {
            "logit": {"shape": ["batch"], "meaning": "melanoma logit"},
            "probability": {"shape": ["batch"], "meaning": "melanoma probability, sigmoid(logit)"},
        },
        "preprocessing": preprocessing_spec(config.preprocessing),
        "metadata_encoding": metadata_spec(config.metadata),
        "operating_points": None
        if points is None
        else {
            "source": points.description,
            "thresholds": {
                p.name: {"threshold": p.threshold, "sensitivity": p.sensitivity, "specificity": p.specificity}
                for p in points.points
            },
        },
        "check": check,
        "versions": config.versions,
    }
    atomic_write_text(path, json.dumps(sidecar, indent=2) + "\n")
    return sidecar


@dataclass
class ExportResult:
    onnx: Path
    sidecar: Path
    max_abs_difference: float  # probabilities, ONNX Runtime vs PyTorch, on random check inputs
    max_abs_difference_logit: float


def export(config: ExportConfig) -> ExportResult:
    """The `export` command: trace the run's model to ONNX, check it against PyTorch, then move it into place."""
    from melanoma.inference.predictor import Predictor

    if config.format not in FORMATS:
        raise MelanomaError(f"--format {config.format}: expected {' or '.join(FORMATS)}")
    if read_ensemble(Path(config.run)) is not None:
        raise MelanomaError(f"{config.run}: is an ensemble; export each member run and average their probabilities")
    predictor = Predictor.from_run(Path(config.run), device="cpu")
    out = Path(config.out) if config.out is not None else Path(config.run) / ONNX_FILE
    if out.suffix != ".onnx":
        raise MelanomaError(f"--out {out}: name the file *.onnx (the sidecar goes beside it as .json)")
    out.parent.mkdir(parents=True, exist_ok=True)
    run = predictor.config
    module = Exportable(predictor.model, run.metadata is not None).eval()
    metadata_features = run.metadata.dim if run.metadata is not None else 0
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as scratch:
        staged = Path(scratch) / out.name
        trace_onnx(module, run.preprocessing.image_size, metadata_features, staged, config.opset, run.train.model)
        difference, logit_difference = compare_with_torch(
            module, staged, run.preprocessing.image_size, metadata_features
        )
        if not difference <= config.tolerance:
            raise MelanomaError(
                f"{config.run}: ONNX Runtime and PyTorch differ by {difference:.2e} in probability on random inputs "
                f"(tolerance {config.tolerance:.0e}); not exported"
            )
        os.replace(staged, out)
    check = {
        "inputs": f"random, seeded, batches {list(CHECK_BATCHES)}",
        "max_abs_difference_probability": difference,
        "max_abs_difference_logit": logit_difference,
    }
    sidecar = sidecar_path(out)
    write_sidecar(sidecar, predictor.config, Path(config.run), check)
    return ExportResult(out, sidecar, difference, logit_difference)


def example_inputs(image_size: int, metadata_features: int, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Seeded random network-ready inputs (normalised-scale images, metadata when the model takes it)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, image_size, image_size, generator=generator)
    if not metadata_features:
        return (images,)
    return images, torch.randn(batch, metadata_features, generator=generator)


def trace_onnx(
    module: Exportable,
    image_size: int,
    metadata_features: int,
    path: Path,
    opset: int | None = None,
    name: str = "the model",
) -> None:
    """torch.onnx's dynamo exporter with a dynamic batch axis and the weights embedded in the one file."""
    inputs = example_inputs(image_size, metadata_features, batch=2, seed=0)
    names = ["image", "metadata"][: len(inputs)]
    batch = torch.export.Dim("batch", min=1)
    options = {"opset_version": opset} if opset is not None else {}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name: batch will not be used.*")
            torch.onnx.export(
                module,
                inputs,
                str(path),
                input_names=names,
                output_names=["logit", "probability"],
                dynamic_shapes={name: {0: batch} for name in names},
                external_data=False,
                verbose=False,
                **options,
            )
    except ImportError as exc:
        raise MelanomaError(f"ONNX export needs the export extra: pip install 'melanoma[export]' ({exc})") from None
    except Exception as exc:  # the exporter raises many types; one line names the model and the cause
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MelanomaError(f"{name}: cannot be exported to ONNX ({reason})") from None


def onnx_session(path: Path, threads: int | None = None) -> onnxruntime.InferenceSession:
    """A session on every available provider (CUDA first where the GPU build is installed); imported lazily."""
    try:
        import onnxruntime
    except ImportError:
        raise MelanomaError("the ONNX engine needs onnxruntime: pip install 'melanoma[export]'") from None
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=onnxruntime.get_available_providers())
    except Exception as exc:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MelanomaError(f"{path}: not a loadable ONNX model ({reason})") from None


def compare_with_torch(module: Exportable, path: Path, image_size: int, metadata_features: int) -> tuple[float, float]:
    """Max abs difference (probability, logit) between ONNX Runtime and PyTorch on seeded random inputs."""
    session = onnx_session(path)
    worst = worst_logit = 0.0
    for seed, batch in enumerate(CHECK_BATCHES, start=1):
        inputs = example_inputs(image_size, metadata_features, batch, seed)
        with torch.inference_mode():
            logit, probability = (t.numpy() for t in module(*inputs))
        feeds = {name: tensor.numpy() for name, tensor in zip(("image", "metadata"), inputs, strict=False)}
        onnx_logit, onnx_probability = session.run(["logit", "probability"], feeds)
        worst = max(worst, float(np.abs(onnx_probability - probability).max()))
        worst_logit = max(worst_logit, float(np.abs(onnx_logit - logit).max()))
    return worst, worst_logit


class OnnxModel(nn.Module):
    """An ONNX Runtime session behind the fused classifier's call signature (images, metadata) -> logits, so the
    Predictor's data path, TTA included, serves both engines unchanged."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = onnx_session(self.path, threads)
        self.input_names = {node.name for node in self.session.get_inputs()}

    def forward(self, images: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
        feeds = {"image": np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)}
        if "metadata" in self.input_names:
            feeds["metadata"] = np.ascontiguousarray(metadata.detach().cpu().numpy(), dtype=np.float32)
        (logit,) = self.session.run(["logit"], feeds)
        return torch.from_numpy(logit).to(images.device)


def load_onnx_model(run_dir: Path, config: RunConfig, onnx_model: Path | None = None) -> OnnxModel:
    """RUN/model.onnx (or `onnx_model`), refused unless its sidecar matches the run's preprocessing and metadata
    encoding: a file exported from another run would otherwise be fed wrongly prepared inputs without a sign."""
    path = Path(onnx_model) if onnx_model is not None else Path(run_dir) / ONNX_FILE
    if not path.is_file():
        raise MelanomaError(f"{path}: no exported model; run `melanoma export {run_dir} --format onnx` first")
    sidecar = sidecar_path(path)
    try:
        recorded = json.loads(sidecar.read_text())
    except FileNotFoundError:
        raise MelanomaError(f"{sidecar}: the export's sidecar is missing; export again") from None
    except (OSError, ValueError) as exc:
        raise MelanomaError(f"{sidecar}: not a readable sidecar ({exc})") from None
    expected_metadata = to_plain(config.metadata) if config.metadata is not None else None
    if (
        not isinstance(recorded, dict)
        or recorded.get("format") != SIDECAR_FORMAT
        or recorded.get("preprocessing", {}).get("settings") != to_plain(config.preprocessing)
        or (recorded.get("metadata_encoding") or {}).get("settings") != expected_metadata
    ):
        raise MelanomaError(
            f"{path}: its sidecar's preprocessing or metadata encoding differs from {run_dir}'s; "
            f"export this run again (`melanoma export {run_dir} --format onnx`)"
        )
    return OnnxModel(path)
