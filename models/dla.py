"""Deep Layer Aggregation (Yu et al., CVPR 2018, arXiv 1707.06484) for CIFAR, as kuangliu/pytorch-cifar builds it.

A stem of three 3x3 conv-BN-ReLU layers, then four aggregation trees of residual basic blocks (the last three halve
the resolution), global average pooling and a linear classifier. In a tree, an aggregation node (``Root``)
concatenates the outputs of the blocks and subtrees below it and mixes them with a 1x1 convolution, so shallow and
deep features are fused at every level rather than only at the end. Two trees share the rest of the network:

* ``Tree`` (``dla``): a level-L tree chains its subtrees of levels L-1, ..., 1 and two blocks, and its root
  aggregates all of them plus one more block applied to the tree's input;
* ``SimpleTree`` (``simpledla``): a binary tree, each root joining its left subtree and the right subtree run on it.

Parameter names, order and shapes are pytorch-cifar's (commit 49b7aa9), so its checkpoints load with
``strict=True``. Its head averages the final 4x4 map of a 32x32 input; here the pool is adaptive, which is the same
at 32x32 and lets other sizes (64x64 Tiny ImageNet) use the same classifier, so the builders ignore ``img``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import register_model

__all__ = ["BasicBlock", "Root", "Tree", "SimpleTree", "DLA", "dla", "simpledla"]


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 conv-BN layers plus a shortcut (a 1x1 conv-BN where the shape changes), ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Root(nn.Module):
    """An aggregation node: concatenate its inputs along channels, then 1x1 conv-BN-ReLU to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return F.relu(self.bn(self.conv(torch.cat(xs, 1))))


class Tree(nn.Module):
    """DLA's aggregation tree of ``level`` >= 1 from ``in_channels`` to ``out_channels``, downsampling by ``stride``.

    Level 1 is two blocks joined by a root. A deeper tree runs its subtrees ``level_{L-1}``, ..., ``level_1`` and
    then two blocks in a chain, and its root aggregates every one of their outputs plus ``prev_root``, a block on
    the tree's own input, which carries the shallower features of the stage into the aggregation.
    """

    def __init__(self, in_channels: int, out_channels: int, level: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.level = level
        # The chain's outputs (subtrees, then left and right node), plus prev_root below level 1.
        inputs = level + 2 if level > 1 else 2
        self.root = Root(inputs * out_channels, out_channels)
        # Only the first link of the chain sees the tree's input, so only it changes the width and downsamples.
        # (pytorch-cifar gives every subtree the input's width and stride; the same for the levels 1 and 2 used.)
        chain_in, chain_stride = in_channels, stride
        for i in reversed(range(1, level)):
            self.add_module(f"level_{i}", Tree(chain_in, out_channels, level=i, stride=chain_stride))
            chain_in, chain_stride = out_channels, 1
        if level > 1:
            self.prev_root = BasicBlock(in_channels, out_channels, stride=stride)
        self.left_node = BasicBlock(chain_in, out_channels, stride=chain_stride)
        self.right_node = BasicBlock(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = [self.prev_root(x)] if self.level > 1 else []
        for i in reversed(range(1, self.level)):
            x = getattr(self, f"level_{i}")(x)
            xs.append(x)
        x = self.left_node(x)
        xs.append(x)
        xs.append(self.right_node(x))
        return self.root(xs)


class SimpleTree(nn.Module):
    """pytorch-cifar's simplified aggregation tree: a root joining ``left_tree`` and ``right_tree``, which runs on
    the left one's output; both are trees of ``level - 1``, blocks at level 1."""

    def __init__(self, in_channels: int, out_channels: int, level: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.root = Root(2 * out_channels, out_channels)
        if level == 1:
            self.left_tree = BasicBlock(in_channels, out_channels, stride=stride)
            self.right_tree = BasicBlock(out_channels, out_channels)
        else:
            self.left_tree = SimpleTree(in_channels, out_channels, level=level - 1, stride=stride)
            self.right_tree = SimpleTree(out_channels, out_channels, level=level - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.left_tree(x)
        return self.root([left, self.right_tree(left)])


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (stride 1, no bias), BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DLA(nn.Module):
    """DLA for CIFAR with aggregation trees built by ``tree`` (``Tree`` or ``SimpleTree``): stem ``base``,
    ``layer1``, ``layer2`` (16, 16, 32 channels), trees ``layer3`` to ``layer6`` (64 to 512 channels), ``linear``."""

    def __init__(self, tree: Callable[..., nn.Module] = Tree, num_classes: int = 10) -> None:
        super().__init__()
        self.base = _conv_bn_relu(3, 16)
        self.layer1 = _conv_bn_relu(16, 16)
        self.layer2 = _conv_bn_relu(16, 32)
        self.layer3 = tree(32, 64, level=1, stride=1)
        self.layer4 = tree(64, 128, level=2, stride=2)
        self.layer5 = tree(128, 256, level=2, stride=2)
        self.layer6 = tree(256, 512, level=1, stride=2)
        self.num_features = 512
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer2(self.layer1(self.base(x)))
        out = self.layer6(self.layer5(self.layer4(self.layer3(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model
def dla(num_classes: int = 10, img: int = 32) -> nn.Module:
    """DLA (Yu et al. 2018), aggregation trees of levels 1, 2, 2, 1, for 32x32 inputs, as pytorch-cifar builds it."""
    return DLA(Tree, num_classes)


@register_model
def simpledla(num_classes: int = 10, img: int = 32) -> nn.Module:
    """SimpleDLA: DLA (Yu et al. 2018) with pytorch-cifar's simplified binary aggregation trees, for 32x32 inputs."""
    return DLA(SimpleTree, num_classes)
