"""Does the data pipeline keep up with the model? Images/s of each, measured in one run on this machine.

    python bench/throughput.py --model basic-cnn --image-size 224
    python bench/throughput.py --model tf_efficientnet_lite0 --data /path/to/prepared --json out.json

The loader figure is one process decoding cached JPEGs and augmenting them (multiply by --num-workers for a
GPU box); the model figure is a full training step (forward, backward, AdamW) on random tensors, in fp32 and in
bf16 autocast with channels-last. On a GPU the step runs on CUDA. Without --data a synthetic dataset is made.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from melanoma.config import PrepareConfig, TrainConfig
from melanoma.data.dataset import MetadataEncoder, prepared_dataset
from melanoma.data.prepare import prepare, read_manifest
from melanoma.data.synthetic import generate_synthetic
from melanoma.models import create_model, default_data_settings
from melanoma.rundir import Preprocessing
from melanoma.training.fit import resolve


def loader_images_per_second(data: Path, preprocessing: Preprocessing, images: int, repeats: int) -> float:
    manifest = read_manifest(data).head(images)
    features = MetadataEncoder().encode(manifest)
    dataset = prepared_dataset(data, manifest, features, preprocessing.transforms(train=True, color_jitter=0.2))
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for index in range(len(dataset)):
            dataset[index]
        rates.append(len(dataset) / (time.perf_counter() - started))
    return statistics.median(rates)


def step_images_per_second(
    model_name: str, image_size: int, batch_size: int, steps: int, bf16: bool, device: torch.device
) -> float:
    torch.manual_seed(0)
    model = create_model(model_name, 13, [32, 32], 64, 0.3).to(device).train()
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    metadata, targets = torch.randn(batch_size, 13, device=device), torch.rand(batch_size, device=device).round()
    if bf16:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    timings = []
    for step in range(steps + 2):  # two warm-up steps
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images, metadata).float(), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:
            timings.append(time.perf_counter() - started)
    return batch_size / statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="basic-cnn")
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's own")
    parser.add_argument("--data", type=Path, help="a prepared dataset (default: synthetic, prepared at 512)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--images", type=int, default=64, help="images decoded per loader repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    config = resolve(TrainConfig(data=Path("."), out=Path("."), model=args.model, image_size=args.image_size))
    settings = default_data_settings(args.model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            images, metadata = generate_synthetic(Path(tmp) / "raw", n_patients=12, image_size=(768, 576))
            data = Path(tmp) / "data"
            prepare(PrepareConfig(images=images, metadata=metadata, out=data, size=512))
        preprocessing = Preprocessing(512, config.image_size, settings.mean, settings.std, config.crop_pct,
                                      settings.interpolation)  # fmt: skip
        loader = loader_images_per_second(data, preprocessing, args.images, args.repeats)
    results = {
        "model": args.model,
        "image_size": config.image_size,
        "batch_size": args.batch_size,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "loader_images_per_s_per_worker": round(loader, 1),
        "train_step_images_per_s_fp32": round(
            step_images_per_second(args.model, config.image_size, args.batch_size, args.steps, False, device), 1
        ),
        "train_step_images_per_s_bf16_channels_last": round(
            step_images_per_second(args.model, config.image_size, args.batch_size, args.steps, True, device), 1
        ),
    }
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
    fastest = max(results["train_step_images_per_s_fp32"], results["train_step_images_per_s_bf16_channels_last"])
    print(f"{'workers needed to keep up':<{width}}  {fastest / results['loader_images_per_s_per_worker']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
