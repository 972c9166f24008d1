"""VGG (Simonyan & Zisserman, ICLR 2015, arXiv 1409.1556) for CIFAR, as kuangliu/pytorch-cifar builds it.

The paper's configurations A, B, D and E (VGG-11/13/16/19): five stages of 3x3 convolutions, each stage ending in
2x2 max pooling. pytorch-cifar adds BatchNorm after every convolution and replaces the three fully connected layers
with one linear classifier on the 512 channels left after the last pool. Parameter names, order and shapes are its
(commit 49b7aa9), so its checkpoints load with ``strict=True``. After five pools a 32x32 input is 1x1, where
pytorch-cifar's final 1x1 average pool changes nothing; here that pool is adaptive, the same at 32x32, so larger
inputs (64x64 Tiny ImageNet) reach the same classifier and the builders ignore ``img``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._registry import register_model

__all__ = ["VGG", "vgg11", "vgg13", "vgg16", "vgg19"]

# Output channels of the five stages, and how many convolutions each stage has for each depth (the paper's Table 1).
_WIDTHS = (64, 128, 256, 512, 512)
_CONVS_PER_STAGE = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}


class VGG(nn.Module):
    """VGG-``depth`` (11, 13, 16 or 19) with BatchNorm: ``features`` (conv-BN-ReLU layers and max pools, then a
    global average pool), ``classifier`` (one linear layer)."""

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if depth not in _CONVS_PER_STAGE:
            raise ValueError(f"VGG depth must be one of {', '.join(map(str, _CONVS_PER_STAGE))}, got {depth}")
        layers: list[nn.Module] = []
        in_channels = 3
        for width, convs in zip(_WIDTHS, _CONVS_PER_STAGE[depth]):
            for _ in range(convs):
                layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
                           nn.BatchNorm2d(width),
                           nn.ReLU(inplace=True)]
                in_channels = width
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        # Holds pytorch-cifar's place for its (parameter-free) final pool, so the layer indices stay its.
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.num_features = in_channels
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


@register_model
def vgg11(num_classes: int = 10, img: int = 32) -> nn.Module:
    """VGG-11 (Simonyan & Zisserman 2015, configuration A) with BatchNorm, for 32x32 inputs, as pytorch-cifar has it."""
    return VGG(11, num_classes)


@register_model
def vgg13(num_classes: int = 10, img: int = 32) -> nn.Module:
    """VGG-13 (Simonyan & Zisserman 2015, configuration B) with BatchNorm, for 32x32 inputs, as pytorch-cifar has it."""
    return VGG(13, num_classes)


@register_model
def vgg16(num_classes: int = 10, img: int = 32) -> nn.Module:
    """VGG-16 (Simonyan & Zisserman 2015, configuration D) with BatchNorm, for 32x32 inputs, as pytorch-cifar has it."""
    return VGG(16, num_classes)


@register_model
def vgg19(num_classes: int = 10, img: int = 32) -> nn.Module:
    """VGG-19 (Simonyan & Zisserman 2015, configuration E) with BatchNorm, for 32x32 inputs, as pytorch-cifar has it."""
    return VGG(19, num_classes)
