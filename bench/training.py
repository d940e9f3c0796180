"""Training: does the data pipeline keep up with the model, and what does Lightning cost over a plain loop?

For each model: images/s one loader process delivers (cached-JPEG decode + augmentation), and images/s of a full
training step (forward, backward, AdamW) in a plain PyTorch loop and in the project's LightningModule, in fp32,
with channels-last, and with bf16 autocast + channels-last. On a GPU the steps run on CUDA and the model FLOPs
utilisation is reported (FLOPs counted by torch.utils.flop_counter; peak from --peak-tflops or a known-GPU table).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from bench.common import median_seconds
from melanoma.config import PrepareConfig
from melanoma.data.dataset import MetadataEncoder, prepared_dataset
from melanoma.data.prepare import prepare, read_manifest
from melanoma.data.synthetic import generate_synthetic
from melanoma.models import create_model, default_data_settings
from melanoma.rundir import Preprocessing
from melanoma.training.module import LesionClassifierModule

# Dense bf16 peak TFLOP/s of common training GPUs, for MFU.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0, "4090": 165.0}

FULL = [("basic-cnn", 512), ("tf_efficientnet_lite0", 224), ("resnest50d", 416)]
QUICK = [("basic-cnn", 128)]


def _batch(size: int, batch_size: int, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, ...]:
    images = torch.randn(batch_size, 3, size, size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.randn(batch_size, 13, device=device), torch.rand(batch_size, device=device).round()


def plain_step_rate(name: str, size: int, batch_size: int, steps: int, variant: str, device: torch.device) -> float:
    """Images/s of a minimal hand-written training loop."""
    channels_last, bf16 = variant != "fp32", variant == "bf16+cl"
    model = create_model(name, 13, [32, 32], 64, 0.3).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, metadata, targets = _batch(size, batch_size, device, channels_last)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(images, metadata).float()
        torch.nn.functional.binary_cross_entropy_with_logits(logits, targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return batch_size / median_seconds(step, steps, warmup=2)


class _StepTimer(L.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())


def lightning_step_rate(name: str, size: int, batch_size: int, steps: int, variant: str) -> float:
    """Images/s of the project's LightningModule on the same model and batch (time between batch starts)."""
    channels_last, bf16 = variant != "fp32", variant == "bf16+cl"
    model = create_model(name, 13, [32, 32], 64, 0.3)
    module = LesionClassifierModule(model, 1e-4, 1e-4, 0.0, 0.0, channels_last=channels_last)
    images, metadata, targets = _batch(size, batch_size, torch.device("cpu"), False)
    loader = DataLoader(TensorDataset(images.repeat(steps + 3, 1, 1, 1), metadata.repeat(steps + 3, 1),
                                      targets.repeat(steps + 3)), batch_size=batch_size)  # fmt: skip
    timer = _StepTimer()
    trainer = L.Trainer(
        max_steps=steps + 3,
        precision="bf16-mixed" if bf16 else "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no validation loop and few workers are the point here
        trainer.fit(module, loader)
    return batch_size / statistics.median(np.diff(timer.starts[2:]))


def model_flops_per_image(name: str, size: int, device: torch.device) -> float:
    """Training FLOPs (forward + backward) of one image, counted by PyTorch."""
    model = create_model(name, 13, [32, 32], 64, 0.3).to(device).train()
    images, metadata, targets = _batch(size, 2, device, False)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.binary_cross_entropy_with_logits(model(images, metadata), targets).backward()
    return counter.get_total_flops() / 2


def loader_rate(data: Path, preprocessing: Preprocessing, images: int, repeats: int) -> float:
    """Images/s of one loader process: open the cached JPEG, augment, normalise."""
    manifest = read_manifest(data).head(images)
    dataset = prepared_dataset(data, manifest, MetadataEncoder().encode(manifest), preprocessing.transforms(True, 0.2))
    seconds = median_seconds(lambda: [dataset[i] for i in range(len(dataset))], repeats, warmup=0)
    return len(dataset) / seconds


def run(quick: bool, peak_tflops: float | None = None) -> dict:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch_size, steps = (8, 3) if quick else (16, 5)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        images, metadata = generate_synthetic(Path(tmp) / "raw", n_patients=4 if quick else 10, image_size=(768, 576))
        data = Path(tmp) / "data"
        prepare(PrepareConfig(images=images, metadata=metadata, out=data, size=512, workers=1))
        for name, size in QUICK if quick else FULL:
            settings = default_data_settings(name)
            preprocessing = Preprocessing(512, size, settings.mean, settings.std, 1.0, settings.interpolation)
            row = {"model": name, "size": size, "loader_img_s_per_worker": loader_rate(data, preprocessing, 32, 2)}
            for variant in ("fp32", "channels_last", "bf16+cl"):
                row[f"plain_{variant}"] = plain_step_rate(name, size, batch_size, steps, variant, device)
            for variant in ("fp32", "bf16+cl") if device.type == "cpu" else ():
                row[f"lightning_{variant}"] = lightning_step_rate(name, size, batch_size, steps, variant)
                row[f"overhead_{variant}"] = row[f"plain_{variant}"] / row[f"lightning_{variant}"]
            fastest = max(row[f"plain_{v}"] for v in ("fp32", "channels_last", "bf16+cl"))
            row["workers_to_keep_up"] = fastest / row["loader_img_s_per_worker"]
            if device.type == "cuda":
                gpu = torch.cuda.get_device_name()
                peak = peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None)
                flops = model_flops_per_image(name, size, device)
                row["mfu_bf16"] = flops * row["plain_bf16+cl"] / (peak * 1e12) if peak else None
            rows.append(row)
    note = (f"batch {batch_size}; step columns are training images/s (forward+backward+AdamW) on {device.type}; "
            "overhead = plain / Lightning images/s on the same model and batch")  # fmt: skip
    return {"title": "Training: data loader vs training step (images/s)", "rows": rows, "note": note}
