"""The `train` command: a prepared, split dataset -> a RUN dir (weights, config, logs, checkpoints).

A killed run resumes from its last checkpoint when the same command is run again; a finished run is not
retrained; a RUN dir holding a run with other settings is refused rather than overwritten.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from safetensors.torch import save_file

from melanoma.config import TrainConfig, atomic_write_text, check_same_settings, to_plain
from melanoma.data.dataset import MetadataEncoder
from melanoma.data.prepare import DATASET_INFO, read_manifest
from melanoma.errors import MelanomaError
from melanoma.models import create_model, default_data_settings
from melanoma.rundir import CHECKPOINTS, METRICS, WEIGHTS, Preprocessing, RunConfig, library_versions
from melanoma.training.datamodule import LesionDataModule
from melanoma.training.module import LesionClassifierModule

# Settings that may change between a run and its resumption without changing the result.
RESUMABLE_DIFFERENCES = {"out", "num_workers", "accelerator", "devices", "num_nodes", "strategy", "compile"}


def train(config: TrainConfig, callbacks: Sequence[Callback] = ()) -> Path:
    """Train into `config.out`; `callbacks` join the Lightning loop (`tune` passes its pruning callback)."""
    config = resolve(config)
    run = Path(config.out)
    manifest = read_manifest(config.data)
    train_rows, val_rows = _select_rows(manifest, config)
    status = _check_run_dir(run, config)
    if status == "complete":
        print(f"{run}: already trained with these settings; nothing to do")
        return run

    encoder = MetadataEncoder.fit(train_rows) if config.use_metadata else None
    settings = default_data_settings(config.model)
    preprocessing = Preprocessing(
        prepared_size=_prepared_size(Path(config.data)),
        image_size=config.image_size,
        mean=settings.mean,
        std=settings.std,
        crop_pct=config.crop_pct,
        interpolation=settings.interpolation,
    )
    run_config = RunConfig(train=config, preprocessing=preprocessing, metadata=encoder, versions=library_versions())
    run.mkdir(parents=True, exist_ok=True)
    run_config.save(run)

    L.seed_everything(config.seed, workers=True, verbose=False)
    if encoder is None:
        features = np.zeros((len(manifest), 0), dtype=np.float32)
    else:
        features = encoder.encode(manifest)  # patient image counts over the whole dataset
    rows_of = manifest.index.get_indexer
    data = LesionDataModule(
        Path(config.data),
        train_rows,
        val_rows,
        features[rows_of(train_rows.index)],
        features[rows_of(val_rows.index)],
        preprocessing,
        batch_size=config.batch_size,
        oversample=config.oversample,
        color_jitter=config.color_jitter,
        num_workers=config.num_workers,
    )
    model = create_model(
        config.model,
        encoder.dim if encoder else 0,
        config.metadata_hidden,
        config.fused_width,
        config.dropout,
        pretrained=config.pretrained,
        weights=config.weights,
    )
    on_gpu = _uses_gpu(config.accelerator)
    module = LesionClassifierModule(
        model,
        lr=config.lr,
        backbone_lr=config.backbone_lr,
        weight_decay=config.weight_decay,
        warmup_epochs=config.warmup_epochs,
        channels_last=on_gpu if config.channels_last is None else config.channels_last,
    )
    if config.compile:
        module.model.compile()  # in place: parameter names, and so the saved weights, stay the same
    checkpoint = ModelCheckpoint(
        dirpath=run / CHECKPOINTS,
        filename="best",
        monitor=None if config.final else "val_auc",
        mode="max",
        save_top_k=0 if config.final else 1,
        save_last=True,
    )
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=config.precision or default_precision(on_gpu),
        accumulate_grad_batches=config.accumulate_grad_batches,
        # one log folder per attempt (logs/version_N), flushed every step so that a kill loses nothing
        logger=CSVLogger(run, name="logs", flush_logs_every_n_steps=1),
        callbacks=[checkpoint, *callbacks],
        default_root_dir=run,
        log_every_n_steps=max(1, min(50, len(train_rows) // config.batch_size)),
        num_sanity_val_steps=0,
        limit_val_batches=0 if config.final else None,
    )
    last = run / CHECKPOINTS / "last.ckpt"
    resume = last if status == "resume" and last.exists() else None
    if resume:
        print(f"Resuming {run} from {resume}")
    started = time.time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
        try:
            trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)  # no pickled code runs
        except SystemExit:
            if trainer.interrupted:  # Lightning turns Ctrl+C into exit(1); the last epoch's checkpoint remains
                raise KeyboardInterrupt from None
            raise
    if not trainer.is_global_zero:
        return run

    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else last
    state = torch.load(best, map_location="cpu", weights_only=True)
    weights = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
    _save_weights(run / WEIGHTS, weights)
    run_config.result = {
        "weights_from": best.name,
        "best_epoch": int(state["epoch"]) + 1,
        "best_val_auc": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "epochs": config.epochs,
        "train_images": len(train_rows),
        "val_images": len(val_rows),
        "train_seconds": round(time.time() - started, 1),
        "devices": trainer.world_size,
        "precision": str(trainer.precision),
    }
    run_config.save(run)
    _merge_attempt_logs(run)
    return run


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill the settings whose default depends on the model, so config.yaml records what was really used."""
    settings = default_data_settings(config.model)
    uses_pretrained = config.pretrained or config.weights is not None
    return replace(
        config,
        image_size=config.image_size or settings.image_size,
        crop_pct=config.crop_pct or settings.crop_pct,
        backbone_lr=config.backbone_lr or (config.lr / 10 if uses_pretrained else config.lr),
    )


