"""Named training recipes (``--recipe``): presets for the flags of the training options, which explicit flags
(on the command line or in a --config file) override.

* ``paper``: the UPANets paper's recipe (SGD, cosine to 0, crop + flip), the default; nothing else on.
* ``modern``: torchvision's "new recipe" (references/classification, "How to train state-of-the-art models
  using TorchVision's latest primitives"): label smoothing 0.1, MixUp 0.2 / CutMix 1.0, TrivialAugmentWide,
  random erasing 0.1, weight EMA, linear warmup (decay 0.01), no weight decay on normalisation layers and
  biases. Scaled to CIFAR-sized images and runs: the flags' SGD learning rate (0.1 at batch 100) and weight decay
  (5e-4) stay, the warmup is 5% of the epochs (torchvision: 5 of 600 epochs at batch 1024), and the EMA decay is
  0.9995, which with torchvision's adjustment averages over about the last 3% of a 100-epoch CIFAR run at batch
  100, as its 0.99998 does over a 600-epoch ImageNet run at batch 1024.
* ``fast``: the model-agnostic techniques of airbench (KellerJordan/cifar10-airbench, airbench94): Nesterov
  SGD, label smoothing 0.2, alternating flips, flip + translate test-time augmentation, and airbench's warmup
  shape (linear from 0.2 of the rate over 23% of the run).
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

# Each recipe's value of every flag that recipes set; a callable takes the flags and gives the value.
Preset = dict[str, Any | Callable[[argparse.Namespace], Any]]

PAPER: Preset = {
    "opt": "sgd",
    "norm_weight_decay": None,  # as --weight-decay
    "label_smoothing": 0.0,
    "mixup_alpha": 0.0,
    "cutmix_alpha": 0.0,
    "auto_augment": "none",
    "ra_magnitude": 9,
    "ra_num_ops": 2,
    "random_erase": 0.0,
    "alternating_flip": False,
    "model_ema": False,
    "model_ema_steps": 32,
    "model_ema_decay": 0.99998,
    "lr_warmup_epochs": 0,
    "lr_warmup_method": "linear",
    "lr_warmup_decay": 0.01,
    "lr_min": 0.0,
    "clip_grad_norm": 0.0,
    "tta": "none",
}

RECIPES: dict[str, Preset] = {
    "paper": PAPER,
    "modern": {**PAPER, "label_smoothing": 0.1, "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "auto_augment": "ta_wide",
               "random_erase": 0.1, "model_ema": True, "model_ema_decay": 0.9995, "norm_weight_decay": 0.0,
               "lr_warmup_epochs": lambda args: round(0.05 * args.epochs)},
    "fast": {**PAPER, "opt": "sgd_nesterov", "label_smoothing": 0.2, "alternating_flip": True,
             "tta": "flip-translate", "lr_warmup_decay": 0.2, "lr_warmup_epochs": lambda args: round(0.23 * args.epochs)},
}


def resolve_recipe(args: argparse.Namespace) -> dict[str, Any]:
    """Give every recipe flag left out (None) the value of ``args.recipe``; return the values so set."""
    preset = RECIPES[args.recipe]
    taken = {}
    for key, value in preset.items():
        if getattr(args, key) is None:
            taken[key] = value(args) if callable(value) else value
            setattr(args, key, taken[key])
    return taken


def describe(args: argparse.Namespace, taken: dict[str, Any]) -> str:
    """``recipe: modern (label_smoothing=0.1, ...)``: what differs from the paper's recipe, marking the values
    that flags set (``*``)."""
    differs = [f"{key}={getattr(args, key)}{'' if key in taken else '*'}" for key in PAPER
               if getattr(args, key) != _value(PAPER[key], args)]
    return f"recipe: {args.recipe}" + (f" ({', '.join(differs)}; * set by a flag)" if differs else " (the paper's)")


def _value(value: Any, args: argparse.Namespace) -> Any:
    return value(args) if callable(value) else value
