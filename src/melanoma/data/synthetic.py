"""Procedural dermoscopy-like images with ISIC 2020 style metadata.

The demo and the test-suite need data that downloads nothing yet behaves like the
real challenge: a learnable image signal that a small CNN can pick up but not
perfectly, a weak signal in the metadata, missing values, class imbalance, and a
patient-level effect (one patient's lesions look alike) so that patient-grouped
splits matter. Every number obtained from this data is synthetic and says
nothing about real melanoma detection.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["METADATA_COLUMNS", "generate_synthetic"]

METADATA_COLUMNS: list[str] = [
    "image_name",
    "patient_id",
    "sex",
    "age_approx",
    "anatom_site_general_challenge",
    "target",
]

# Roughly the site frequencies of the ISIC 2020 training set.
_SITES: tuple[str, ...] = (
    "torso",
    "lower extremity",
    "upper extremity",
    "head/neck",
    "palms/soles",
    "oral/genital",
)
_SITE_WEIGHTS = np.array([0.51, 0.26, 0.15, 0.057, 0.014, 0.009])

_MISSING_RATE = 0.02
_BLAND_MELANOMA_RATE = 0.3  # melanomas whose own features look benign
_UGLY_DUCKLING_RATE = 0.6  # of the other melanomas, those drawn with another nevus look than the patient's own
_DARKNESS = (0.2, 0.85)  # range of the patients' typical nevus darkness
_RADIUS = (0.12, 0.3)  # and size (fraction of the shorter image side)
_AGE_LOGIT_SLOPE = 0.03  # per year: older patients mildly more likely malignant
_JPEG_QUALITY = 90

# Colours used for the variegated patches of malignant lesions (RGB in [0, 1]).
_BLACK_BROWN = np.array([0.16, 0.09, 0.07])
_BLUE_GREY = np.array([0.42, 0.48, 0.60])
_REDDISH = np.array([0.78, 0.34, 0.34])
_REGRESSION_WHITE = np.array([0.88, 0.82, 0.80])


@dataclass(frozen=True)
class _PatientStyle:
    """What makes all lesions of one patient look alike."""

    skin_rgb: np.ndarray
    skin_texture: float
    hair_rate: float
    nevus_darkness: float
    nevus_hue: float
    nevus_radius: float  # fraction of the shorter image side
    nevus_aspect: float


def generate_synthetic(
    out_dir: Path,
    n_patients: int = 60,
    images_per_patient: tuple[int, int] = (4, 12),
    image_size: int | tuple[int, int] = 128,
    melanoma_rate: float = 0.15,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write out_dir/images/*.jpg and out_dir/metadata.csv; return (images_dir, metadata_csv).

    Rows follow the ISIC 2020 ground-truth layout so the real loaders run unchanged
    on this data. The output is fully determined by the arguments, so tests and the
    demo can rely on identical files across runs.
    """
    if n_patients < 2:
        raise ValueError(
            f"n_patients must be at least 2 so that patient-grouped splits have both classes; got {n_patients}"
        )
    low, high = images_per_patient
    if low < 1 or high < low:
        raise ValueError(f"images_per_patient must be (low, high) with 1 <= low <= high; got {images_per_patient}")
    if high < 2:
        raise ValueError(
            f"images_per_patient upper bound must be at least 2 so one patient can hold "
            f"two benign images; got {images_per_patient}"
        )
    if not 0.0 <= melanoma_rate <= 1.0:
        raise ValueError(f"melanoma_rate must lie in [0, 1]; got {melanoma_rate}")
    width, height = _parse_size(image_size)

    rng = np.random.default_rng(seed)
    metadata, styles = _draw_metadata(rng, n_patients, low, high, melanoma_rate)
    image_seeds = rng.integers(0, 2**63 - 1, size=len(metadata))

    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for row, image_seed in zip(metadata.itertuples(index=False), image_seeds, strict=True):
        image_rng = np.random.default_rng(int(image_seed))
        style = styles[row.patient_id]
        image = _render_image(image_rng, style, bool(row.target), width, height)
        image.save(images_dir / f"{row.image_name}.jpg", format="JPEG", quality=_JPEG_QUALITY)

    metadata_csv = out_dir / "metadata.csv"
    metadata.to_csv(metadata_csv, index=False, lineterminator="\n")
    return images_dir, metadata_csv


