"""The synthetic data has the patient-level effect that context needs: each patient has a typical nevus look, and
a melanoma stands out against the patient's own lesions more than against everyone's."""

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import roc_auc_score

from melanoma.context.features import patient_codes, within_group_distances
from melanoma.data.synthetic import generate_synthetic


def lesion_colour(path: Path) -> np.ndarray:
    """Log ratio of the lesion's median colour to the surrounding skin's: the nevus look, free of the camera's
    exposure and of the patient's skin tone."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64) / 255 + 1e-3
    h, w, _ = pixels.shape
    edges = [pixels[1:4, w // 4 : 3 * w // 4], pixels[-4:-1, w // 4 : 3 * w // 4]]
    edges += [pixels[h // 4 : 3 * h // 4, 1:4], pixels[h // 4 : 3 * h // 4, -4:-1]]
    skin = np.median(np.concatenate([edge.reshape(-1, 3) for edge in edges]), axis=0)
    lesion = pixels[pixels.mean(axis=2) < 0.85 * skin.mean()]
    return np.log(np.median(lesion, axis=0) / skin)


def test_a_melanoma_stands_out_against_the_patients_own_lesions(tmp_path: Path) -> None:
    images, metadata = generate_synthetic(tmp_path, n_patients=40, image_size=32, seed=0)
    frame = pd.read_csv(metadata)
    colours = np.stack([lesion_colour(images / f"{name}.jpg") for name in frame["image_name"]])
    colours = (colours - colours.mean(axis=0)) / colours.std(axis=0)
    targets = frame["target"].to_numpy()
    to_own, _ = within_group_distances(patient_codes(frame["patient_id"]), colours)
    to_everyone = np.linalg.norm(colours - colours.mean(axis=0), axis=1)
    own_auc, everyone_auc = roc_auc_score(targets, to_own), roc_auc_score(targets, to_everyone)
    assert own_auc > 0.65 and own_auc > everyone_auc + 0.08, (own_auc, everyone_auc)
