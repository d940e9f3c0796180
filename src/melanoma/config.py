"""One typed configuration object per command, loadable from YAML and saved beside every run.

Command-line flags override values from a YAML file, which override the dataclass defaults, so a saved
``config.yaml`` reproduces a run exactly.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import yaml

from melanoma.errors import MelanomaError

C = TypeVar("C")


@dataclass
class PrepareConfig:
    """Decode raw images once, centre-crop and resize them, and write a dataset directory."""

    images: Path
    out: Path
    metadata: Path | None = None  # None: only for DICOM images, whose tags carry the metadata (target unknown)
    size: int = 512
    workers: int | None = None  # None: one per CPU core
    duplicates: Path | None = None  # the official ISIC 2020 duplicates CSV; drops the second image of each pair
    source: str | None = None  # the rows' `source` value; default: the images folder or zip name


@dataclass
class DownloadConfig:
    """Fetch the official ISIC challenge files, or an ISIC Archive subset, into one folder; re-run to resume."""

    dataset: str  # isic2020, isic2019 (the official challenge files) or archive (ISIC Archive API)
    out: Path
    part: str = "train"  # challenge files: train, test or all
    image_format: str = "jpeg"  # isic2020 images: jpeg, or dicom (the corrected DICOM release)
    collection: str | None = None  # archive: collection id(s), comma-separated (70 = ISIC 2020 training)
    search: str | None = None  # archive: ISIC search query, e.g. 'diagnosis_3:"Melanoma Invasive"'
    limit: int | None = None  # archive: at most this many images
    base_url: str | None = None  # challenge host; None: $MELANOMA_ISIC_BASE_URL, else the official buckets
    api_url: str | None = None  # ISIC Archive API; None: $MELANOMA_ISIC_API_URL, else api.isic-archive.com
    retries: int = 5  # retries of a request that brought no new bytes (one that did resets the count)
    timeout: float = 60.0  # seconds without an answer or data before a request counts as failed
    workers: int = 4  # archive: images downloaded in parallel


@dataclass
class SplitConfig:
    """Assign train / val / test by patient, stratified by melanoma."""

    data: Path
    test_size: float = 0.2
    val_size: float = 0.2  # fraction of the non-test part
    seed: int = 0


@dataclass
class TrainConfig:
    """Everything that determines a trained model; saved as the `train` section of a run's config.yaml."""

    data: Path
    out: Path
    model: str = "basic-cnn"  # basic-cnn, or any timm model name (e.g. resnest269e, tf_efficientnet_lite0)
    pretrained: bool = False  # ImageNet weights: timm's hub, or an installed offline package
    weights: Path | None = None  # a local backbone state dict (.safetensors or .pth); wins over `pretrained`
    epochs: int = 11
    batch_size: int = 16
    image_size: int | None = None  # network input; None: 512 for basic-cnn, the backbone's pretrained size
    crop_pct: float | None = None  # evaluation centre crop = image_size / resize; None: from the backbone
    use_metadata: bool = True
    final: bool = False  # train on train+val for `epochs` epochs, no validation
    lr: float = 1e-3  # new layers (and a randomly initialised image network)
    backbone_lr: float | None = None  # None: lr / 10 for pretrained weights, else lr
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    oversample: float = 5.0  # melanoma images are drawn this many times as often as others (1 = off)
    metadata_hidden: list[int] = field(default_factory=lambda: [32, 32])
    fused_width: int = 64
    dropout: float = 0.3
    color_jitter: float = 0.2
    seed: int = 0
    num_workers: int | None = None  # None: none on 2 cores, else up to 8
    accelerator: str = "auto"
    devices: str = "auto"  # a count, a list like 0,1, or auto
    num_nodes: int = 1
    strategy: str = "auto"  # Lightning strategy; auto picks DDP for several devices
    precision: str | None = None  # None: bf16-mixed on GPUs that support it, else 32-true
    accumulate_grad_batches: int = 1
    channels_last: bool | None = None  # None: on for GPUs
    compile: bool = False  # torch.compile the model (worth it on GPUs for long runs)
    max_images: int | None = None  # use only this many training images (quick experiments)


@dataclass
class TuneConfig:
    """Optuna search of training settings on the val split; the study lives in a database, so a tune resumes.

    The base training settings (model, epochs per trial, image size, ...) are a TrainConfig beside this one.
    """

    data: Path
    out: Path
    trials: int = 50  # finished (complete or pruned) trials in total, over every run and every worker
    timeout: str | None = None  # stop starting new trials after this long: 8h, 90m, 45s or seconds
    storage: str | None = None  # database URL shared by several workers; None: sqlite in TUNE/study.db
    study: str | None = None  # study name in the storage; None: the TUNE dir's name
    search_space: Path | None = None  # YAML of parameter ranges; each key replaces a default (null: not searched)
    pruning: bool = True  # stop trials below the median of earlier trials at the same epoch
    startup_trials: int = 5  # trials that finish before the pruner acts
    prune_warmup_epochs: int = 1  # epochs every trial trains before it may be pruned
    sampler_seed: int = 0  # of the TPE sampler; a resumed tune continues with seed + trials so far
    heartbeat: int = 60  # seconds; a trial whose worker is silent for twice this is failed and retried


@dataclass
class EvaluateConfig:
    run: Path  # a trained run or an ensemble
    data: Path
    split: str = "test"  # a split name, or "all" for every row (an external test set)
    tta: int = 1  # test-time augmentation: average over the first k of the 8 flips/transposes
    n_bootstrap: int = 2000  # patient resamples for the confidence intervals (0: none)
    seed: int = 0  # of the bootstrap
    batch_size: int = 32
    num_workers: int | None = None