def _parse_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """Accept an int (square) or (width, height), as PIL does."""
    if isinstance(image_size, (int, np.integer)):
        width = height = int(image_size)
    else:
        width, height = (int(v) for v in image_size)
    if width < 16 or height < 16:
        raise ValueError(f"image_size must be at least 16 pixels per side; got {image_size}")
    return width, height


# --------------------------------------------------------------------------- metadata


def _draw_metadata(
    rng: np.random.Generator,
    n_patients: int,
    low: int,
    high: int,
    melanoma_rate: float,
) -> tuple[pd.DataFrame, dict[str, _PatientStyle]]:
    """Draw patients, their images and labels, then apply the split-safety guarantees."""
    counts = rng.integers(low, high + 1, size=n_patients)
    patient_sex = rng.choice(["male", "female"], size=n_patients, p=[0.52, 0.48])
    patient_age = np.clip(np.round(rng.normal(50.0, 14.0, size=n_patients) / 5.0) * 5.0, 20.0, 85.0)
    patient_ids = [f"SP_{i + 1:04d}" for i in range(n_patients)]
    styles = {pid: _draw_style(rng) for pid in patient_ids}

    patient_index = np.repeat(np.arange(n_patients), counts)
    # Later visits of the same patient are sometimes recorded five years older.
    ages = patient_age[patient_index] + 5.0 * (rng.random(patient_index.size) < 0.15)
    ages = np.minimum(ages, 85.0)
    targets = _draw_targets(rng, ages, melanoma_rate)
    patient_index, ages, targets = _enforce_guarantees(rng, counts, patient_index, ages, targets)

    n_images = patient_index.size
    sites = rng.choice(np.array(_SITES), size=n_images, p=_SITE_WEIGHTS / _SITE_WEIGHTS.sum())
    frame = pd.DataFrame(
        {
            "patient_id": np.array(patient_ids)[patient_index],
            "sex": patient_sex[patient_index].astype(object),
            "age_approx": ages.astype(float),
            "anatom_site_general_challenge": sites.astype(object),
            "target": targets.astype(int),
        }
    )
    frame.loc[rng.random(n_images) < _MISSING_RATE, "sex"] = None
    frame.loc[rng.random(n_images) < _MISSING_RATE, "age_approx"] = np.nan
    frame.loc[rng.random(n_images) < _MISSING_RATE, "anatom_site_general_challenge"] = None

    # Shuffle so consecutive image names do not belong to the same patient, as in ISIC.
    frame = frame.iloc[rng.permutation(n_images)].reset_index(drop=True)
    frame.insert(0, "image_name", [f"SYN_{i + 1:07d}" for i in range(n_images)])
    return frame[METADATA_COLUMNS], styles


def _draw_targets(rng: np.random.Generator, ages: np.ndarray, melanoma_rate: float) -> np.ndarray:
    """Bernoulli labels whose mean is about melanoma_rate and whose odds rise with age."""
    if melanoma_rate <= 0.0 or melanoma_rate >= 1.0:
        return np.full(ages.size, int(melanoma_rate >= 1.0))
    centred = _AGE_LOGIT_SLOPE * (ages - ages.mean())
    lo, hi = -20.0, 20.0
    for _ in range(50):  # bisection on the intercept so the mean probability matches
        mid = 0.5 * (lo + hi)
        if _sigmoid(mid + centred).mean() < melanoma_rate:
            lo = mid
        else:
            hi = mid
    probabilities = _sigmoid(0.5 * (lo + hi) + centred)
    return (rng.random(ages.size) < probabilities).astype(int)


