"""The RUN dir contract: what `train` writes and what evaluate / predict (and later export, serve) read.

A run directory alone is a usable model: `model.safetensors` plus `config.yaml`, which records the training
settings, the preprocessing (image size, normalisation), the metadata encoding and the library versions.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torchvision.transforms import v2

from melanoma import __version__
from melanoma.config import TrainConfig, build_config, to_plain, write_yaml
from melanoma.data.dataset import MetadataEncoder, build_transforms
from melanoma.errors import MelanomaError
from melanoma.models import FusionClassifier, create_model

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
METRICS = "metrics.csv"
CHECKPOINTS = "checkpoints"
EVAL = "eval"


@dataclass
class Preprocessing:
    """How a raw image becomes the network's input."""

    prepared_size: int  # prepare's centre-crop/resize size
    image_size: int  # the network's input size
    mean: list[float]
    std: list[float]
    crop_pct: float = 1.0  # evaluation: resize to image_size / crop_pct, then centre crop
    interpolation: str = "bilinear"

    def transforms(self, train: bool, color_jitter: float = 0.0) -> v2.Compose:
        return build_transforms(
            self.image_size, self.mean, self.std, train, color_jitter, self.crop_pct, self.interpolation
        )


@dataclass
class RunConfig:
    train: TrainConfig
    preprocessing: Preprocessing
    metadata: MetadataEncoder | None  # None: the model ignores metadata
    result: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def create_model(self) -> FusionClassifier:
        t = self.train
        features = self.metadata.dim if self.metadata else 0
        return create_model(t.model, features, t.metadata_hidden, t.fused_width, t.dropout)

    def save(self, run_dir: Path) -> None:
        write_yaml(Path(run_dir) / CONFIG, to_plain(self))

    @classmethod
    def load(cls, run_dir: Path) -> RunConfig:
        path = Path(run_dir) / CONFIG
        if not path.is_file():
            raise MelanomaError(f"{run_dir}: not a run directory (no {CONFIG}); train one with `melanoma train`")
        try:
            raw = yaml.safe_load(path.read_text())
            return cls(
                train=build_config(TrainConfig, **raw["train"]),
                preprocessing=Preprocessing(**raw["preprocessing"]),
                metadata=MetadataEncoder(**raw["metadata"]) if raw.get("metadata") else None,
                result=raw.get("result") or {},
                versions=raw.get("versions") or {},
            )
        except (yaml.YAMLError, KeyError, TypeError) as exc:
            raise MelanomaError(f"{path}: not a valid run config ({type(exc).__name__}: {exc})") from None


def library_versions() -> dict[str, str]:
    import lightning
    import numpy
    import PIL
    import sklearn
    import torch
    import torchvision

    versions = {
        "melanoma": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "pillow": PIL.__version__,
        "platform": platform.platform(),
    }
    return {name: str(value) for name, value in versions.items()}


def read_run_section(run_dir: Path, name: str) -> dict | None:
    """The `name` section of RUN/config.yaml (e.g. ensemble, context); None when the file or the section is absent."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise MelanomaError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict) or name not in raw:
        return None
    return raw[name]
