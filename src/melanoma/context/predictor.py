"""CONTEXT_RUN dir -> context probabilities: the image run's scores and embeddings, judged within each patient.

A patient's context is the other images scored together with it (the evaluated split, or the images given to
`predict`, grouped by the metadata's patient id); without metadata every image is its own patient and its score
is the recalibrated image score (see stage.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from melanoma.context.features import context_features
from melanoma.context.spec import CONFIG, ContextSpec, read_context
from melanoma.context.stage import Stage
from melanoma.data.images import ImageSource
from melanoma.errors import MelanomaError
from melanoma.inference.predictor import Predictor


class ContextPredictor:
    """The image run's Predictor plus the second stage, with the scoring methods evaluate, compare and predict use."""

    scores_are_probabilities = True

    def __init__(self, image: Predictor, stage: Stage, spec: ContextSpec, run_dir: Path) -> None:
        self.image = image
        self.stage = stage
        self.spec = spec
        self.run_dir = Path(run_dir)

    @classmethod
    def from_dir(cls, run_dir: Path, tta: int = 1, device: str | None = None) -> ContextPredictor:
        spec = read_context(run_dir)
        if spec is None:
            raise MelanomaError(f"{run_dir}: not a context run (no `context` in {CONFIG})")
        stage = Stage.load(run_dir)
        try:
            image = Predictor.from_run(spec.image_run, device, tta)
        except MelanomaError as exc:
            raise MelanomaError(f"{Path(run_dir) / CONFIG}: image run {exc}") from None
        return cls(image, stage, spec, run_dir)

    @property
    def prepared_size(self) -> int:
        return self.image.prepared_size

    def contextualise(self, frame: pd.DataFrame, scores: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """Context probabilities for images already scored; an image the model could not read stays NaN and is
        left out of its patient's context."""
        readable = np.isfinite(scores) & np.isfinite(embeddings).all(axis=1)
        result = np.full(len(frame), np.nan)
        if readable.any():
            table = context_features(frame[readable], scores[readable], embeddings[readable])
            result[readable] = self.stage.predict(table)
        return result

    def predict_prepared_both(
        self, data_dir: Path, rows: pd.DataFrame, all_rows: pd.DataFrame, **loader: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(context scores, image-only scores) for `rows` of a prepared dataset, from one pass of the image model."""
        scores, embeddings = self.image.embed_prepared(data_dir, rows, all_rows, **loader)
        return self.contextualise(rows, scores, embeddings), scores.astype(np.float64)

    def predict_prepared(
        self, data_dir: Path, rows: pd.DataFrame, all_rows: pd.DataFrame, **loader: int | None
    ) -> np.ndarray:
        return self.predict_prepared_both(data_dir, rows, all_rows, **loader)[0]

    def predict_raw(
        self, source: ImageSource, frame: pd.DataFrame, members: list[str], **loader: int | None
    ) -> np.ndarray:
        scores, embeddings = self.image.embed_raw(source, frame, members, **loader)
        return self.contextualise(frame, scores, embeddings)

    def fitted_on(self, data: Path, split: str) -> bool:
        """Whether evaluating `split` of `data` scores images the stage was fitted on (optimistic numbers)."""
        if self.spec.fitted_data is None or Path(data).resolve() != self.spec.fitted_data:
            return False
        return split == "all" or split in self.spec.fitted_splits