def _enforce_guarantees(
    rng: np.random.Generator,
    counts: np.ndarray,
    patient_index: np.ndarray,
    ages: np.ndarray,
    targets: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ensure >= 2 malignant, >= 2 benign and one patient with >= 2 benign-only images.

    Downstream stratified, patient-grouped splits fail on degenerate draws; counts
    are only raised to 2, which stays inside images_per_patient because its upper
    bound is validated to be >= 2.
    """
    counts = counts.copy()
    benign_patient = int(np.argmax(counts))
    others = np.flatnonzero(np.arange(counts.size) != benign_patient)
    counts[benign_patient] = max(counts[benign_patient], 2)
    if counts[others].sum() < 2:
        counts[others[0]] = 2

    new_index = np.repeat(np.arange(counts.size), counts)
    new_ages = np.empty(new_index.size)
    new_targets = np.empty(new_index.size, dtype=int)
    for patient in range(counts.size):
        old = np.flatnonzero(patient_index == patient)
        new = np.flatnonzero(new_index == patient)
        keep = min(old.size, new.size)
        new_ages[new[:keep]] = ages[old[:keep]]
        new_targets[new[:keep]] = targets[old[:keep]]
        new_ages[new[keep:]] = ages[old[0]]
        new_targets[new[keep:]] = 0

    new_targets[new_index == benign_patient] = 0
    candidates = np.flatnonzero(new_index != benign_patient)
    missing = 2 - int(new_targets[candidates].sum())
    if missing > 0:
        benign_candidates = candidates[new_targets[candidates] == 0]
        flip = rng.choice(benign_candidates, size=missing, replace=False)
        new_targets[flip] = 1
    return new_index, new_ages, new_targets


# --------------------------------------------------------------------------- styles


def _draw_style(rng: np.random.Generator) -> _PatientStyle:
    """One patient's skin and nevus appearance; most ISIC skin is light, some darker."""
    tone = rng.beta(2.0, 4.0)
    light = np.array([0.95, 0.80, 0.72])
    dark = np.array([0.55, 0.38, 0.28])
    skin = (1.0 - tone) * light + tone * dark
    skin = np.clip(skin * rng.normal(1.0, 0.025, size=3), 0.0, 1.0)
    return _PatientStyle(
        skin_rgb=skin,
        skin_texture=float(rng.uniform(0.02, 0.05)),
        hair_rate=float(rng.choice([0.0, 0.0, 0.5, 2.0])),
        nevus_darkness=float(rng.uniform(*_DARKNESS)),
        nevus_hue=float(rng.uniform(0.0, 1.0)),
        nevus_radius=float(rng.uniform(*_RADIUS)),
        nevus_aspect=float(rng.uniform(0.75, 1.0)),
    )


def _odd_one_out(rng: np.random.Generator, style: _PatientStyle) -> _PatientStyle:
    """The patient's skin with a nevus look far from the patient's own (darkness, size, colour, shape), each moved
    towards the middle of the population's range so that the look alone is ordinary."""

    def away(value: float, limits: tuple[float, float], shift: float) -> float:
        return value + shift if value < (limits[0] + limits[1]) / 2 else value - shift

    radius_shift = rng.uniform(0.5, 0.6) * style.nevus_radius
    return replace(
        style,
        nevus_darkness=away(style.nevus_darkness, _DARKNESS, rng.uniform(0.3, 0.36)),
        nevus_radius=away(style.nevus_radius, _RADIUS, radius_shift),
        nevus_hue=(style.nevus_hue + rng.uniform(0.35, 0.65)) % 1.0,
        nevus_aspect=float(rng.uniform(0.75, 1.0)),
    )


def _nevus_rgb(skin: np.ndarray, darkness: float, hue: float) -> np.ndarray:
    """Brown relative to the skin: blue is absorbed more than red, hue shifts the balance."""
    absorption = np.array([0.40, 0.55, 0.62]) + hue * np.array([-0.08, 0.06, 0.20])
    return np.clip(skin * (1.0 - darkness * absorption), 0.0, 1.0)


# --------------------------------------------------------------------------- rendering


def _render_image(
    rng: np.random.Generator,
    style: _PatientStyle,
    malignant: bool,
    width: int,
    height: int,
) -> Image.Image:
    """Skin background, one lesion, optional hair and dermoscope vignette, then camera jitter.

    A latent severity drawn from overlapping distributions for the two classes drives
    border irregularity and colour variegation, so some benign nevi look atypical and
    some melanomas look bland: the signal is strong but not perfectly separable.
    Most melanomas are also "ugly ducklings": drawn with another nevus look than the
    patient's own (colour, darkness, size, shape), a look that is ordinary in the
    population. Bland melanomas are always ugly ducklings, so for them only the
    contrast with the patient's other lesions gives them away.
    """
    scale = float(min(width, height))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5

    image = _skin(rng, style, height, width)

    bland = malignant and rng.random() < _BLAND_MELANOMA_RATE
    severity = rng.beta(5.0, 2.5) if malignant and not bland else rng.beta(1.3, 7.0)
    centre_x = width / 2.0 + rng.normal(0.0, 0.06) * scale
    centre_y = height / 2.0 + rng.normal(0.0, 0.06) * scale
    dx, dy = xs - centre_x, ys - centre_y
    radius = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)

    if malignant and (bland or rng.random() < _UGLY_DUCKLING_RATE):
        style = _odd_one_out(rng, style)
    semi_major = np.clip(style.nevus_radius * rng.lognormal(0.0, 0.15), 0.1, 0.36) * scale
    aspect = style.nevus_aspect * rng.uniform(0.92, 1.0)
    boundary = _boundary(rng, theta, semi_major, aspect, severity)

    relative = radius / boundary
    softness = rng.uniform(0.04, 0.10) * (1.0 - 0.5 * severity)
    mask = _sigmoid((1.0 - relative) / softness)

    darkness = style.nevus_darkness + rng.normal(0.0, 0.03)
    base = _nevus_rgb(style.skin_rgb, darkness, style.nevus_hue)
    lesion = _lesion_colour(rng, base, dx, dy, boundary, relative, severity, height, width)

    image = image * (1.0 - mask[..., None]) + lesion * mask[..., None]
    image = _add_hair(rng, image, style.hair_rate)
    image = _vignette(rng, image, xs, ys, width, height)

    image = image * rng.uniform(0.85, 1.1) * rng.normal(1.0, 0.03, size=3)
    image = image + rng.normal(0.0, 0.012, size=image.shape)
    pil = Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8), mode="RGB")
    blur = rng.uniform(0.0, 1.0) * scale / 128.0
    if blur > 0.15:
        pil = pil.filter(ImageFilter.GaussianBlur(radius=blur))
    return pil


