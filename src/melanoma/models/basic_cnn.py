"""The founding document's basic image network: 6 conv layers (kernels 7 and 5), batch-norm, ReLU, max-pool,
then 3 linear layers. Global average pooling before the linear layers makes it work at any image size."""

from __future__ import annotations

import torch
from torch import nn


def _conv_block(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, ceil_mode=True),  # ceil: small images still reach the last layer
    )


class BasicCNN(nn.Module):
    """Image -> `num_features` vector, the same contract as a timm backbone with `num_classes=0`."""

    def __init__(
        self,
        channels: tuple[int, ...] = (16, 32, 64, 128, 128, 256),
        kernel_sizes: tuple[int, ...] = (7, 7, 5, 5, 5, 5),
        hidden: tuple[int, int] = (256, 128),
        num_features: int = 64,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        blocks, in_channels = [], 3
        for out_channels, kernel_size in zip(channels, kernel_sizes, strict=True):
            blocks.append(_conv_block(in_channels, out_channels, kernel_size))
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pooled_width = in_channels
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels, hidden[0]),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(inplace=True),
            nn.Linear(hidden[1], num_features),
            nn.ReLU(inplace=True),
        )
        self.num_features = num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(images)))
