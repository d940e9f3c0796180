"""Per-image features that judge a lesion against the same patient's other lesions (the "ugly duckling").

Everything is computed within the images scored together (a dataset split, or a folder given to `predict`):
a patient's context is their other images in that set. Images without a patient id count as patients of their
own. A patient with a single image has no context: its within-patient features take neutral values
(rank 0.5, z-score 0, gap 0, distances NaN) with `single_image` = 1, and the context score falls back to the
image score (see stage.py).

Embeddings are L2-normalised first, so distances measure direction (what a lesion looks like), not the
activation scale, which differs between backbones; they lie in [0, 2].
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from melanoma.data.metadata import SEXES, SITES

EPSILON = 1e-6  # image scores are clipped to [EPSILON, 1 - EPSILON] before the logit

# Metadata and patient features that need no image: also what bench/context_metadata.py uses on ISIC 2020.
METADATA_FEATURES = [
    "age",
    "age_missing",
    *(f"sex_{sex}" for sex in SEXES),
    *(f"site_{site}" for site in SITES),
    "site_missing",
]
PATIENT_FEATURES = ["n_images", "single_image", "age_minus_patient_min", "n_same_site"]
SCORE_FEATURES = ["image_logit", "score_rank", "score_z", "score_gap"]
EMBEDDING_FEATURES = ["dist_mean", "dist_nn", "dist_mean_ratio", "site_dist_mean", "site_dist_nn"]
FEATURES = [*SCORE_FEATURES, *EMBEDDING_FEATURES, *PATIENT_FEATURES, *METADATA_FEATURES]


def logit(scores: np.ndarray) -> np.ndarray:
    """Probabilities -> log-odds, clipped so that 0 and 1 stay finite."""
    p = np.clip(np.asarray(scores, dtype=np.float64), EPSILON, 1 - EPSILON)
    return np.log(p / (1 - p))


def patient_codes(patient_ids: pd.Series) -> np.ndarray:
    """Integer patient codes; an empty or missing patient id makes the image a patient of its own."""
    ids = pd.Series(patient_ids).reset_index(drop=True)
    missing = ids.isna() | (ids.astype(str).str.strip() == "")
    keys = ids.astype(str).where(~missing, "\x00image " + pd.Series(np.arange(len(ids)).astype(str)))
    return pd.factorize(keys)[0]


def _site_codes(codes: np.ndarray, sites: pd.Series) -> np.ndarray:
    """Codes of (patient, site); an image without a site has no same-site group (a group of its own)."""
    sites = pd.Series(sites).reset_index(drop=True)
    known = sites.map(lambda s: isinstance(s, str) and s != "").to_numpy(dtype=bool)
    own = "\x00image " + pd.Series(np.arange(len(codes)).astype(str))
    keys = (pd.Series(codes).astype(str) + "\x00" + sites.astype(str)).where(known, own)
    return pd.factorize(keys)[0]


def metadata_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Age (years, NaN when missing) with a missing flag, sex and anatomic site one-hot (all 0 = missing)."""
    ages = pd.to_numeric(frame["age_approx"], errors="coerce").to_numpy(dtype=np.float64)
    out = {"age": ages, "age_missing": np.isnan(ages).astype(np.float64)}
    sex, site = frame["sex"].to_numpy(dtype=object), frame["site"].to_numpy(dtype=object)
    out |= {f"sex_{value}": (sex == value).astype(np.float64) for value in SEXES}
    out |= {f"site_{value}": (site == value).astype(np.float64) for value in SITES}
    out["site_missing"] = (~np.isin(site, SITES)).astype(np.float64)
    return pd.DataFrame(out)[METADATA_FEATURES]


def patient_features(frame: pd.DataFrame) -> pd.DataFrame:
    """What the patient's other images tell without pixels: their count, the image's age relative to the
    patient's youngest record (later visits), and how many of the patient's other images share its site."""
    codes = patient_codes(frame["patient_id"])
    n_images = np.bincount(codes)[codes].astype(np.float64)
    ages = pd.Series(pd.to_numeric(frame["age_approx"], errors="coerce").to_numpy(dtype=np.float64))
    youngest = ages.groupby(codes).transform("min").to_numpy()
    site_codes = _site_codes(codes, frame["site"])
    same_site = np.bincount(site_codes)[site_codes] - 1
    known_site = frame["site"].map(lambda s: isinstance(s, str) and s != "").to_numpy(dtype=bool)
    return pd.DataFrame(
        {
            "n_images": n_images,
            "single_image": (n_images == 1).astype(np.float64),
            "age_minus_patient_min": ages.to_numpy() - youngest,
            "n_same_site": np.where(known_site, same_site, 0).astype(np.float64),
        }
    )


