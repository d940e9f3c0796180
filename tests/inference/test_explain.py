"""Grad-CAM: the heatmap points at the evidence, the target layer is found for CNNs and ViTs, and `explain` writes
one overlay per image with the same probability `predict` gives."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from melanoma.cli import main
from melanoma.config import EnsembleConfig, PredictConfig
from melanoma.errors import MelanomaError
from melanoma.inference.ensemble import create_ensemble
from melanoma.inference.explain import Explainer, ImageOnly, find_target_layer
from melanoma.inference.predictor import Predictor, predict
from melanoma.models import FusionClassifier, create_model
from melanoma.rundir import RunConfig
from tests.inference.fake_runs import make_run


class RedDetector(nn.Module):
    """An image network that only sees red: its feature map is the red channel, so the evidence is where red is."""

    num_features = 2

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, 0] = 1.0
            self.conv.bias.zero_()
        self.pool = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(images))


def _red_predictor(trained_run: Path) -> Predictor:
    config = RunConfig.load(trained_run)
    model = FusionClassifier(RedDetector(), config.metadata.dim, [4], 4, 0.0)
    with torch.no_grad():
        for layer in (model.fused[0], model.classifier):
            layer.weight.fill_(0.5)
            layer.bias.zero_()
    return Predictor(config, model, torch.device("cpu"))


def test_the_heatmap_points_at_the_evidence_with_the_metadata_held_fixed(trained_run: Path) -> None:
    explainer = Explainer(_red_predictor(trained_run))
    assert explainer.layer_name == "conv"
    image = Image.new("RGB", (48, 48), (0, 0, 0))
    image.paste((255, 0, 0), (30, 6, 44, 20))  # a red patch in the top-right corner
    features = np.zeros(explainer.predictor.config.metadata.dim, dtype=np.float32)
    result = explainer.explain(image, features)
    assert result.heatmap.shape == (32, 32) and result.overlay.size == (32, 32)
    row, column = np.unravel_index(result.heatmap.argmax(), result.heatmap.shape)
    assert row < 16 <= column  # top right
    assert result.heatmap[20:, :12].max() < 0.1  # nothing where there is no red
    assert 0 < result.probability < 1
    assert result.probability == pytest.approx(explainer.score(image, features), abs=1e-6)

    model = explainer.predictor.model
    images, metadata = torch.randn(3, 3, 32, 32), torch.randn(1, len(features))
    with torch.inference_mode():
        assert torch.allclose(ImageOnly(model, metadata)(images)[:, 0], model(images, metadata.expand(3, -1)))


@pytest.mark.parametrize(
    ("name", "expected"),
    [("basic-cnn", "features.5.0"), ("test_efficientnet", "conv_head"), ("test_resnet", "layer4.0.conv2")],
)
def test_the_last_convolution_is_the_target_layer_of_a_cnn(name: str, expected: str) -> None:
    layer, reshape, layer_name = find_target_layer(create_model(name, 0, [4], 4, 0.0).image_net)
    assert layer_name == expected and isinstance(layer, nn.Conv2d) and reshape is None


def test_a_convolution_whose_map_shrank_to_one_pixel_is_passed_over() -> None:
    image_net = create_model("basic-cnn", 0, [4], 4, 0.0).image_net
    assert find_target_layer(image_net, image_size=32)[2] == "features.4.0"  # 5 poolings: the last conv sees 1 x 1
    assert find_target_layer(image_net, image_size=64)[2] == "features.5.0"
    assert find_target_layer(image_net, "features.2", image_size=32)[2] == "features.2"


def test_a_vit_is_explained_on_its_patch_grid(trained_run: Path, tmp_path: Path) -> None:
    run = make_run(tmp_path / "vit", trained_run, model="test_vit", image_size=160)
    explainer = Explainer.from_run(run, device="cpu")
    assert explainer.layer_name.startswith("blocks.") and explainer.layer_name.endswith(".norm1")
    tokens = torch.arange(2 * 101 * 3, dtype=torch.float32).reshape(2, 101, 3)  # 1 class token + 10 x 10 patches
    grid = explainer.reshape(tokens)
    assert grid.shape == (2, 3, 10, 10) and torch.equal(grid[:, :, 0, 1], tokens[:, 2])
    result = explainer.explain(
        Image.new("RGB", (160, 160), (120, 60, 40)), np.zeros(explainer.predictor.config.metadata.dim)
    )
    assert result.heatmap.shape == (160, 160) and np.isfinite(result.heatmap).all()


def test_explain_writes_overlays_and_the_scores_predict_gives(
    trained_run: Path, raw_data, tmp_path: Path, capsys
) -> None:
    images, metadata = raw_data
    folder = tmp_path / "images"
    folder.mkdir()
    chosen = sorted(images.iterdir())[:3]
    for path in chosen[:2]:
        shutil.copy(path, folder / path.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    out = tmp_path / "heatmaps"
    code = main(["explain", str(trained_run), "--images", str(folder), str(chosen[2]), "--metadata", str(metadata),
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "broken: not a JPEG or PNG image; no heatmap" in printed and "Wrote 3 heatmap overlays" in printed
    scores = pd.read_csv(out / "scores.csv", keep_default_na=False).set_index("image_name")
    assert sorted(scores.index) == sorted(["broken", *(p.stem for p in chosen)])
    assert scores.loc["broken", "probability"] == "" and scores.loc["broken", "heatmap"] == ""
    assert set(scores["heatmap_empty"]) <= {"", "True", "False"}
    scores = scores.drop(index="broken")
    for name in scores["heatmap"]:
        with Image.open(out / name) as overlay:
            assert overlay.format == "PNG" and overlay.mode == "RGB" and overlay.size == (32, 32)
    every = tmp_path / "every"
    every.mkdir()
    for path in chosen:
        shutil.copy(path, every / path.name)
    expected = predict(PredictConfig(run=trained_run, images=every, metadata=metadata, out=tmp_path / "p.csv",
                                     num_workers=0))  # fmt: skip
    merged = expected.merge(scores.astype({"probability": float}).reset_index(), on="image_name")
    assert len(merged) == 3 and np.abs(merged["target"] - merged["probability"]).max() < 1e-5


def test_explain_errors_are_one_line(trained_run: Path, raw_data, tmp_path: Path, capsys) -> None:
    image = str(sorted(raw_data[0].iterdir())[0])
    ensemble = create_ensemble(EnsembleConfig(members=[trained_run], out=tmp_path / "ens"))
    assert main(["explain", str(ensemble), "--images", image, "--out", str(tmp_path / "o")]) == 2
    assert "explain one member run at a time" in capsys.readouterr().err
    assert main(["explain", str(trained_run), "--images", image, "--out", str(tmp_path / "o"),
                 "--target-layer", "nope"]) == 2  # fmt: skip
    assert "--target-layer nope: no such module" in capsys.readouterr().err
    assert main(["explain", str(trained_run), "--images", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(MelanomaError, match="needs the PyTorch model"):
        Explainer(Predictor(RunConfig.load(trained_run), nn.Identity(), torch.device("cpu")))
