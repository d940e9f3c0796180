"""RUN dir -> melanoma probabilities, for prepared datasets and for raw images (folder or zip).

`load_predictor` accepts a trained run or an ensemble of runs; both score with optional test-time augmentation.
With engine "onnx" the exported model (inference/export.py) runs through ONNX Runtime behind the same Predictor,
so decoding, transforms and metadata encoding are shared by both engines rather than written twice.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from melanoma.config import PredictConfig, atomic_write_text
from melanoma.context.spec import read_context
from melanoma.data.dataset import LesionDataset, default_num_workers, prepared_dataset
from melanoma.data.images import ImageSource, load_image
from melanoma.data.metadata import CANONICAL_COLUMNS, read_metadata
from melanoma.errors import MelanomaError
from melanoma.inference.ensemble import combine_scores, read_ensemble
from melanoma.models import embedding_layer
from melanoma.rundir import CONFIG, WEIGHTS, RunConfig

if TYPE_CHECKING:
    from melanoma.context.predictor import ContextPredictor

DIHEDRAL = 8  # the flips and quarter turns of a square: lesions have no canonical orientation
ENGINES = ("torch", "onnx")


def dihedral(images: torch.Tensor, index: int) -> torch.Tensor:
    """The `index`-th of the 8 flips/transposes of a square (..., H, W) batch: 0 is the identity, 1-3 flip
    horizontally, vertically and both (a half turn), 4-7 do the same after a transpose (the quarter turns and the
    diagonal mirrors), so the first 2 or 4 are the cheap flips."""
    if index >= 4:
        images = images.transpose(-1, -2)
    flips = ((), (-1,), (-2,), (-2, -1))[index % 4]
    return torch.flip(images, flips) if flips else images


class Predictor:
    """A trained model with the exact preprocessing and metadata encoding it was trained with.

    With `tta` > 1 each image is also scored flipped/transposed (the first `tta` of the 8 dihedral transforms)
    and the probabilities are averaged; with 8 the score no longer depends on the image's orientation.
    """

    scores_are_probabilities = True

    def __init__(self, config: RunConfig, model: torch.nn.Module, device: torch.device, tta: int = 1) -> None:
        if not 1 <= tta <= DIHEDRAL:
            raise MelanomaError(f"--tta {tta}: expected 1 (off) to {DIHEDRAL} (all flips and transposes)")
        self.tta = tta
        self.config = config
        self.model = model.to(device).eval()
        self.device = device
        self.transform = config.preprocessing.transforms(train=False)

    @classmethod
    def from_run(
        cls,
        run_dir: Path,
        device: str | None = None,
        tta: int = 1,
        engine: str = "torch",
        onnx_model: Path | None = None,
    ) -> Predictor:
        if engine not in ENGINES:
            raise MelanomaError(f"--engine {engine}: expected {' or '.join(ENGINES)}")
        config = RunConfig.load(run_dir)
        if engine == "onnx":
            from melanoma.inference.export import load_onnx_model

            return cls(config, load_onnx_model(run_dir, config, onnx_model), torch.device("cpu"), tta)
        path = Path(run_dir) / WEIGHTS
        if not path.is_file():
            raise MelanomaError(f"{run_dir}: no {WEIGHTS}; the run has not finished (rerun `melanoma train` to resume)")
        model = config.create_model()
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise MelanomaError(f"{path}: cannot read weights ({exc})") from None
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise MelanomaError(
                f"{path}: weights do not match the model in config.yaml "
                f"(missing: {len(missing)}, unexpected: {len(unexpected)}, e.g. {(missing or unexpected)[0]})"
            )
        return cls(config, model, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")), tta)

    @property
    def prepared_size(self) -> int:
        return self.config.preprocessing.prepared_size

    def features(self, frame: pd.DataFrame) -> np.ndarray:
        """Metadata features for `frame`; zero columns when the model does not use metadata."""
        if self.config.metadata is None:
            return np.zeros((len(frame), 0), dtype=np.float32)
        return self.config.metadata.encode(frame)

    @torch.inference_mode()
    def predict_dataset(self, dataset: Dataset, batch_size: int = 32, num_workers: int | None = None) -> np.ndarray:
        """Melanoma probability for every item of a LesionDataset, in order."""
        workers = default_num_workers() if num_workers is None else num_workers
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
        scores = []
        for images, metadata, _ in tqdm(loader, desc="predict", unit="batch", disable=None, leave=False):
            images, metadata = images.to(self.device), metadata.to(self.device)
            probabilities = [
                torch.sigmoid(self.model(dihedral(images, index), metadata).float()) for index in range(self.tta)
            ]
            scores.append(torch.stack(probabilities).mean(dim=0).cpu().numpy())
        return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)

    def predict_prepared(
        self, data_dir: Path, rows: pd.DataFrame, all_rows: pd.DataFrame, **loader: int | None
    ) -> np.ndarray:
        """Scores for `rows` of a prepared dataset; patient image counts come from `all_rows`."""
        features = self.features(all_rows)[all_rows.index.get_indexer(rows.index)]
        return self.predict_dataset(prepared_dataset(data_dir, rows, features, self.transform), **loader)

    def predict_raw(
        self, source: ImageSource, frame: pd.DataFrame, members: list[str], **loader: int | None
    ) -> np.ndarray:
        """Scores for raw images, decoded and cropped exactly as `prepare` does."""
        load = partial(_load_member, source, self.config.preprocessing.prepared_size)
        targets = np.full(len(frame), np.nan, dtype=np.float32)
        dataset = LesionDataset(members, self.features(frame), targets, self.transform, load, unreadable_as_nan=True)
        return self.predict_dataset(dataset, **loader)

    @torch.inference_mode()
    def embed_dataset(
        self, dataset: Dataset, batch_size: int = 32, num_workers: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, pooled image embeddings) for every item, in order, from one forward pass per batch.

        The embedding is the image network's pooled features (models.embedding_layer), caught with a forward hook
        so that the score comes from the model's own forward; with TTA both are averaged.
        """
        workers = default_num_workers() if num_workers is None else num_workers
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
        caught: list[torch.Tensor] = []
        layer, width = embedding_layer(self.model.image_net)
        hook = layer.register_forward_hook(lambda _module, _inputs, output: caught.append(output.flatten(1)))
        scores, embeddings = [], []
        try:
            for images, metadata, _ in tqdm(loader, desc="embed", unit="batch", disable=None, leave=False):
                images, metadata = images.to(self.device), metadata.to(self.device)
                caught.clear()
                probabilities = [
                    torch.sigmoid(self.model(dihedral(images, index), metadata).float()) for index in range(self.tta)
                ]
                scores.append(torch.stack(probabilities).mean(dim=0).cpu().numpy())
                embeddings.append(torch.stack([e.float() for e in caught]).mean(dim=0).cpu().numpy())
        finally:
            hook.remove()
        if not scores:
            return np.zeros(0, dtype=np.float32), np.zeros((0, width), dtype=np.float32)
        return np.concatenate(scores), np.concatenate(embeddings)

    def embed_prepared(
        self, data_dir: Path, rows: pd.DataFrame, all_rows: pd.DataFrame, **loader: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, embeddings) for `rows` of a prepared dataset, like predict_prepared."""
        features = self.features(all_rows)[all_rows.index.get_indexer(rows.index)]
        return self.embed_dataset(prepared_dataset(data_dir, rows, features, self.transform), **loader)

    def embed_raw(
        self, source: ImageSource, frame: pd.DataFrame, members: list[str], **loader: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, embeddings) for raw images, like predict_raw (an unreadable image gives NaN in both)."""
        load = partial(_load_member, source, self.config.preprocessing.prepared_size)
        targets = np.full(len(frame), np.nan, dtype=np.float32)
        dataset = LesionDataset(members, self.features(frame), targets, self.transform, load, unreadable_as_nan=True)
        return self.embed_dataset(dataset, **loader)


