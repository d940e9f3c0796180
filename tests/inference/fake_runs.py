"""Run directories with freshly initialised weights for any model, written without training (milliseconds)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from melanoma.data.dataset import MetadataEncoder
from melanoma.rundir import WEIGHTS, RunConfig


def make_run(
    out: Path, like: Path, model: str | None = None, image_size: int | None = None, metadata: bool = True
) -> Path:
    """A run like `like` (a trained run), with another model, input size or no metadata, and seeded weights."""
    config = RunConfig.load(like)
    train = dataclasses.replace(config.train, model=model or config.train.model, use_metadata=metadata)
    preprocessing = config.preprocessing
    if image_size is not None:
        preprocessing = dataclasses.replace(preprocessing, image_size=image_size, prepared_size=image_size)
    encoder = (config.metadata or MetadataEncoder()) if metadata else None
    run = RunConfig(train=train, preprocessing=preprocessing, metadata=encoder, versions=config.versions)
    out.mkdir(parents=True)
    run.save(out)
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in run.create_model().state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    return out


def write_evaluation(run: Path, name: str, split: str, thresholds: dict[str, float], tta: int = 1) -> Path:
    """RUN/eval/NAME/metrics.json with the operating-point fields `evaluate` writes."""
    points = {key: {"sensitivity": 0.9, "specificity": 0.5, "threshold": value} for key, value in thresholds.items()}
    metrics = {
        "auc": 0.8,
        "images": 100,
        "melanomas": 10,
        "operating_points": points,
        "split": split,
        "tta": tta,
        "scores": "probability",
        "data": f"/data/{name.rsplit('-', 1)[0]}",
    }
    path = run / "eval" / name / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))
    return path
