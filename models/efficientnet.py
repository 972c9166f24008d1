"""EfficientNet-B0 (Tan & Le, ICML 2019, arXiv 1905.11946) as kuangliu/pytorch-cifar builds it for CIFAR.

MBConv blocks: a 1x1 expansion (skipped at expansion 1), a depthwise 3x3 or 5x5 convolution, squeeze-and-excitation,
and a linear 1x1 projection, with swish activations and a residual where the shape is kept. pytorch-cifar
(commit 49b7aa9) differs from the paper's B0 in ways kept here so that its checkpoints load with ``strict=True`` and
give the same logits:

* the stem runs at stride 1, so 32x32 inputs end at 2x2;
* there is no 1x1 convolution to 1280 channels before pooling: the classifier reads the last block's 320;
* a block at expansion 1 still holds an expansion convolution and BatchNorm, which it never runs;
* no drop-connect (stochastic depth): pytorch-cifar sets each block's rate to ``0.2 * b / 16`` but never advances
  ``b`` past 0, so every rate is 0. Dropout (0.2) before the classifier is kept.

Global average pooling makes other input sizes (64x64 Tiny ImageNet) work too.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._layers import SqueezeExcite
from ._registry import register_model

__all__ = ["EfficientNet", "MBConv", "SqueezeExcite", "efficientnetb0"]

# EfficientNet-B0, one row per stage (the paper's Table 1): (expansion, output channels, blocks, kernel size,
# stride of the stage's first block).
_B0_STAGES = (
    (1, 16, 1, 3, 1),
    (6, 24, 2, 3, 2),
    (6, 40, 2, 5, 2),
    (6, 80, 3, 3, 2),
    (6, 112, 3, 5, 1),
    (6, 192, 4, 5, 2),
    (6, 320, 1, 3, 1),
)
_B0_DROPOUT = 0.2
_STEM_CHANNELS = 32
# Squeeze-and-excitation bottleneck width, relative to the block's input (not expanded) channels.
_SE_RATIO = 0.25


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-and-excitation; swish (SiLU) after the expansion and depthwise
    convolutions, none after the projection."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expansion: int) -> None:
        super().__init__()
        self.expand = expansion != 1
        hidden = in_channels * expansion
        # Built at expansion 1 as well, where forward skips it: pytorch-cifar's checkpoints hold these weights.
        self.conv1 = nn.Conv2d(in_channels, hidden, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel_size, stride=stride, padding=kernel_size // 2, groups=hidden,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.se = SqueezeExcite(hidden, int(in_channels * _SE_RATIO), activation=F.silu)
        self.conv3 = nn.Conv2d(hidden, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.residual = stride == 1 and in_channels == out_channels
        if not self.expand:
            # Never used, so never trained: frozen, DistributedDataParallel does not wait for their gradients.
            self.conv1.requires_grad_(False)
            self.bn1.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.silu(self.bn1(self.conv1(x))) if self.expand else x
        out = F.silu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.se(out)))
        return out + x if self.residual else out


class EfficientNet(nn.Module):
    """EfficientNet for CIFAR-sized RGB inputs: stem, MBConv stages, global average pooling, dropout, linear.

    ``stages`` rows are (expansion, output channels, blocks, kernel size, first stride).
    """

    def __init__(
        self,
        stages: tuple[tuple[int, int, int, int, int], ...],
        num_classes: int = 10,
        dropout: float = _B0_DROPOUT,
    ) -> None:
        super().__init__()
        self.dropout = dropout
        # Stride 1, not the paper's 2: a 32x32 image has little resolution to spare.
        self.conv1 = nn.Conv2d(3, _STEM_CHANNELS, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_CHANNELS)
        blocks = []
        in_channels = _STEM_CHANNELS
        for expansion, out_channels, num_blocks, kernel_size, stride in stages:
            for i in range(num_blocks):
                blocks.append(MBConv(in_channels, out_channels, kernel_size, stride if i == 0 else 1, expansion))
                in_channels = out_channels
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.silu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(F.dropout(out, self.dropout, self.training))


@register_model
def efficientnetb0(num_classes: int = 10, img: int = 32) -> nn.Module:
    """EfficientNet-B0 (Tan & Le 2019) for 32x32 inputs, as pytorch-cifar builds it.

    ``img`` is not needed: global average pooling makes the model work at any input size.
    """
    return EfficientNet(_B0_STAGES, num_classes)