class EnsemblePredictor:
    """Member runs combined per image (see ensemble.combine_scores), with the Predictor's scoring methods so that
    evaluate, compare and predict use an ENSEMBLE dir unchanged."""

    def __init__(self, members: list[Predictor], method: str) -> None:
        self.members = members
        self.method = method
        self.scores_are_probabilities = method == "mean"

    @property
    def prepared_size(self) -> int:
        return self.members[0].prepared_size

    def predict_prepared(
        self, data_dir: Path, rows: pd.DataFrame, all_rows: pd.DataFrame, **loader: int | None
    ) -> np.ndarray:
        scores = [member.predict_prepared(data_dir, rows, all_rows, **loader) for member in self.members]
        return combine_scores(scores, self.method)

    def predict_raw(
        self, source: ImageSource, frame: pd.DataFrame, members: list[str], **loader: int | None
    ) -> np.ndarray:
        return combine_scores(
            [member.predict_raw(source, frame, members, **loader) for member in self.members], self.method
        )


def load_predictor(
    run_dir: Path, tta: int = 1, device: str | None = None, engine: str = "torch", onnx_model: Path | None = None
) -> Predictor | EnsemblePredictor | ContextPredictor:
    """The scorer for a RUN dir: its trained model, for an ENSEMBLE dir its members' models combined, and for a
    CONTEXT_RUN dir its image run's scores judged within each patient by the second stage.

    With engine "onnx" an ensemble uses each member's own RUN/model.onnx, so `onnx_model` names one run's file.
    """
    if read_context(Path(run_dir)) is not None:
        if engine != "torch":
            raise MelanomaError(f"{run_dir}: a context run scores with PyTorch only; leave out --engine")
        from melanoma.context.predictor import ContextPredictor

        return ContextPredictor.from_dir(Path(run_dir), tta=tta, device=device)
    spec = read_ensemble(Path(run_dir))
    if spec is None:
        return Predictor.from_run(run_dir, device, tta, engine, onnx_model)
    if onnx_model is not None:
        raise MelanomaError(f"{run_dir}: an ensemble uses each member's RUN/model.onnx; leave out --onnx-model")
    members = []
    for member in spec.members:
        try:
            members.append(Predictor.from_run(member, device, tta, engine))
        except MelanomaError as exc:
            raise MelanomaError(f"{Path(run_dir) / CONFIG}: ensemble member {exc}") from None
    return EnsemblePredictor(members, spec.method)


