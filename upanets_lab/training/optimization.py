"""How the weights are updated: the optimizer and its parameter groups, the learning rate as a pure function
of the epoch, and the weights' exponential moving average (EMA).

    optimizer = build_optimizer(model, "sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)
    schedule = Schedule(epochs=100)                   # the paper's: cosine from --lr to 0, set once per epoch
    for epoch in range(epochs):
        set_lr(optimizer, schedule, epoch)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

OPTIMIZERS = ("sgd", "sgd_nesterov", "adamw")
WARMUP_METHODS = ("linear", "constant")

# The layers whose parameters --norm-weight-decay covers (with every bias), as torchvision's set_weight_decay.
_NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
                nn.LocalResponseNorm)


def build_optimizer(model: nn.Module, opt: str, *, lr: float, momentum: float, weight_decay: float,
                    norm_weight_decay: float | None = None) -> torch.optim.Optimizer:
    """``opt`` (one of OPTIMIZERS) over ``model``'s parameters; normalisation layers' parameters and biases get
    ``norm_weight_decay`` where it is given (one group for all parameters otherwise, the paper's setting).

    Each group records its base learning rate as ``initial_lr`` (as torch's schedulers do), which
    :func:`set_lr` scales and a checkpoint keeps.
    """
    params: list | list[dict] = list(model.parameters())
    if norm_weight_decay is not None:
        norm, other = _split_norm_parameters(model)
        params = [{"params": other, "weight_decay": weight_decay},
                  {"params": norm, "weight_decay": norm_weight_decay}]
    if opt in ("sgd", "sgd_nesterov"):
        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                    nesterov=opt == "sgd_nesterov")
    elif opt == "adamw":
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {opt!r}; choose from {', '.join(OPTIMIZERS)}")
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer


def _split_norm_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(parameters of normalisation layers and biases, the others), each parameter once."""
    norm: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, _NORM_LAYERS) or name == "bias":
                norm[id(param)] = param
    return list(norm.values()), [p for p in model.parameters() if id(p) not in norm]


@dataclass(frozen=True)
class Schedule:
    """The learning rate of each epoch as a factor of the base rate, as torchvision's reference builds it from
    schedulers stepped once per epoch: ``warmup_epochs`` of linear warmup from ``warmup_decay`` (or a constant
    ``warmup_decay``), then cosine annealing to ``lr_min`` over the remaining epochs.

    Without warmup and with ``lr_min`` 0 this is the paper's schedule, CosineAnnealingLR(T_max=epochs).
    """

    epochs: int
    warmup_epochs: int = 0
    warmup_method: str = "linear"
    warmup_decay: float = 0.01
    lr_min: float = 0.0

    def lr(self, epoch: int, base_lr: float) -> float:
        if epoch < self.warmup_epochs:
            if self.warmup_method == "constant":
                return base_lr * self.warmup_decay
            return base_lr * (self.warmup_decay + (1 - self.warmup_decay) * epoch / self.warmup_epochs)
        span = self.epochs - self.warmup_epochs
        factor = 0.5 * (1 + math.cos(math.pi * (epoch - self.warmup_epochs) / span))
        if self.lr_min == 0:  # kept apart so that the paper's rates are its scheduler's to the last bit
            return base_lr * factor
        return self.lr_min + (base_lr - self.lr_min) * factor


def set_lr(optimizer: torch.optim.Optimizer, schedule: Schedule, epoch: int) -> float:
    """Set every group's learning rate for ``epoch`` from its ``initial_lr``; return the first group's."""
    for group in optimizer.param_groups:
        group["lr"] = schedule.lr(epoch, group["initial_lr"])
    return optimizer.param_groups[0]["lr"]


def build_ema(model: nn.Module, decay: float, *, steps: int, batch_size: int, world_size: int,
              epochs: int) -> AveragedModel:
    """torchvision's reference EMA of ``model``'s parameters and buffers (BatchNorm statistics included),
    updated every ``steps`` steps, with its decay adjusted so that the average spans the same share of a run
    whatever the global batch size, update interval and length: alpha = 1 - decay is scaled by
    global batch * steps / epochs (at most 1)."""
    alpha = min(1.0, (1 - decay) * world_size * batch_size * steps / epochs)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(1 - alpha), use_buffers=True)
