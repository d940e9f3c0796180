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


def embedding_layer(image_net: nn.Module) -> tuple[nn.Module, int]:
    """The module whose output (flattened) is the pooled image embedding, and its width: a timm backbone's own
    output; for the basic CNN its global pool over the last conv layer, since the linear layers after it are trained
    for the one logit and keep little of what a lesion looks like (which the context stage compares)."""
    if isinstance(image_net, BasicCNN):
        return image_net.pool, image_net.pooled_width
    return image_net, image_net.num_features


def default_data_settings(name: str) -> DataSettings:
    """Input size and normalisation a model expects: the founding 512 px for basic-cnn, else the backbone's."""
    if name == BASIC_CNN:
        return DataSettings(
            image_size=512, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear", crop_pct=1.0
        )
    return pretrained_data_settings(name)


__all__ = ["BASIC_CNN", "BasicCNN", "DataSettings", "FusionClassifier", "create_model", "default_data_settings"]