def _skin(rng: np.random.Generator, style: _PatientStyle, height: int, width: int) -> np.ndarray:
    """Patient skin colour with blotchy low-frequency shading and a reddish tint field."""
    shading = _smooth_noise(rng, height, width, 4) * style.skin_texture
    blotches = _smooth_noise(rng, height, width, 10) * style.skin_texture * 0.5
    redness = np.clip(_smooth_noise(rng, height, width, 3), 0.0, None) * 0.03
    skin = style.skin_rgb * (1.0 + shading + blotches)[..., None]
    skin = skin + redness[..., None] * np.array([1.0, -0.6, -0.4])
    return skin


def _boundary(
    rng: np.random.Generator,
    theta: np.ndarray,
    semi_major: float,
    aspect: float,
    severity: float,
) -> np.ndarray:
    """Rotated ellipse radius perturbed by Fourier radial noise.

    Low harmonics (1-6) make the shape asymmetric and lobed; many random high
    harmonics (7-28) with decaying amplitude make the border jagged without a regular star
    pattern. Both scale with severity.
    """
    rotation = rng.uniform(0.0, np.pi)
    semi_minor = semi_major * aspect
    angle = theta - rotation
    ellipse = semi_major * semi_minor / np.sqrt((semi_minor * np.cos(angle)) ** 2 + (semi_major * np.sin(angle)) ** 2)
    harmonics = np.arange(1, 29)
    scales = np.select(
        [harmonics <= 3, harmonics <= 6],
        [0.015 + 0.10 * severity, 0.005 + 0.05 * severity],
        (0.002 + 0.025 * severity**1.5) * 7.0 / harmonics,
    )
    amplitudes = scales * np.abs(rng.normal(0.0, 1.0, size=harmonics.size))
    phases = rng.uniform(0.0, 2.0 * np.pi, size=harmonics.size)
    # Evaluate the Fourier series on a fine angular table, then look it up per pixel.
    table_angles = np.linspace(-np.pi, np.pi, 1025)
    table = amplitudes @ np.cos(harmonics[:, None] * table_angles[None] + phases[:, None])
    wobble = np.interp(theta, table_angles, table)
    return ellipse * np.clip(1.0 + wobble, 0.4, None)


