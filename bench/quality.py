"""Real-data quality: the basic CNN beside the ImageNet-pretrained EfficientNet-Lite0 on one lesion-grouped split.

HAM10000 and derm7pt (../shared/data beside the checkout) are prepared into one dataset at 224 px and split by
lesion (HAM10000's lesion_id; derm7pt has one image per lesion), 20% test, 20% of the rest for validation. Each
model trains through the project's own `train` with its defaults, at 224 px with bf16 autocast and channels-last,
for a fixed number of epochs that keeps the whole benchmark inside its time budget on a 2-core CPU (Lite0's step
is about 5x dearer than the basic CNN's, so it gets fewer epochs); the best-validation weights are scored on the
test split by `evaluate`: AUC with its 95% patient-bootstrap interval and the AUC within each source; a last row
gives Lite0's AUC minus the basic CNN's with a paired interval (both scored on the same lesion resamples).
Training images/s counts only the training epochs (validation excluded). --quick runs the same code on the
80-image smoke set for one epoch at 64 px: a check that the benchmark works, not a quality figure.
Skips with a message when ../shared/data is absent.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import lightning as L
import pandas as pd
from sklearn.metrics import roc_auc_score

from bench.common import SHARED_DATA
from melanoma.config import EvaluateConfig, PrepareConfig, SplitConfig, TrainConfig
from melanoma.data.prepare import prepare, read_manifest
from melanoma.data.split import split
from melanoma.errors import MelanomaError
from melanoma.evaluation.evaluate import evaluate
from melanoma.evaluation.metrics import paired_auc_difference
from melanoma.training.fit import train

FULL = {"sources": ["ham10000", "derm7pt"], "image_size": 224, "epochs": {"basic-cnn": 5, "tf_efficientnet_lite0": 2}}
QUICK = {"sources": ["smoke"], "image_size": 64, "epochs": {"basic-cnn": 1, "tf_efficientnet_lite0": 1}}


class TrainingClock(L.Callback):
    """Seconds and images of the training epochs alone, so validation does not dilute the throughput."""

    def __init__(self) -> None:
        self.seconds, self.images, self._started = 0.0, 0, 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.images += len(batch[-1])

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.seconds += time.perf_counter() - self._started


def train_and_score(
    data: Path, out: Path, model: str, image_size: int, epochs: int, n_bootstrap: int
) -> tuple[dict, pd.DataFrame]:
    """Train with the project's `train`, score the test split with `evaluate`: the table row and the predictions."""
    clock = TrainingClock()
    config = TrainConfig(
        data=data,
        out=out,
        model=model,
        pretrained=model != "basic-cnn",
        epochs=epochs,
        batch_size=32,
        image_size=image_size,
        precision="bf16-mixed",
        channels_last=True,
    )
    started = time.perf_counter()
    run = train(config, callbacks=[clock])
    train_seconds = time.perf_counter() - started
    metrics = evaluate(EvaluateConfig(run=run, data=data, split="test", n_bootstrap=n_bootstrap))
    predictions = pd.read_csv(Path(metrics["out"]) / "predictions.csv")
    sources = read_manifest(data).set_index("image_name").loc[predictions["image_name"], "source"].to_numpy()
    row = {
        "model": model + (" (ImageNet)" if config.pretrained else " (random init)"),
        "epochs": epochs,
        "test_auc": metrics["auc"],
        "auc_95ci": "{:.3f}-{:.3f}".format(*metrics["auc_ci"]) if metrics["auc_ci"] else None,
        "pauc_80tpr": metrics["partial_auc_above_80_tpr"],
    }
    for source in sorted(set(sources)):
        part = predictions[sources == source]
        if part["target"].nunique() == 2:
            row[f"auc_{source}"] = roc_auc_score(part["target"], part["probability"])
    return row | {"train_img_s": clock.images / clock.seconds, "wall_s": train_seconds}, predictions


def paired_difference(a: tuple[str, pd.DataFrame], b: tuple[str, pd.DataFrame], n_bootstrap: int) -> dict:
    """The second model's AUC minus the first's, on the same lesion resamples (what `melanoma compare` reports)."""
    (name_a, first), (name_b, second) = a, b
    paired = paired_auc_difference(
        second["target"].to_numpy(), second["probability"].to_numpy(), first["probability"].to_numpy(),
        second["patient_id"].to_numpy(), n_bootstrap, seed=0,
    )  # fmt: skip
    low_high = paired["auc_difference_ci"]
    return {
        "model": f"difference: {name_b} - {name_a}",
        "test_auc": paired["auc_difference"],
        "auc_95ci": f"{low_high[0]:+.3f} to {low_high[1]:+.3f}" if low_high else None,
    }


def run(quick: bool) -> dict:
    settings = QUICK if quick else FULL
    title = f"Real-data quality: {' + '.join(settings['sources'])}, lesion-grouped test split"
    missing = [s for s in settings["sources"] if not (SHARED_DATA / s / "metadata.csv").is_file()]
    if missing:
        return {"title": title, "rows": [], "note": f"skipped: {SHARED_DATA / missing[0]} not found"}
    n_bootstrap = 200 if quick else 2000
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        for source in settings["sources"]:
            folder = SHARED_DATA / source
            prepare(
                PrepareConfig(
                    images=folder / "images", metadata=folder / "metadata.csv", out=data, size=224, source=source
                )
            )
        table = split(SplitConfig(data=data))
        predictions = {}
        for model, epochs in settings["epochs"].items():
            try:
                out = Path(tmp) / model
                row, predictions[model] = train_and_score(data, out, model, settings["image_size"], epochs, n_bootstrap)
                rows.append(row)
            except MelanomaError as error:  # e.g. Lite0's offline weights package is not installed
                rows.append({"model": f"{model}: skipped ({error})"})
    if len(predictions) == 2:
        rows.append(paired_difference(*predictions.items(), n_bootstrap))
    test = table.loc["test"]
    note = (f"{settings['image_size']} px, batch 32, bf16-mixed + channels-last, project defaults otherwise; test "
            f"split {test['images']} images / {test['melanomas']} melanomas; AUC CI from {n_bootstrap} lesion "
            "resamples; train_img_s excludes validation")  # fmt: skip
    return {"title": title, "rows": rows, "note": note}