def _uses_gpu(accelerator: str) -> bool:
    return accelerator in {"gpu", "cuda"} or (accelerator == "auto" and torch.cuda.is_available())


def _merge_attempt_logs(run: Path) -> None:
    """RUN/metrics.csv from every attempt's log; a resumed attempt replaces the epochs it re-ran."""
    merged = pd.DataFrame()
    attempts = sorted((run / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    for path in attempts:
        attempt = pd.read_csv(path)
        if attempt.empty:
            continue
        if not merged.empty:
            merged = merged[merged["epoch"] < attempt["epoch"].min()]
        merged = pd.concat([merged, attempt], ignore_index=True)
    atomic_write_text(run / METRICS, merged.to_csv(index=False))


def default_precision(on_gpu: bool) -> str:
    """bf16 autocast where it is fast (recent GPUs); full precision elsewhere for exact, portable results."""
    if on_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def _select_rows(manifest: pd.DataFrame, config: TrainConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    if (manifest["split"] == "").all():
        raise MelanomaError(f"{config.data}: no split assigned; run `melanoma split {config.data}` first")
    train_splits = ["train", "val"] if config.final else ["train"]
    train_rows = manifest[manifest["split"].isin(train_splits)]
    val_rows = manifest[manifest["split"] == "val"] if not config.final else manifest.iloc[:0]
    if config.max_images is not None and config.max_images < len(train_rows):
        train_rows = train_rows.sample(n=config.max_images, random_state=config.seed)
    if train_rows.empty:
        raise MelanomaError(f"{config.data}: the train split is empty")
    if train_rows["target"].nunique() < 2:
        raise MelanomaError(f"{config.data}: the train split needs both melanoma and non-melanoma images")
    if not config.final and val_rows.empty:
        raise MelanomaError(f"{config.data}: no val split to validate on; split with --val-size > 0, or use --final")
    return train_rows, val_rows


def _check_run_dir(run: Path, config: TrainConfig) -> str:
    """'new', 'resume' or 'complete'; refuses a folder holding something else or a run with other settings."""
    if not run.exists() or not any(run.iterdir()):
        return "new"
    try:
        existing = RunConfig.load(run)
    except MelanomaError:
        raise MelanomaError(f"{run}: folder is not empty and is not a run directory; use a new --out") from None
    check_same_settings(run, "run", to_plain(existing.train), to_plain(config), RESUMABLE_DIFFERENCES)
    return "complete" if (run / WEIGHTS).exists() else "resume"


def _prepared_size(data_dir: Path) -> int:
    return int(json.loads((data_dir / DATASET_INFO).read_text())["size"])


def _save_weights(path: Path, weights: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp))
    tmp.replace(path)
