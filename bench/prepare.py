"""Prepare: images/s of the project's decode path vs the naive one, with the PSNR of each against a reference.

Project: Pillow draft-mode (DCT-scaled) JPEG decode, EXIF, centre crop, Lanczos resize (melanoma.data.images).
Naive: what the founding notebooks did, full decode with OpenCV, centre crop, cv2.resize (bilinear).
Reference: full decode, centre crop, area (box) resampling, the faithful but slow answer.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bench.common import median_seconds
from melanoma.data.images import load_image

SIZES = [(6000, 4000), (1024, 1024), (640, 480)]


def textured_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A skin-like JPEG with structure at every scale (flat images would flatter every decoder)."""
    rng = np.random.default_rng(seed)
    layers = np.zeros((height, width, 3), dtype=np.float32)
    for cells, weight in [(8, 60.0), (64, 30.0), (512, 15.0)]:
        coarse = rng.normal(0, 1, (max(2, height * cells // width), cells, 3)).astype(np.float32)
        layer = Image.fromarray(((coarse - coarse.min()) / np.ptp(coarse) * 255).astype(np.uint8))
        layers += (np.asarray(layer.resize((width, height), Image.Resampling.BICUBIC), np.float32) / 255 - 0.5) * weight
    skin = np.array([200.0, 150.0, 130.0], dtype=np.float32)
    pixels = np.clip(skin + layers + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def _centre_square(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def reference(data: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        side = min(size, *image.size)  # like the project, never upscale
        return np.asarray(image.crop(_centre_square(*image.size)).resize((side, side), Image.Resampling.BOX))


def naive(data: bytes, size: int) -> np.ndarray:
    import cv2

    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    height, width = pixels.shape[:2]
    left, top, right, bottom = _centre_square(width, height)
    side = min(size, width, height)
    return cv2.cvtColor(cv2.resize(pixels[top:bottom, left:right], (side, side)), cv2.COLOR_BGR2RGB)


def psnr(image: np.ndarray, target: np.ndarray) -> float:
    error = np.mean((image.astype(np.float64) - target.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255**2 / error))


def run(quick: bool) -> dict:
    size, repeats = 512, (2 if quick else 5)
    try:
        import cv2  # noqa: F401

        has_cv2 = True
    except ImportError:
        has_cv2 = False
    rows = []
    for width, height in SIZES[1:] if quick else SIZES:
        data = textured_jpeg(width, height)
        target = reference(data, size)
        project = median_seconds(lambda data=data: load_image(data, size), repeats)
        row = {
            "source": f"{width}x{height}",
            "project_img_s": 1 / project,
            "project_psnr_db": psnr(np.asarray(load_image(data, size)), target),
        }
        if has_cv2:
            baseline = median_seconds(lambda data=data: naive(data, size), repeats)
            row |= {
                "naive_img_s": 1 / baseline,
                "naive_psnr_db": psnr(naive(data, size), target),
                "speedup": baseline / project,
            }
        rows.append(row)
    note = "one process; images/s = 1 / median decode-crop-resize time to 512 px"
    return {"title": "Prepare (decode + centre crop + resize to 512)", "rows": rows, "note": note}
