"""Models are plain `nn.Module`s: an image network fused with a metadata MLP. Lightning only wraps them."""

from __future__ import annotations

from torch import nn

from melanoma.errors import MelanomaError
from melanoma.models.basic_cnn import BasicCNN
from melanoma.models.fusion import FusionClassifier

MODELS = {"basic-cnn": BasicCNN}


def create_model(
    name: str, metadata_features: int, metadata_hidden: list[int], fused_width: int, dropout: float
) -> FusionClassifier:
    """The fused classifier for a model name; `metadata_features=0` builds the image-only variant."""
    if name not in MODELS:
        raise MelanomaError(f"--model {name}: unknown model; available: {', '.join(sorted(MODELS))}")
    image_net: nn.Module = MODELS[name](dropout=dropout)
    return FusionClassifier(image_net, metadata_features, metadata_hidden, fused_width, dropout)


__all__ = ["MODELS", "BasicCNN", "FusionClassifier", "create_model"]
