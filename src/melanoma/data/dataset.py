"""Prepared rows -> tensors: the metadata encoding, the image transforms and the torch Dataset.

Nothing here depends on Lightning: prediction and serving use the same code as training.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from melanoma.data.metadata import SEXES, SITES


@dataclass
class MetadataEncoder:
    """Sex and site one-hot with an explicit missing level, standardised age with a missing flag, and the
    log of the patient's image count. Saved in a run's config so that prediction encodes identically."""

    sexes: list[str] = field(default_factory=lambda: list(SEXES))
    sites: list[str] = field(default_factory=lambda: list(SITES))
    age_mean: float = 50.0
    age_std: float = 15.0

    @classmethod
    def fit(cls, frame: pd.DataFrame) -> MetadataEncoder:
        ages = frame["age_approx"].dropna()
        if len(ages) < 2:
            return cls()
        return cls(age_mean=float(ages.mean()), age_std=float(max(ages.std(), 1.0)))

    @property
    def dim(self) -> int:
        return len(self.sexes) + 1 + 2 + len(self.sites) + 1 + 1

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """(N, dim) float32 features; `frame` needs sex, age_approx, site and patient_id (NaN/None = missing)."""
        sex = _one_hot(frame["sex"], self.sexes)
        ages = pd.to_numeric(frame["age_approx"], errors="coerce").to_numpy(dtype=np.float64)
        age_missing = np.isnan(ages)
        age = np.where(age_missing, 0.0, (ages - self.age_mean) / self.age_std)
        site = _one_hot(frame["site"], self.sites)
        counts = frame.groupby("patient_id")["patient_id"].transform("size").to_numpy(dtype=np.float64)
        columns = [sex, age[:, None], age_missing[:, None], site, np.log(counts)[:, None]]
        return np.concatenate(columns, axis=1).astype(np.float32)


def _one_hot(values: pd.Series, levels: list[str]) -> np.ndarray:
    """One column per level plus a final 'missing or unknown' column."""
    index = {level: i for i, level in enumerate(levels)}
    codes = np.array([index.get(v, len(levels)) if isinstance(v, str) else len(levels) for v in values])
    return np.eye(len(levels) + 1, dtype=np.float32)[codes]


def build_transforms(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    color_jitter: float = 0.0,
    crop_pct: float = 1.0,
    interpolation: str = "bilinear",
) -> v2.Compose:
    """Training: random resized crop, the 8 flips/rotations, colour jitter. Evaluation: resize to
    image_size / crop_pct, then centre crop (a 512 image, crop_pct 0.8125: the founding 416 centre crop)."""
    mode = v2.InterpolationMode(interpolation)
    if train:
        geometry = [
            v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), ratio=(0.8, 1.25), interpolation=mode, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomChoice([v2.RandomRotation((angle, angle)) for angle in (0, 90)]),
        ]
        if color_jitter > 0:
            geometry.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    else:
        resize = round(image_size / crop_pct)
        geometry = [v2.Resize(resize, interpolation=mode, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(
        [v2.ToImage(), *geometry, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    )


class LesionDataset(Dataset):
    """(image, metadata features, target) per row; the target is NaN when unknown.

    `load` turns a row's image reference into a PIL image: prepared datasets open the cached JPEG,
    prediction decodes raw files with the same function `prepare` uses. With `unreadable_as_nan`, an image
    that `load` cannot read (ValueError) becomes a NaN tensor, so one bad file yields one NaN score
    instead of stopping a whole prediction.
    """

    def __init__(
        self,
        images: list,
        features: np.ndarray,
        targets: np.ndarray,
        transform: Callable,
        load: Callable[[object], Image.Image] | None = None,
        unreadable_as_nan: bool = False,
    ) -> None:
        if not len(images) == len(features) == len(targets):
            raise ValueError("images, features and targets must have the same length")
        self.images = list(images)
        self.features = torch.as_tensor(features, dtype=torch.float32)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float32))
        self.transform = transform
        self.load = load or open_rgb
        self.unreadable_as_nan = unreadable_as_nan

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        try:
            image = self.transform(self.load(self.images[index]))
        except ValueError:
            if not self.unreadable_as_nan:
                raise
            image = torch.full_like(self.transform(Image.new("RGB", (8, 8))), float("nan"))
        return image, self.features[index], self.targets[index]


def open_rgb(path: object) -> Image.Image:
    with Image.open(Path(str(path))) as image:
        return image.convert("RGB")


def default_num_workers() -> int:
    """Loader processes: none on a 2-core machine (a worker only competes with training), else up to 8."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


def prepared_dataset(data_dir: Path, rows: pd.DataFrame, features: np.ndarray, transform: Callable) -> LesionDataset:
    """A dataset over rows of a prepared dataset's manifest (paths are relative to `data_dir`)."""
    paths = [Path(data_dir) / path for path in rows["path"]]
    return LesionDataset(paths, features, rows["target"].to_numpy(dtype=np.float32), transform)
