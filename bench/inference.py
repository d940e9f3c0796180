"""Inference images/s: PyTorch eager vs ONNX Runtime, the same model and inputs, measured in one run on this machine.

    python -m bench.inference                                   # basic-cnn at 512, tf_efficientnet_lite0 at 224
    python -m bench.inference --models resnest50d:224 --batches 1 16 --threads 4 --json out.json

Each model is built with the training defaults (metadata MLP included), exported with the same code as
`melanoma export` (trace_onnx), and both engines score the same seeded random network-ready inputs: decoding and
preprocessing are left out, as they are identical for both. Weights are random (speed does not depend on them)
unless --run gives a trained run, whose own model and input size are then used. The figure is the median of
--repeats timed calls after one warm-up call; torch and ONNX Runtime use the same number of threads.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import median_seconds
from melanoma.inference.export import Exportable, example_inputs, onnx_session, trace_onnx
from melanoma.inference.predictor import Predictor
from melanoma.models import create_model

METADATA_FEATURES = 13  # the default MetadataEncoder's width
TRAINING_DEFAULTS = dict(metadata_hidden=[32, 32], fused_width=64, dropout=0.3)


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
            print(
                f"  {name} @{size} batch {batch}: eager {batch / eager:.1f} img/s, ONNX Runtime {batch / onnx:.1f}"
                f" img/s",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["basic-cnn:512", "tf_efficientnet_lite0:224"],
        help="NAME:SIZE pairs (basic-cnn trains at 512 by default)",
    )
    parser.add_argument("--run", type=Path, help="a trained run instead of --models")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    if args.run is not None:
        predictor = Predictor.from_run(args.run, device="cpu")
        config = predictor.config
        features = config.metadata.dim if config.metadata is not None else 0
        size = config.preprocessing.image_size
        rows += bench_model(
            config.train.model, predictor.model, size, features, args.batches, args.repeats, args.threads
        )
    else:
        for spec in args.models:
            name, _, size = spec.partition(":")
            model = create_model(name, METADATA_FEATURES, **TRAINING_DEFAULTS).eval()
            rows += bench_model(
                name, model, int(size or 224), METADATA_FEATURES, args.batches, args.repeats, args.threads
            )

    print(
        f"\nInference images/s on {platform.processor() or platform.machine()}, {args.threads} threads, "
        f"torch {torch.__version__}, median of {args.repeats} (preprocessing excluded)\n"
    )
    header = f"{'model':<24}{'size':>6}{'batch':>7}{'eager':>10}{'ONNX RT':>10}{'speed-up':>10}{'max |diff|':>12}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['model']:<24}{row['image_size']:>6}{row['batch']:>7}{row['eager_images_per_s']:>10.1f}"
            f"{row['onnxruntime_images_per_s']:>10.1f}{row['speedup']:>9.2f}x{row['max_abs_difference']:>12.1e}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
