"""MobileNetV2 (Sandler et al., CVPR 2018, arXiv 1801.04381) as kuangliu/pytorch-cifar builds it for CIFAR.

Inverted residual blocks: a 1x1 convolution expands the channels, a 3x3 depthwise convolution filters them, and a
1x1 convolution without activation (the paper's linear bottleneck) projects them back. pytorch-cifar (commit 49b7aa9)
differs from the paper's ImageNet network in ways kept here so that its checkpoints load with ``strict=True`` and
give the same logits: the stem and the second stage run at stride 1 (32x32 inputs end at 4x4 rather than 1x1),
activations are ReLU rather than ReLU6, and a stride-1 block whose channel count changes still has a residual,
through a 1x1 convolution + BatchNorm. Its final 4x4 average pooling is global average pooling here, the same at
32x32, so other input sizes (64x64 Tiny ImageNet) work too.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2"]

# One row per stage: (expansion t, output channels c, blocks n, stride s of the stage's first block), the paper's
# Table 2 with the second stage's stride 2 -> 1, as pytorch-cifar has it for 32x32 inputs.
_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STEM_CHANNELS = 32
_FEATURES = 1280


class InvertedResidual(nn.Module):
    """Expand (1x1, BN, ReLU), depthwise 3x3 (BN, ReLU), project (1x1, BN), plus a residual at stride 1.

    The expansion convolution runs at expansion 1 too (a 1x1 convolution, channels in = out), as in pytorch-cifar.
    """

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        self.conv1 = nn.Conv2d(in_planes, hidden, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel_size=3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        # None: no residual (a stride-2 block). A projection where the channel count changes, as pytorch-cifar
        # has it (the paper adds no residual there); its parameters come after bn3, as in pytorch-cifar.
        self.shortcut: nn.Module | None = None
        if stride == 1:
            self.shortcut = nn.Identity() if in_planes == out_planes else nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out if self.shortcut is None else out + self.shortcut(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) for CIFAR-sized RGB inputs: stem, 17 inverted residual blocks, 1x1 conv to 1280,
    global average pooling, linear classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        # Stride 1, not the paper's 2: a 32x32 image has little resolution to spare.
        self.conv1 = nn.Conv2d(3, _STEM_CHANNELS, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_CHANNELS)
        blocks = []
        in_planes = _STEM_CHANNELS
        for expansion, out_planes, num_blocks, stride in _STAGES:
            for i in range(num_blocks):
                blocks.append(InvertedResidual(in_planes, out_planes, expansion, stride if i == 0 else 1))
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(in_planes, _FEATURES, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(_FEATURES)
        self.linear = nn.Linear(_FEATURES, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model
def mobilenetv2(num_classes: int = 10, img: int = 32) -> nn.Module:
    """MobileNetV2 (Sandler et al. 2018) for 32x32 inputs, as pytorch-cifar builds it.

    ``img`` is not needed: global average pooling makes the model work at any input size.
    """
    return MobileNetV2(num_classes)
