"""ShuffleNetV2 (Ma et al., ECCV 2018, arXiv 1807.11164) as kuangliu/pytorch-cifar builds it for CIFAR.

Two units (the paper's Fig. 3c and 3d): the basic unit splits the channels in half, passes one half through
unchanged and the other through 1x1, depthwise 3x3 and 1x1 convolutions; the downsampling unit feeds the whole input
to two stride-2 branches, which doubles the channels. Both concatenate the halves and shuffle the channels so that
the next unit mixes them. pytorch-cifar (commit 49b7aa9) differs from the paper's ImageNet network in ways kept
here so that its checkpoints load with ``strict=True`` and give the same logits: the stem runs at stride 1 with no
max pooling (32x32 inputs end at 4x4), and the 2x network's first stage has 224 channels where the paper has 244.
Its final 4x4 average pooling is global average pooling here, the same at 32x32, so other input sizes (64x64 Tiny
ImageNet) work too; its classifier, fixed at 10 classes there, takes ``num_classes`` here.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import register_model

__all__ = [
    "ShuffleNetV2",
    "ShuffleUnit",
    "ShuffleDownUnit",
    "shufflenetv2",
    "shufflenetv2_x0_5",
    "shufflenetv2_x1_5",
    "shufflenetv2_x2",
]

# Output channels of the three stages and of the last 1x1 convolution, by width multiplier (the paper's Table 5).
_WIDTHS = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (224, 488, 976, 2048),
}
# Basic units per stage, after the stage's downsampling unit.
_STAGE_UNITS = (3, 7, 3)
_STEM_CHANNELS = 24


def _shuffle(x: torch.Tensor) -> torch.Tensor:
    """Channel shuffle with two groups: view (N, 2C, H, W) as (N, 2, C, H, W), swap the group and channel axes,
    flatten back, so the channels alternate between the two halves."""
    return x.unflatten(1, (2, -1)).transpose(1, 2).flatten(1, 2)


class ShuffleUnit(nn.Module):
    """Basic unit at stride 1: keep the first half of the channels, transform the second, concatenate, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, x = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))  # no ReLU after a depthwise convolution, as in the paper
        out = F.relu(self.bn3(self.conv3(out)))
        return _shuffle(torch.cat([kept, out], dim=1))


class ShuffleDownUnit(nn.Module):
    """Downsampling unit: two stride-2 branches of ``out_channels // 2`` channels each, concatenated and shuffled.

    conv1-2 are the left branch (depthwise 3x3, then 1x1); conv3-5 the right one (1x1, depthwise 3x3, 1x1).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1, groups=in_channels,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, half, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(in_channels, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.conv4 = nn.Conv2d(half, half, kernel_size=3, stride=2, padding=1, groups=half, bias=False)
        self.bn4 = nn.BatchNorm2d(half)
        self.conv5 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return _shuffle(torch.cat([left, right], dim=1))


def _stage(in_channels: int, out_channels: int, units: int) -> nn.Sequential:
    """One stage: a downsampling unit to ``out_channels``, then ``units`` basic units."""
    return nn.Sequential(ShuffleDownUnit(in_channels, out_channels), *(ShuffleUnit(out_channels) for _ in range(units)))


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 with width multiplier ``net_size`` (0.5, 1, 1.5 or 2) for CIFAR-sized RGB inputs: stem, three
    stages of one downsampling and 3/7/3 basic units, 1x1 convolution, global average pooling, linear."""

    def __init__(self, net_size: float = 1.0, num_classes: int = 10) -> None:
        super().__init__()
        if net_size not in _WIDTHS:
            raise ValueError(f"ShuffleNetV2 net_size must be one of {', '.join(map(str, _WIDTHS))}, got {net_size}")
        channels1, channels2, channels3, features = _WIDTHS[net_size]
        units1, units2, units3 = _STAGE_UNITS
        # Stride 1 and no max pooling, not the paper's stride 2 twice: a 32x32 image has little resolution to spare.
        self.conv1 = nn.Conv2d(3, _STEM_CHANNELS, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_CHANNELS)
        self.layer1 = _stage(_STEM_CHANNELS, channels1, units1)
        self.layer2 = _stage(channels1, channels2, units2)
        self.layer3 = _stage(channels2, channels3, units3)
        self.conv2 = nn.Conv2d(channels3, features, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(features)
        self.linear = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model
def shufflenetv2(num_classes: int = 10, img: int = 32) -> nn.Module:
    """ShuffleNetV2 1x (Ma et al. 2018) for 32x32 inputs, as pytorch-cifar builds it (``ShuffleNetV2(1)``).

    ``img`` is not needed: global average pooling makes the model work at any input size.
    """
    return ShuffleNetV2(1.0, num_classes)


@register_model
def shufflenetv2_x0_5(num_classes: int = 10, img: int = 32) -> nn.Module:
    """ShuffleNetV2 0.5x (Ma et al. 2018) for 32x32 inputs, as pytorch-cifar builds it (``ShuffleNetV2(0.5)``)."""
    return ShuffleNetV2(0.5, num_classes)


@register_model
def shufflenetv2_x1_5(num_classes: int = 10, img: int = 32) -> nn.Module:
    """ShuffleNetV2 1.5x (Ma et al. 2018) for 32x32 inputs, as pytorch-cifar builds it (``ShuffleNetV2(1.5)``)."""
    return ShuffleNetV2(1.5, num_classes)


@register_model
def shufflenetv2_x2(num_classes: int = 10, img: int = 32) -> nn.Module:
    """ShuffleNetV2 2x (Ma et al. 2018) for 32x32 inputs, as pytorch-cifar builds it (``ShuffleNetV2(2)``).

    Its first stage has pytorch-cifar's 224 channels, not the paper's 244, so pytorch-cifar's checkpoints load.
    """
    return ShuffleNetV2(2.0, num_classes)
