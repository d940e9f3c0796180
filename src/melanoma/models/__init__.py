"""Models are plain `nn.Module`s: an image network fused with a metadata MLP. Lightning only wraps them."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from melanoma.models.backbones import DataSettings, create_backbone, pretrained_data_settings
from melanoma.models.basic_cnn import BasicCNN
from melanoma.models.fusion import FusionClassifier

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
BASIC_CNN = "basic-cnn"


def create_model(
    name: str,
    metadata_features: int,
    metadata_hidden: list[int],
    fused_width: int,
    dropout: float,
    pretrained: bool = False,
    weights: Path | None = None,
) -> FusionClassifier:
    """The fused classifier: `basic-cnn` or any timm backbone; `metadata_features=0` builds the image-only variant."""
    if name == BASIC_CNN:
        image_net: nn.Module = BasicCNN(dropout=dropout)
    else:
        image_net = create_backbone(name, pretrained=pretrained, weights=weights)
    return FusionClassifier(image_net, metadata_features, metadata_hidden, fused_width, dropout)


def default_data_settings(name: str) -> DataSettings:
    """Input size and normalisation a model expects: the founding 512 px for basic-cnn, else the backbone's."""
    if name == BASIC_CNN:
        return DataSettings(
            image_size=512, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear", crop_pct=1.0
        )
    return pretrained_data_settings(name)


__all__ = ["BASIC_CNN", "BasicCNN", "DataSettings", "FusionClassifier", "create_model", "default_data_settings"]