def score_features(codes: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """The image's log-odds, and where it stands among the patient's scores: normalised rank (0 lowest, 1 highest,
    ties averaged), z-score of the log-odds, and the gap to the highest of the patient's other images."""
    logits = pd.Series(logit(scores))
    grouped = logits.groupby(codes)
    n = grouped.transform("size").to_numpy(dtype=np.float64)
    single = n == 1
    rank = (grouped.rank(method="average").to_numpy() - 1) / np.where(single, 1, n - 1)
    mean, std = grouped.transform("mean").to_numpy(), grouped.transform("std", ddof=0).to_numpy()
    z = np.divide(logits.to_numpy() - mean, std, out=np.zeros(len(logits)), where=std > 1e-12)
    return pd.DataFrame(
        {
            "image_logit": logits.to_numpy(),
            "score_rank": np.where(single, 0.5, rank),
            "score_z": np.where(single, 0.0, z),
            "score_gap": np.where(single, 0.0, logits.to_numpy() - _max_of_others(codes, logits.to_numpy())),
        }
    )


def _max_of_others(codes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per element, the maximum of the other elements of its group (-inf for a group of one)."""
    frame = pd.DataFrame({"code": codes, "value": values})
    grouped = frame.groupby("code")["value"]
    first = grouped.transform("max").to_numpy()
    is_max = values == first
    second = frame.assign(value=np.where(is_max, -np.inf, values)).groupby("code")["value"].transform("max")
    ties = frame.assign(top=is_max).groupby("code")["top"].transform("sum").to_numpy() > 1
    return np.where(is_max & ~ties, second.to_numpy(), first)


def within_group_distances(codes: np.ndarray, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: distance to the mean of its group's OTHER images (leave-one-out) and to the nearest other image;
    NaN for a group of one. `embeddings` should already be normalised."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    n = np.bincount(codes)[codes]
    sums = np.zeros((codes.max() + 1 if len(codes) else 0, embeddings.shape[1]))
    np.add.at(sums, codes, embeddings)
    with np.errstate(invalid="ignore", divide="ignore"):
        others_mean = (sums[codes] - embeddings) / (n - 1)[:, None]
    to_mean = np.where(n > 1, np.linalg.norm(embeddings - others_mean, axis=1), np.nan)
    nearest = np.full(len(codes), np.nan)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    for members in np.split(order, bounds):
        if len(members) < 2:
            continue
        block = embeddings[members]
        squared = (block**2).sum(axis=1)
        distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * block @ block.T, 0))
        np.fill_diagonal(distances, np.inf)
        nearest[members] = distances.min(axis=1)
    return to_mean, nearest


def normalise(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (an all-zero row stays zero)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return np.divide(embeddings, norms, out=np.zeros_like(embeddings), where=norms > 0)


def embedding_features(codes: np.ndarray, site_codes: np.ndarray, embeddings: np.ndarray) -> pd.DataFrame:
    """Distances to the patient's other images (leave-one-out mean, nearest), the distance to the mean relative to
    the patient's typical one (1 = as unusual as the patient's average lesion), and the same two distances among
    the patient's images of the same anatomic site."""
    unit = normalise(embeddings)
    to_mean, nearest = within_group_distances(codes, unit)
    typical = pd.Series(to_mean).groupby(codes).transform("mean").to_numpy()
    spread = typical > 1e-12  # False for identical images, whose distances are all 0: ratio 1
    ratio = np.where(spread, to_mean / np.where(spread, typical, 1.0), 1.0)
    ratio = np.where(np.isnan(to_mean), np.nan, ratio)
    site_to_mean, site_nearest = within_group_distances(site_codes, unit)
    return pd.DataFrame(
        {
            "dist_mean": to_mean,
            "dist_nn": nearest,
            "dist_mean_ratio": ratio,
            "site_dist_mean": site_to_mean,
            "site_dist_nn": site_nearest,
        }
    )


def context_features(frame: pd.DataFrame, scores: np.ndarray, embeddings: np.ndarray) -> pd.DataFrame:
    """The stage's input, one row per row of `frame` in order, columns FEATURES.

    `frame` needs patient_id, sex, age_approx and site; `scores` are the image model's probabilities and
    `embeddings` its pooled image features (images, width), both finite.
    """
    scores = np.asarray(scores, dtype=np.float64)
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if not len(frame) == len(scores) == len(embeddings):
        raise ValueError("frame, scores and embeddings must have the same length")
    frame = frame.reset_index(drop=True)
    codes = patient_codes(frame["patient_id"])
    parts = [
        score_features(codes, scores),
        embedding_features(codes, _site_codes(codes, frame["site"]), embeddings),
        patient_features(frame),
        metadata_features(frame),
    ]
    return pd.concat(parts, axis=1)[FEATURES]
