"""Pre-activation ResNet (He et al., ECCV 2016, "Identity Mappings in Deep Residual Networks", arXiv 1603.05027)
for CIFAR-sized inputs, as kuangliu/pytorch-cifar builds it.

Each block applies BatchNorm and ReLU before its convolutions and adds its shortcut with nothing after, so the
identity path runs from block to block unchanged. The network is :class:`models.resnet.ResNet` with a bare
convolutional stem; like pytorch-cifar's (commit 49b7aa9), it has no BatchNorm-ReLU after the last block, so its
parameter names, order and shapes are pytorch-cifar's and its checkpoints load with ``strict=True``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import register_model
from .resnet import ResNet, conv3x3, projection

__all__ = ["PreActBlock", "preactresnet18"]


class PreActBlock(nn.Module):
    """(BN, ReLU, 3x3 conv) x2, the first convolution strided; the full pre-activation basic block."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        # Without BatchNorm: the block's own bn1 already normalises the projection's input.
        self.shortcut = projection(in_planes, planes, stride, norm=False)

    def residual(self, out: torch.Tensor) -> torch.Tensor:
        """The convolutional branch of the already activated input ``out = relu(bn1(x))``."""
        return self.conv2(F.relu(self.bn2(self.conv1(out))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # An identity shortcut carries x itself, untouched; a projection shares the branch's activated input.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        return self.residual(out) + shortcut


@register_model
def preactresnet18(num_classes: int = 10, img: int = 32) -> nn.Module:
    """Pre-activation ResNet-18 (He et al. 2016) for 32x32 inputs, as pytorch-cifar builds it."""
    return ResNet(PreActBlock, (2, 2, 2, 2), num_classes, stem_norm=False)
