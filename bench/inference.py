"""Inference images/s: PyTorch eager vs ONNX Runtime, the same model and inputs, measured in one run on this machine.

    python -m bench inference                                   # basic-cnn at 512, tf_efficientnet_lite0 at 224
    python -m bench.inference --models resnest50d:224 --batches 1 16 --threads 4 --json out.json
    python -m bench.inference --run RUN                         # a trained run's own model and input size

Each model is built with the training defaults (metadata MLP included), exported with the same code as
`melanoma export` (trace_onnx), and both engines score the same seeded random network-ready inputs: decoding and
preprocessing are left out, as they are identical for both. Weights are random (speed does not depend on them)
unless --run gives a trained run. The figure is the median of --repeats timed calls after one warm-up call;
torch and ONNX Runtime use the same number of threads.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import format_table, median_seconds
from melanoma.inference.export import Exportable, example_inputs, onnx_session, trace_onnx
from melanoma.inference.predictor import Predictor
from melanoma.models import create_model

METADATA_FEATURES = 13  # the default MetadataEncoder's width
TRAINING_DEFAULTS = dict(metadata_hidden=[32, 32], fused_width=64, dropout=0.3)
FULL = {"models": ["basic-cnn:512", "tf_efficientnet_lite0:224"], "batches": [1, 32], "repeats": 5}
QUICK = {"models": ["basic-cnn:128"], "batches": [1, 8], "repeats": 2}


def bench_model(
    name: str, model: torch.nn.Module, size: int, features: int, batches: list[int], repeats: int, threads: int
) -> list[dict]:
    module = Exportable(model, features > 0).eval()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.onnx"
        trace_onnx(module, size, features, path, name=name)
        session = onnx_session(path, threads=threads)
        for batch in batches:
            inputs = example_inputs(size, features, batch, seed=batch)
            feeds = {key: tensor.numpy() for key, tensor in zip(("image", "metadata"), inputs, strict=False)}
            with torch.inference_mode():
                eager = median_seconds(lambda inputs=inputs: module(*inputs), repeats)
                reference = module(*inputs)[1].numpy()
            onnx = median_seconds(lambda feeds=feeds: session.run(["probability"], feeds), repeats)
            (probability,) = session.run(["probability"], feeds)
            rows.append(
                {
                    "model": name,
                    "image_size": size,
                    "batch": batch,
                    "eager_images_per_s": batch / eager,
                    "onnxruntime_images_per_s": batch / onnx,
                    "speedup": eager / onnx,
                    "max_abs_difference": float(np.abs(probability - reference).max()),
                }
            )
    return rows


def bench_models(specs: list[str], batches: list[int], repeats: int, threads: int) -> list[dict]:
    """NAME:SIZE specs, random weights with the training defaults."""
    torch.manual_seed(0)
    rows = []
    for spec in specs:
        name, _, size = spec.partition(":")
        model = create_model(name, METADATA_FEATURES, **TRAINING_DEFAULTS).eval()
        rows += bench_model(name, model, int(size or 224), METADATA_FEATURES, batches, repeats, threads)
    return rows


def run(quick: bool) -> dict:
    settings = QUICK if quick else FULL
    threads = torch.get_num_threads()
    rows = bench_models(settings["models"], settings["batches"], settings["repeats"], threads)
    note = (
        f"{threads} threads for both engines; median of {settings['repeats']} calls; decoding and "
        "preprocessing excluded; max_abs_difference = largest gap between the two engines' probabilities"
    )
    return {"title": "Inference: PyTorch eager vs ONNX Runtime (images/s)", "rows": rows, "note": note}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=FULL["models"], help="NAME:SIZE pairs")
    parser.add_argument("--run", type=Path, help="a trained run instead of --models")
    parser.add_argument("--batches", nargs="+", type=int, default=FULL["batches"])
    parser.add_argument("--repeats", type=int, default=FULL["repeats"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.run is not None:
        predictor = Predictor.from_run(args.run, device="cpu")
        config = predictor.config
        features = config.metadata.dim if config.metadata is not None else 0
        size, threads = config.preprocessing.image_size, args.threads
        rows = bench_model(config.train.model, predictor.model, size, features, args.batches, args.repeats, threads)
    else:
        rows = bench_models(args.models, args.batches, args.repeats, args.threads)
    print(f"Inference images/s, {args.threads} threads, median of {args.repeats} (preprocessing excluded)")
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
