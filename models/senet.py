"""SENet (Hu et al., CVPR 2018, "Squeeze-and-Excitation Networks", arXiv 1709.01507) for CIFAR-sized inputs, as
kuangliu/pytorch-cifar builds it.

SENet18 is pre-activation ResNet-18 with a squeeze-and-excitation unit on every block's residual branch: global
average pooling squeezes each channel to one value, a bottleneck of two 1x1 convolutions (ReLU, then sigmoid)
turns those into per-channel gates, and the branch is scaled by them before the shortcut is added. Unlike
``preact_resnet.py``'s network, pytorch-cifar's (commit 49b7aa9) keeps a BatchNorm-ReLU stem; parameter names, order
and shapes are its own, so its checkpoints load with ``strict=True``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import register_model
from .preact_resnet import PreActBlock
from .resnet import ResNet

__all__ = ["SEPreActBlock", "senet18"]


class SEPreActBlock(PreActBlock):
    """A pre-activation basic block whose residual branch is gated per channel by squeeze-and-excitation.

    The gates' bottleneck has ``planes // reduction`` channels (the paper's reduction ratio, 16).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, reduction: int = 16) -> None:
        super().__init__(in_planes, planes, stride)
        # 1x1 convolutions on the (N, C, 1, 1) squeeze: fully connected layers that need no reshape.
        self.fc1 = nn.Conv2d(planes, planes // reduction, kernel_size=1)
        self.fc2 = nn.Conv2d(planes // reduction, planes, kernel_size=1)

    def residual(self, out: torch.Tensor) -> torch.Tensor:
        out = super().residual(out)
        squeeze = F.adaptive_avg_pool2d(out, 1)
        gates = torch.sigmoid(self.fc2(F.relu(self.fc1(squeeze))))
        return out * gates


@register_model
def senet18(num_classes: int = 10, img: int = 32) -> nn.Module:
    """SENet-18 (Hu et al. 2018) for 32x32 inputs, as pytorch-cifar builds it.

    Pre-activation ResNet-18 blocks with squeeze-and-excitation, after a BatchNorm-ReLU stem.
    """
    return ResNet(SEPreActBlock, (2, 2, 2, 2), num_classes)
