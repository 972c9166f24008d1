"""ResNet (He et al., CVPR 2016, arXiv 1512.03385) for CIFAR-sized inputs, as kuangliu/pytorch-cifar builds it.

The CIFAR variant keeps the ImageNet ResNets' four stages (64, 128, 256, 512 planes; basic blocks for 18/34
layers, bottlenecks for 50/101/152) but replaces the 7x7 stride-2 stem and its max pool with one 3x3 stride-1
convolution, so a 32x32 input reaches the last stage at 4x4. Shortcuts are identities except where a block changes
stride or width, which a 1x1 convolution projects (the paper's option B).

Parameter names, order and shapes are pytorch-cifar's (commit 49b7aa9), so its checkpoints load with
``strict=True`` once DataParallel's ``module.`` prefix is stripped. Where pytorch-cifar pools the last 4x4 map with a
fixed 4x4 average pool, :class:`ResNet` pools globally: the same at 32x32, and any input size (64x64 Tiny ImageNet)
gives ``(N, num_classes)`` logits. The builders therefore ignore ``img``, which the registry passes to every model.

:class:`ResNet` also assembles ``preact_resnet.py``'s and ``senet.py``'s networks, whose blocks follow the
:class:`Block` contract.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import register_model

__all__ = [
    "Block",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "conv3x3",
    "projection",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
]

# Planes and first-block stride of the four stages: each stage after the first halves the map.
_STAGE_PLANES = (64, 128, 256, 512)
_STAGE_STRIDES = (1, 2, 2, 2)


class Block(Protocol):
    """A residual block class as :class:`ResNet` stacks it: ``block(in_planes, planes, stride)`` maps
    ``in_planes`` channels to ``planes * block.expansion``."""

    expansion: int

    def __call__(self, in_planes: int, planes: int, stride: int) -> nn.Module: ...


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """A 3x3 convolution that keeps the map size at stride 1; no bias, as a BatchNorm always precedes or follows it."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def projection(in_planes: int, out_planes: int, stride: int, *, norm: bool) -> nn.Sequential | None:
    """The shortcut of a block that changes stride or width: a strided 1x1 convolution, then BatchNorm if ``norm``.

    None where the identity already fits, so identity shortcuts add no state-dict entries.
    """
    if stride == 1 and in_planes == out_planes:
        return None
    layers: list[nn.Module] = [nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)]
    if norm:
        layers.append(nn.BatchNorm2d(out_planes))
    return nn.Sequential(*layers)


class _PostActivationBlock(nn.Module):
    """What the original ResNet's blocks share: ``relu(residual(x) + shortcut(x))``, BatchNorm after every conv."""

    expansion = 1
    shortcut: nn.Sequential | None

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The block's convolutional branch, up to its last BatchNorm."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.residual(x) + shortcut)


class BasicBlock(_PostActivationBlock):
    """Two 3x3 convolutions (the first strided), as in ResNet-18/34."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = projection(in_planes, planes, stride, norm=True)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(_PostActivationBlock):
    """1x1 reduce, 3x3 (strided), 1x1 expand to ``4 * planes``, as in ResNet-50/101/152."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = projection(in_planes, out_planes, stride, norm=True)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class ResNet(nn.Module):
    """A CIFAR ResNet: 3x3 stem, four stages of ``num_blocks`` blocks each, global average pooling, linear classifier.

    ``stem_norm=False`` leaves the stem a bare convolution, as pre-activation networks have it: their first block
    normalises and activates its own input.
    """

    def __init__(self, block: Block, num_blocks: Sequence[int], num_classes: int = 10, *,
                 stem_norm: bool = True) -> None:
        super().__init__()
        self.conv1 = conv3x3(3, _STAGE_PLANES[0])
        self.bn1 = nn.BatchNorm2d(_STAGE_PLANES[0]) if stem_norm else None
        stages = []
        in_planes = _STAGE_PLANES[0]
        for planes, blocks, stride in zip(_STAGE_PLANES, num_blocks, _STAGE_STRIDES, strict=True):
            # Only a stage's first block changes the map size and width; the rest keep them.
            layers = []
            for i in range(blocks):
                layers.append(block(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        if self.bn1 is not None:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # Global pooling: pytorch-cifar's 4x4 average pool at 32x32 inputs, and still one value per channel at others.
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@register_model
def resnet18(num_classes: int = 10, img: int = 32) -> nn.Module:
    """ResNet-18 (He et al. 2016) for 32x32 inputs, as pytorch-cifar builds it."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


@register_model
def resnet34(num_classes: int = 10, img: int = 32) -> nn.Module:
    """ResNet-34 (He et al. 2016) for 32x32 inputs, as pytorch-cifar builds it."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes)


@register_model
def resnet50(num_classes: int = 10, img: int = 32) -> nn.Module:
    """ResNet-50 (He et al. 2016) for 32x32 inputs, as pytorch-cifar builds it."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


@register_model
def resnet101(num_classes: int = 10, img: int = 32) -> nn.Module:
    """ResNet-101 (He et al. 2016) for 32x32 inputs, as pytorch-cifar builds it."""
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes)


@register_model
def resnet152(num_classes: int = 10, img: int = 32) -> nn.Module:
    """ResNet-152 (He et al. 2016) for 32x32 inputs, as pytorch-cifar builds it."""
    return ResNet(Bottleneck, (3, 8, 36, 3), num_classes)