def _load_member(source: ImageSource, size: int, member: str) -> Image.Image:
    return load_image(source.read_bytes(member), size)


def raw_frame(names: list[str], metadata: Path | None) -> tuple[pd.DataFrame, list[str]]:
    """The canonical metadata rows for new images (missing values where `metadata` has no row), plus problems.

    An image without a patient id counts as its own patient, as in `prepare`.
    """
    frame = pd.DataFrame({"image_name": names})
    problems: list[str] = []
    if metadata is not None:
        table = read_metadata(Path(metadata))
        problems += table.problems
        frame = frame.merge(table.frame, on="image_name", how="left")
        without = frame["patient_id"].isna()
        if without.any():
            problems.append(f"{metadata}: no row for {int(without.sum())} images; predicted without metadata")
    for column in CANONICAL_COLUMNS:
        if column not in frame:
            frame[column] = None
    frame["patient_id"] = frame["patient_id"].fillna(frame["image_name"])
    return frame, problems


def predict(config: PredictConfig) -> pd.DataFrame:
    """The `predict` command: a folder or zip of raw images -> image_name,target CSV (Kaggle layout)."""
    predictor = load_predictor(config.run, tta=config.tta, engine=config.engine, onnx_model=config.onnx_model)
    if not predictor.scores_are_probabilities:
        print("warning: a rank ensemble's scores are ranks among these images, not probabilities")
    source = ImageSource(Path(config.images))
    found, problems = source.index()
    if not found:
        raise MelanomaError(f"{config.images}: no JPEG or PNG images found")
    names = sorted(found)
    frame, metadata_problems = raw_frame(names, config.metadata)
    problems += metadata_problems
    for problem in problems:
        print(f"warning: {problem}")
    scores = predictor.predict_raw(
        source, frame, [found[n] for n in names], batch_size=config.batch_size, num_workers=config.num_workers
    )
    result = pd.DataFrame({"image_name": names, "target": scores})
    for name in result.loc[result["target"].isna(), "image_name"]:
        try:
            load_image(source.read_bytes(found[name]), predictor.prepared_size)
        except ValueError as exc:
            print(f"warning: {config.images}/{found[name]}: {exc}; no prediction")
    atomic_write_text(Path(config.out), result.to_csv(index=False))
    return result
