"""Layers that several architecture files share."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): scale each channel by a sigmoid gate computed, through a
    ``hidden``-wide bottleneck with ``activation``, from the globally pooled map."""

    def __init__(self, channels: int, hidden: int, activation: Callable[[torch.Tensor], torch.Tensor] = F.relu
                 ) -> None:
        super().__init__()
        self.se1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.se2 = nn.Conv2d(hidden, channels, kernel_size=1)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.se2(self.activation(self.se1(F.adaptive_avg_pool2d(x, 1))))
        return x * gate.sigmoid()
