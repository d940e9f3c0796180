import numpy as np
import pandas as pd
import torch
from PIL import Image

from melanoma.data.dataset import LesionDataset, MetadataEncoder, build_transforms


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": ["p1", "p1", "p1", "p2"],
            "sex": ["male", "female", None, "robot"],
            "age_approx": [40.0, 60.0, np.nan, 50.0],
            "site": ["torso", "oral/genital", None, "torso"],
        }
    )


def test_encoding_has_explicit_missing_levels_and_patient_counts() -> None:
    encoder = MetadataEncoder(age_mean=50.0, age_std=10.0)
    features = encoder.encode(frame())
    assert features.shape == (4, encoder.dim) == (4, 13)
    np.testing.assert_array_equal(features[:, :3], [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]])
    np.testing.assert_allclose(features[:, 3], [-1.0, 1.0, 0.0, 0.0])  # standardised age, 0 when missing
    np.testing.assert_array_equal(features[:, 4], [0, 0, 1, 0])  # age-missing flag
    np.testing.assert_array_equal(features[:, 5:12].argmax(1), [3, 5, 6, 3])  # torso, oral/genital, missing
    np.testing.assert_allclose(features[:, 12], np.log([3, 3, 3, 1]))


def test_fit_standardises_on_the_training_ages() -> None:
    encoder = MetadataEncoder.fit(frame())
    assert encoder.age_mean == 50.0 and encoder.age_std > 0


def test_transforms_give_normalised_tensors_of_the_image_size() -> None:
    image = Image.new("RGB", (48, 48), (128, 64, 32))
    for train in (True, False):
        tensor = build_transforms(32, (0.5,) * 3, (0.25,) * 3, train=train, color_jitter=0.2)(image)
        assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    evaluated = build_transforms(32, (0.5,) * 3, (0.25,) * 3, train=False)(image)
    torch.testing.assert_close(evaluated[0], torch.full((32, 32), (128 / 255 - 0.5) / 0.25), atol=0.02, rtol=0)


def test_unreadable_images_become_nan_only_when_asked() -> None:
    def load(name: str) -> Image.Image:
        if name == "bad":
            raise ValueError("cannot decode")
        return Image.new("RGB", (16, 16))

    transform = build_transforms(16, (0.5,) * 3, (0.5,) * 3, train=False)
    dataset = LesionDataset(
        ["good", "bad"], np.zeros((2, 0)), np.array([0, 1]), transform, load, unreadable_as_nan=True
    )
    assert torch.isfinite(dataset[0][0]).all() and torch.isnan(dataset[1][0]).all()
    assert dataset[1][2] == 1.0
