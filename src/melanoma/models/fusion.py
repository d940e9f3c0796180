"""Image network + metadata MLP, concatenated into one last fused layer that gives a single logit."""

from __future__ import annotations

import torch
from torch import nn


class MetadataMLP(nn.Module):
    def __init__(self, in_features: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for out in hidden:
            layers += [nn.Linear(width, out), nn.BatchNorm1d(out), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = out
        self.layers = nn.Sequential(*layers)
        self.num_features = width

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class FusionClassifier(nn.Module):
    """logit = classifier(fused(concat(image_net(image), metadata_net(metadata)))).

    With `metadata_features=0` the metadata input is ignored and the model is the image network alone.
    The output is one logit per image (apply a sigmoid for the melanoma probability).
    """

    def __init__(
        self,
        image_net: nn.Module,
        metadata_features: int,
        metadata_hidden: list[int],
        fused_width: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.image_net = image_net
        self.metadata_net = MetadataMLP(metadata_features, metadata_hidden, dropout) if metadata_features else None
        width = image_net.num_features + (self.metadata_net.num_features if self.metadata_net else 0)
        self.fused = nn.Sequential(nn.Linear(width, fused_width), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.classifier = nn.Linear(fused_width, 1)

    def forward(self, images: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
        parts = [self.image_net(images)]
        if self.metadata_net is not None:
            parts.append(self.metadata_net(metadata))
        return self.classifier(self.fused(torch.cat(parts, dim=1))).squeeze(1)
