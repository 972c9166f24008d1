"""RegNet (Radosavovic et al., CVPR 2020, "Designing Network Design Spaces") for CIFAR.

The RegNets of kuangliu/pytorch-cifar (commit 49b7aa9): the stage depths and widths of the paper's ImageNet
200MF and 400MF models, with a 3x3 stem and no downsampling in the first two stages for 32x32 inputs. A RegNet
is a ResNeXt-style network, so it is built from ``resnext.py``'s block and body: every block has bottleneck
ratio 1 (the paper's best setting, so its inner width is its output width) and a fixed group width, and the Y
models add squeeze-and-excitation after the grouped convolution. Parameter names, order and shapes are
pytorch-cifar's, so its checkpoints load with ``strict=True`` once DataParallel's ``module.`` prefix is
stripped. Pooling is global, so 64x64 inputs (Tiny ImageNet) work too; the builders accept the registry's
``img`` argument and need not use it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch.nn as nn

from ._layers import SqueezeExcite
from ._registry import register_model
from .resnext import ResNeXt, ResNeXtBlock

__all__ = [
    "RegNetConfig",
    "SqueezeExcite",
    "regnet",
    "regnetx_200mf",
    "regnetx_400mf",
    "regnety_400mf",
]

# The stride of each stage's first block: the ImageNet models halve the resolution in the stem and in every
# stage, which would leave 1x1 maps at 32x32, so the stem and the first two stages keep full resolution.
_STRIDES = (1, 1, 2, 2)


@dataclass(frozen=True)
class RegNetConfig:
    """A RegNet's four stages: blocks per stage, output widths, and the channels per group of every 3x3 conv.

    ``se_ratio`` > 0 makes a RegNetY: each block's squeeze-and-excitation has ``round(se_ratio * w_in)``
    hidden channels, ``w_in`` being the block's input width (as pytorch-cifar sizes it).
    """

    depths: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    group_width: int
    se_ratio: float = 0.0


REGNETX_200MF = RegNetConfig(depths=(1, 1, 4, 7), widths=(24, 56, 152, 368), group_width=8)
REGNETX_400MF = RegNetConfig(depths=(1, 2, 7, 12), widths=(32, 64, 160, 384), group_width=16)
REGNETY_400MF = dataclasses.replace(REGNETX_400MF, se_ratio=0.25)


def regnet(config: RegNetConfig, num_classes: int = 10) -> ResNeXt:
    """The RegNet of ``config`` for ``num_classes`` classes, after a 64-wide 3x3 stem."""
    stages = []
    in_planes = 64
    for depth, width, stride in zip(config.depths, config.widths, _STRIDES):
        blocks = []
        for block in range(depth):
            se = SqueezeExcite(width, round(config.se_ratio * in_planes)) if config.se_ratio > 0 else None
            groups = width // config.group_width
            blocks.append(ResNeXtBlock(in_planes, width, width, groups, stride if block == 0 else 1, se))
            in_planes = width
        stages.append(blocks)
    return ResNeXt(stages, num_classes, stem_kernel=3)


@register_model
def regnetx_200mf(num_classes: int = 10, img: int = 32) -> nn.Module:
    """RegNetX-200MF (Radosavovic et al. 2020), for 32x32 inputs, as pytorch-cifar builds it."""
    return regnet(REGNETX_200MF, num_classes)


@register_model
def regnetx_400mf(num_classes: int = 10, img: int = 32) -> nn.Module:
    """RegNetX-400MF (Radosavovic et al. 2020), for 32x32 inputs, as pytorch-cifar builds it."""
    return regnet(REGNETX_400MF, num_classes)


@register_model
def regnety_400mf(num_classes: int = 10, img: int = 32) -> nn.Module:
    """RegNetY-400MF (Radosavovic et al. 2020), for 32x32 inputs, as pytorch-cifar builds it.

    RegNetX-400MF plus squeeze-and-excitation in every block.
    """
    return regnet(REGNETY_400MF, num_classes)