def _lesion_colour(
    rng: np.random.Generator,
    base: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    boundary: np.ndarray,
    relative: np.ndarray,
    severity: float,
    height: int,
    width: int,
) -> np.ndarray:
    """Lesion pigment: a darker core plus, with severity, patches of several colours.

    Benign nevi get a centred, fairly uniform brown; severe lesions get an
    off-centre dark blotch and black, blue-grey, red and whitish regions.
    """
    offset = severity * rng.uniform(0.0, 0.5)
    direction = rng.uniform(0.0, 2.0 * np.pi)
    core_dx = dx / boundary - offset * np.cos(direction)
    core_dy = dy / boundary - offset * np.sin(direction)
    core = np.clip(1.0 - np.hypot(core_dx, core_dy), 0.0, 1.0)
    texture = _smooth_noise(rng, height, width, 12) * 0.04
    shade = 1.0 - rng.uniform(0.1, 0.3) * core + texture
    lesion = base * shade[..., None]

    inside = np.clip(1.2 - relative, 0.0, 1.0)[..., None]
    patches = (
        (_BLACK_BROWN, 0.9, 0.0),
        (_BLUE_GREY, 0.8, 0.8),
        (_REDDISH, 0.6, 0.8),
        (_REGRESSION_WHITE, 0.5, 1.2),
    )
    for colour, strength, threshold in patches:
        field = _smooth_noise(rng, height, width, int(rng.integers(4, 8)))
        weight = _sigmoid((field - threshold - 1.5 * (1.0 - severity) + 0.2) / 0.25)
        amount = strength * min(1.0, 1.4 * severity) * rng.uniform(0.7, 1.0)
        alpha = (amount * weight)[..., None] * inside
        lesion = lesion * (1.0 - alpha) + colour * alpha
    return lesion


def _add_hair(rng: np.random.Generator, image: np.ndarray, hair_rate: float) -> np.ndarray:
    """A few thin dark curves, an artefact that real models must learn to ignore."""
    n_hairs = int(rng.poisson(hair_rate))
    if n_hairs == 0:
        return image
    height, width = image.shape[:2]
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    steps = np.linspace(0.0, 1.0, 12)
    for _ in range(n_hairs):
        start = rng.uniform(0.0, 1.0, size=2) * (width, height)
        heading = rng.uniform(0.0, 2.0 * np.pi)
        length = rng.uniform(0.4, 1.0) * max(width, height)
        bend = rng.normal(0.0, 1.0)
        angles = heading + bend * steps
        xs = start[0] + np.cumsum(np.cos(angles)) * length / steps.size
        ys = start[1] + np.cumsum(np.sin(angles)) * length / steps.size
        points = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]
        draw.line(points, fill=int(rng.integers(150, 256)), width=max(1, round(min(width, height) / 96)))
    alpha = np.asarray(canvas, dtype=np.float64)[..., None] / 255.0
    hair_colour = np.array([0.12, 0.08, 0.06]) * rng.uniform(0.6, 1.4)
    return image * (1.0 - alpha) + hair_colour * alpha


def _vignette(
    rng: np.random.Generator,
    image: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    width: int,
    height: int,
) -> np.ndarray:
    """Sometimes darken the corners, like the circular field of a contact dermoscope."""
    if rng.random() >= 0.3:
        return image
    half_diagonal = 0.5 * np.hypot(width, height)
    distance = np.hypot(xs - width / 2.0, ys - height / 2.0) / half_diagonal
    edge = _sigmoid((distance - rng.uniform(0.7, 0.9)) / 0.03)
    return image * (1.0 - 0.9 * edge)[..., None]


# --------------------------------------------------------------------------- helpers


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    """Logistic function, clipped so soft masks never overflow."""
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


_NOISE_MARGIN = 2  # lattice points beyond each image edge, so the borders vary as much as the middle


@lru_cache(maxsize=64)
def _interpolation_matrix(n_out: int, n_cells: int) -> np.ndarray:
    """Gaussian weights from lattice points to n_out pixels.

    A Gaussian is the one separable kernel that is also isotropic, so the
    upsampled noise has no axis-aligned streaks that bilinear value noise shows.
    """
    position = (np.arange(n_out) + 0.5) / n_out * n_cells
    lattice = np.arange(-_NOISE_MARGIN, n_cells + _NOISE_MARGIN + 1)
    matrix = np.exp(-0.5 * ((position[:, None] - lattice[None, :]) / 0.7) ** 2)
    matrix.setflags(write=False)
    return matrix


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field with about `cells` blobs across the shorter side.

    Cells are square in pixels, so blobs stay round in non-square images.
    """
    shorter = min(height, width)
    cells_y = max(1, round(cells * height / shorter))
    cells_x = max(1, round(cells * width / shorter))
    lattice = rng.standard_normal((cells_y + 2 * _NOISE_MARGIN + 1, cells_x + 2 * _NOISE_MARGIN + 1))
    field = _interpolation_matrix(height, cells_y) @ lattice @ _interpolation_matrix(width, cells_x).T
    return (field - field.mean()) / (field.std() + 1e-8)