@dataclass
class CompareConfig:
    """Two runs (or ensembles) on the same images: the AUC difference with a paired patient-bootstrap interval."""

    run_a: Path
    run_b: Path
    data: Path
    split: str = "test"
    tta: int = 1
    n_bootstrap: int = 2000
    seed: int = 0
    out: Path | None = None  # also write the comparison as JSON here
    batch_size: int = 32
    num_workers: int | None = None


@dataclass
class EnsembleConfig:
    """Member runs whose scores are combined: `mean` of probabilities, or `rank` (mean of within-set ranks)."""

    members: list[Path]
    out: Path
    method: str = "mean"


@dataclass
class PredictConfig:
    run: Path
    images: Path
    out: Path
    metadata: Path | None = None
    tta: int = 1
    batch_size: int = 32
    num_workers: int | None = None
    engine: str = "torch"  # torch, or onnx: the exported model through ONNX Runtime, same preprocessing
    onnx_model: Path | None = None  # engine onnx: the exported file; None: RUN/model.onnx


@dataclass
class ExplainConfig:
    """Grad-CAM heatmaps over the network's view of each image, with the metadata held fixed, plus the scores."""

    run: Path
    images: list[Path]  # folders, zips or single image files
    out: Path
    metadata: Path | None = None
    target_layer: str | None = None  # a module of the image network, e.g. layer4; None: found automatically


@dataclass
class ExportConfig:
    """A deployable model file plus a JSON sidecar that says how to preprocess and encode metadata for it."""

    run: Path
    out: Path | None = None  # None: RUN/model.onnx; the sidecar is written beside it as .json
    format: str = "onnx"
    opset: int | None = None  # None: the exporter's default
    tolerance: float = 1e-4  # largest accepted difference from PyTorch on the check inputs (probabilities)


@dataclass
class ServeConfig:
    """A web page and JSON API for single lesions; loopback only unless the host is changed on purpose."""

    run: Path
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = 20.0  # larger uploads are refused with 413


@dataclass
class ContextConfig:
    """A second stage on top of an image run: each image's score and embedding judged against the same patient's
    other images, fitted only on scores of images the image model was not trained on."""

    run: Path  # the image run (a trained RUN dir, not an ensemble)
    data: Path
    out: Path  # the CONTEXT_RUN dir
    stage: str = "hgb"  # hgb (HistGradientBoostingClassifier) or logistic (the simple baseline)
    fit_on: str = "val"  # val: the run's val split (a non-final run); oof: out-of-fold scores of its training rows
    oof_folds: int = 5  # fit_on oof: patient-grouped folds, one image model trained per fold
    seed: int = 0  # of the folds and the stage
    batch_size: int = 32
    num_workers: int | None = None


@dataclass
class DemoConfig:
    out: Path = Path("demo")
    n_patients: int = 150
    image_size: int = 64
    epochs: int = 15
    seed: int = 0


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, with a one-line error naming the field."""
    if value is None:
        return None
    text = str(annotation)
    try:
        if get_origin(annotation) is list:
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list):
                raise ValueError(value)
            return [_coerce(item, get_args(annotation)[0], name) for item in items]
        if "Path" in text:
            return Path(value)
        if "bool" in text:
            if isinstance(value, str):
                if value.lower() not in {"true", "false", "yes", "no", "1", "0"}:
                    raise ValueError(value)
                return value.lower() in {"true", "yes", "1"}
            return bool(value)
        if "int" in text and "float" not in text:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if "float" in text:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise MelanomaError(f"config field '{name}': cannot read {value!r} as {text}") from None


def build_config(cls: type[C], yaml_path: Path | None = None, **overrides: Any) -> C:
    """Create `cls` from defaults, then a YAML file (flat, or with a section named like the command), then overrides."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(read_yaml_section(Path(yaml_path), cls))
    values.update({k: v for k, v in overrides.items() if v is not None})
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise MelanomaError(f"{yaml_path or 'config'}: unknown field(s) {', '.join(unknown)} for {cls.__name__}")
    coerced = {k: _coerce(v, hints[k], k) for k, v in values.items()}
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in coerced and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise MelanomaError(f"{yaml_path or 'config'}: missing required field(s) {', '.join(missing)}")
    return cls(**coerced)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping, with one-line errors for a missing file or bad YAML."""
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise MelanomaError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise MelanomaError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise MelanomaError(f"{path}: expected a mapping of field: value")
    return loaded


def read_yaml_section(path: Path, cls: type) -> dict[str, Any]:
    """Read a config file; a run's config.yaml keeps the command's settings under e.g. `train:`."""
    loaded = read_yaml_mapping(path)
    section = cls.__name__.removesuffix("Config").lower()
    if isinstance(loaded.get(section), dict):
        return dict(loaded[section])
    return loaded


def to_plain(obj: Any) -> Any:
    """Dataclasses and Paths as plain YAML/JSON-friendly values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def check_same_settings(where: Path, kind: str, old: dict, new: dict, ignore: set[str]) -> None:
    """Refuse to continue a `kind` in `where` whose saved settings differ from these (outside `ignore`)."""
    changed = [k for k in new if k not in ignore and old.get(k) != new[k]]
    if changed:
        name = changed[0]
        raise MelanomaError(
            f"{where}: holds a {kind} with different settings ({name}: {old.get(name)!r} there, "
            f"{new[name]!r} now); use a new --out"
        )


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees a half-written file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_yaml(path: Path, data: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(to_plain(data), sort_keys=False))
