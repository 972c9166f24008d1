"""ResNeXt (Xie et al., CVPR 2017, "Aggregated Residual Transformations for Deep Neural Networks") for CIFAR.

The ResNeXt-29 models of kuangliu/pytorch-cifar (commit 49b7aa9): a 1x1 stem at full resolution, then three
stages of three bottleneck blocks whose 3x3 convolution is split into ``cardinality`` groups. Parameter names,
order and shapes are pytorch-cifar's, so its checkpoints load with ``strict=True`` once DataParallel's
``module.`` prefix is stripped. The final pooling is global: pytorch-cifar's fixed 8x8 average is exactly that
at 32x32, and being global lets the same models take 64x64 inputs (Tiny ImageNet). The builders accept the
registry's ``img`` argument and need not use it.

:class:`ResNeXtBlock` and :class:`ResNeXt` also build RegNet (``regnet.py``): RegNet's X block is this block,
and its Y block adds squeeze-and-excitation after the grouped convolution.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import register_model

__all__ = [
    "ResNeXtBlock",
    "ResNeXt",
    "resnext29_2x64d",
    "resnext29_4x64d",
    "resnext29_8x64d",
    "resnext29_32x4d",
]


class ResNeXtBlock(nn.Module):
    """Residual bottleneck: 1x1 to ``width``, 3x3 in ``groups`` groups, optional ``se``, 1x1 to ``out_planes``.

    The 3x3 convolution carries the block's ``stride``. The shortcut is a strided 1x1 convolution + BatchNorm
    where the block changes the shape, the identity otherwise.
    """

    def __init__(
        self,
        in_planes: int,
        width: int,
        out_planes: int,
        groups: int,
        stride: int = 1,
        se: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.out_planes = out_planes
        self.conv1 = nn.Conv2d(in_planes, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        # Assigned between bn2 and conv3 because that is where its keys sit in pytorch-cifar's state dicts.
        self.se = se if se is not None else nn.Identity()
        self.conv3 = nn.Conv2d(width, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        if stride != 1 or in_planes != out_planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.se(out)))
        return F.relu(out + self.shortcut(x))


class ResNeXt(nn.Module):
    """Stem (``stem_kernel`` conv + BatchNorm + ReLU, stride 1), ``stages`` of blocks, global average pool, linear.

    The stages become ``layer1``, ``layer2``, ...; the stem's width is the first block's input width and the
    classifier's input the last block's output width.
    """

    def __init__(self, stages: Sequence[Sequence[ResNeXtBlock]], num_classes: int = 10, stem_kernel: int = 1) -> None:
        super().__init__()
        stem_width = stages[0][0].conv1.in_channels
        self.conv1 = nn.Conv2d(3, stem_width, kernel_size=stem_kernel, padding=stem_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.stage_names = [f"layer{i}" for i in range(1, len(stages) + 1)]
        for name, blocks in zip(self.stage_names, stages):
            self.add_module(name, nn.Sequential(*blocks))
        self.linear = nn.Linear(stages[-1][-1].out_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for name in self.stage_names:
            out = getattr(self, name)(out)
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _resnext29(cardinality: int, bottleneck_width: int, num_classes: int) -> ResNeXt:
    """ResNeXt-29 with ``cardinality`` groups of ``bottleneck_width`` channels in the first stage.

    Three stages of three blocks at strides 1, 2, 2 after a 64-wide stem; each block widens its bottleneck
    twofold on output, and each stage doubles the bottleneck width (the paper's rule: width doubles where
    resolution halves), so 29 = 9 blocks x 3 convolutions + stem + classifier.
    """
    stages = []
    in_planes = 64
    for index, stride in enumerate((1, 2, 2)):
        width = cardinality * bottleneck_width * 2**index
        blocks = []
        for block in range(3):
            blocks.append(ResNeXtBlock(in_planes, width, 2 * width, cardinality, stride if block == 0 else 1))
            in_planes = 2 * width
        stages.append(blocks)
    return ResNeXt(stages, num_classes, stem_kernel=1)


@register_model
def resnext29_2x64d(num_classes: int = 10, img: int = 32) -> nn.Module:
    """ResNeXt-29, 2x64d (Xie et al. 2017), for 32x32 inputs, as pytorch-cifar builds it."""
    return _resnext29(2, 64, num_classes)


@register_model
def resnext29_4x64d(num_classes: int = 10, img: int = 32) -> nn.Module:
    """ResNeXt-29, 4x64d (Xie et al. 2017), for 32x32 inputs, as pytorch-cifar builds it."""
    return _resnext29(4, 64, num_classes)


@register_model
def resnext29_8x64d(num_classes: int = 10, img: int = 32) -> nn.Module:
    """ResNeXt-29, 8x64d (Xie et al. 2017), for 32x32 inputs, as pytorch-cifar builds it."""
    return _resnext29(8, 64, num_classes)


@register_model
def resnext29_32x4d(num_classes: int = 10, img: int = 32) -> nn.Module:
    """ResNeXt-29, 32x4d (Xie et al. 2017), for 32x32 inputs, as pytorch-cifar builds it."""
    return _resnext29(32, 4, num_classes)
