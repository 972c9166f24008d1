"""DenseNet (Huang et al., CVPR 2017, arXiv 1608.06993) for CIFAR, as kuangliu/pytorch-cifar builds it.

A 3x3 stem of twice the growth rate, four dense blocks of bottleneck layers (BN-ReLU-1x1 conv, BN-ReLU-3x3 conv)
joined by transitions that halve the channels (compression 0.5) and the resolution, and a BN-ReLU-pool-linear
head. Parameter names, order and shapes are pytorch-cifar's (commit 49b7aa9), so its checkpoints load with
``strict=True``. Its head averages the final 4x4 map of a 32x32 input; here the pool is adaptive, which is the same
at 32x32 and lets other sizes (64x64 Tiny ImageNet) use the same classifier, so the builders ignore ``img``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import register_model

__all__ = [
    "Bottleneck",
    "Transition",
    "DenseNet",
    "densenet121",
    "densenet121_gr16",
    "densenet161",
    "densenet169",
    "densenet201",
]


class Bottleneck(nn.Module):
    """A dense layer: BN-ReLU-1x1 conv to ``4 * growth_rate`` channels, BN-ReLU-3x3 conv to ``growth_rate``,
    whose output is concatenated to its input."""

    def __init__(self, in_planes: int, growth_rate: int) -> None:
        super().__init__()
        # The 1x1 conv caps the 3x3 conv's input at 4k channels however wide the block has grown (DenseNet-B).
        width = 4 * growth_rate
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, width, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        # New features before the input: pytorch-cifar's channel order, which its trained weights depend on.
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    """Between dense blocks: BN-ReLU-1x1 conv to ``out_planes`` channels, then 2x2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """DenseNet-BC with ``nblocks[i]`` bottleneck layers in dense block ``i + 1``, each adding ``growth_rate``
    channels; each transition keeps ``floor(reduction * channels)``.

    Modules are named as in pytorch-cifar: ``conv1``, ``dense1``, ``trans1``, ..., the last ``dense``, ``bn``,
    ``linear``.
    """

    def __init__(self, nblocks: Sequence[int], growth_rate: int = 12, reduction: float = 0.5,
                 num_classes: int = 10) -> None:
        super().__init__()
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, planes, kernel_size=3, padding=1, bias=False)
        self.stage_names: list[str] = []  # dense1, trans1, dense2, ...: applied in this order
        for stage, nblock in enumerate(nblocks, 1):
            layers = [Bottleneck(planes + i * growth_rate, growth_rate) for i in range(nblock)]
            self.add_module(f"dense{stage}", nn.Sequential(*layers))
            self.stage_names.append(f"dense{stage}")
            planes += nblock * growth_rate
            if stage < len(nblocks):
                out_planes = math.floor(planes * reduction)
                self.add_module(f"trans{stage}", Transition(planes, out_planes))
                self.stage_names.append(f"trans{stage}")
                planes = out_planes
        self.num_features = planes
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for name in self.stage_names:
            out = getattr(self, name)(out)
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(out)


@register_model
def densenet121(num_classes: int = 10, img: int = 32) -> nn.Module:
    """DenseNet-121 (Huang et al. 2017), growth rate 32, for 32x32 inputs, as pytorch-cifar builds it."""
    return DenseNet([6, 12, 24, 16], growth_rate=32, num_classes=num_classes)


@register_model
def densenet121_gr16(num_classes: int = 10, img: int = 32) -> nn.Module:
    """DenseNet-121 with growth rate 16 (the UPANets paper's "DenseNet121 GR16"), on pytorch-cifar's blocks."""
    return DenseNet([6, 12, 24, 16], growth_rate=16, num_classes=num_classes)


@register_model
def densenet169(num_classes: int = 10, img: int = 32) -> nn.Module:
    """DenseNet-169 (Huang et al. 2017), growth rate 32, for 32x32 inputs, as pytorch-cifar builds it."""
    return DenseNet([6, 12, 32, 32], growth_rate=32, num_classes=num_classes)


@register_model
def densenet201(num_classes: int = 10, img: int = 32) -> nn.Module:
    """DenseNet-201 (Huang et al. 2017), growth rate 32, for 32x32 inputs, as pytorch-cifar builds it."""
    return DenseNet([6, 12, 48, 32], growth_rate=32, num_classes=num_classes)


@register_model
def densenet161(num_classes: int = 10, img: int = 32) -> nn.Module:
    """DenseNet-161 (Huang et al. 2017), growth rate 48, for 32x32 inputs, as pytorch-cifar builds it."""
    return DenseNet([6, 12, 36, 24], growth_rate=48, num_classes=num_classes)
