"""The `demo` command: synthetic data -> prepare -> split -> train -> evaluate, in a few minutes on a CPU.

Needs no download. Its numbers describe synthetic lesions, not real melanoma detection.
"""

from __future__ import annotations

from pathlib import Path

from melanoma.config import DemoConfig, EvaluateConfig, PrepareConfig, SplitConfig, TrainConfig
from melanoma.data.prepare import prepare
from melanoma.data.split import split
from melanoma.data.synthetic import generate_synthetic
from melanoma.evaluation.evaluate import evaluate
from melanoma.training.fit import train


def demo(config: DemoConfig) -> dict:
    out = Path(config.out)
    print(f"1/5 generating {config.n_patients} synthetic patients in {out / 'raw'}")
    images, metadata = generate_synthetic(
        out / "raw",
        n_patients=config.n_patients,
        image_size=(config.image_size * 3, config.image_size * 9 // 4),
        seed=config.seed,
    )
    data = out / "data"
    print(f"2/5 prepare -> {data}")
    prepare(PrepareConfig(images=images, metadata=metadata, out=data, size=config.image_size * 2))
    print("3/5 split (grouped by patient, stratified by melanoma)")
    print(split(SplitConfig(data=data, seed=config.seed)).to_string())
    run = out / "run"
    print(f"4/5 train basic-cnn + metadata for {config.epochs} epochs -> {run}")
    train(
        TrainConfig(
            data=data,
            out=run,
            model="basic-cnn",
            epochs=config.epochs,
            batch_size=32,
            image_size=config.image_size,
            seed=config.seed,
            oversample=2.0,
        )
    )
    print("5/5 evaluate on the held-out test split")
    return evaluate(EvaluateConfig(run=run, data=data, split="test"))
