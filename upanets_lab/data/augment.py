"""Training augmentation, normalisation and test-time augmentation as batched tensor ops on the device.

:class:`DeviceTransform` applies the paper's augmentation (random crop with zero padding + horizontal flip)
per image and normalises, with the recipes' options (auto-augmentation, random erasing, alternating flips,
MixUp/CutMix; the ops are in augment_ops.py); its generator lives on the device and is reseeded per
(seed, epoch, rank). :func:`tta_logits` averages the logits of flipped and shifted views.

    augment = DeviceTransform(bundle.mean, bundle.std, device="cuda", pad=bundle.pad, flip=True, seed=0)
    augment.set_epoch(epoch)
    inputs = augment(images)              # uint8 (B, 3, H, W) -> normalised float (B, 3, H, W)
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from upanets_lab.data import augment_ops
from upanets_lab.data.loading import mixed_seed


def random_crop_flip(images: Tensor, pad: int, generator: torch.Generator | None = None, flip: bool = True, *,
                     sync_free: bool | None = None) -> Tensor:
    """Per-sample RandomCrop(size, padding=pad) + RandomHorizontalFlip(0.5) of a uint8 batch, as batched ops.

    Offsets are uniform in [0, 2 * pad] like torchvision's; padding is zeros in uint8 (black, as torchvision pads
    the PIL image), so after normalisation padded pixels equal -mean/std.
    sync_free: flip with torch.where, which never waits for the device, instead of a boolean-mask index, which is
    faster on the CPU; None means "when the batch is not on the CPU". Both give the same output for one generator.
    """
    b, c, h, w = images.shape
    dev = images.device
    # Every crop window of the padded batch as a strided view, (b, c, 2*pad+1, 2*pad+1, h, w): one gather picks each
    # sample's window and copies only the output.
    windows = F.pad(images, (pad, pad, pad, pad)).unfold(2, h, 1).unfold(3, w, 1)
    dy = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
    crops = windows[torch.arange(b, device=dev), :, dy, dx]
    if not flip:
        return crops
    flipped = torch.rand((b,), device=dev, generator=generator) < 0.5
    if sync_free is None:
        sync_free = dev.type != "cpu"
    if not sync_free:  # flipping only the chosen half is fastest on the CPU ...
        crops[flipped] = crops[flipped].flip(3)
        return crops
    # ... but a boolean-mask index waits for the GPU to size its result; torch.where never syncs.
    return torch.where(flipped[:, None, None, None], crops.flip(3), crops)


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float],
              dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 (B, 3, H, W) -> (images / 255 - mean) / std."""
    scale, shift = _scale_shift(mean, std, images.device)
    return torch.addcmul(shift, images, scale).to(dtype)


def _scale_shift(mean: Sequence[float], std: Sequence[float], device: torch.device) -> tuple[Tensor, Tensor]:
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return 1 / (255 * std_t), -mean_t / std_t


class DeviceTransform:
    """uint8 batch -> augmented, normalised float batch, per image, on ``device``; and MixUp/CutMix of the batch.

    In the order of torchvision's reference recipe: random crop (``pad`` > 0) and horizontal flip (``flip``:
    random, or with ``alternating_flip`` airbench's, where each epoch flips exactly the images the previous one
    did not), ``auto_augment`` (an augment_ops.AutoAugment), normalisation, random erasing with probability
    ``random_erase``; then :meth:`mix` with ``mixing``. The paper's recipe is the crop and the random flip.

    The generator lives on ``device`` and is reseeded from (seed, epoch, rank) by set_epoch, so augmentation
    differs between DDP ranks and is reproducible on resume: a resume mid-epoch passes set_epoch the generator
    state its checkpoint saved. MixUp/CutMix draw from (seed, epoch, rank, step) and alternating flips from
    (seed, epoch) and each image's index in the set, so the epoch given to set_epoch fixes them.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, device: torch.device | str, pad: int = 0,
                 flip: bool = False, seed: int = 0, rank: int = 0, dtype: torch.dtype = torch.float32,
                 alternating_flip: int = 0, auto_augment: augment_ops.AutoAugment | None = None,
                 random_erase: float = 0.0, mixing: Mixing | None = None):
        """``alternating_flip``: the number of images in the training set (their first epoch's flips are drawn
        for each index), 0 for random flips."""
        self.device = torch.device(device)
        self.scale, self.shift = _scale_shift(mean, std, self.device)
        self.pad, self.flip, self.seed, self.rank, self.dtype = pad, flip, seed, rank, dtype
        self.auto_augment, self.random_erase, self.mixing = auto_augment, random_erase, mixing
        self.first_flips = None
        if alternating_flip:
            first = torch.Generator().manual_seed(mixed_seed(seed, _FLIP_KEY))
            self.first_flips = (torch.rand(alternating_flip, generator=first) < 0.5).to(self.device)
        self.generator = torch.Generator(device=self.device)
        self.set_epoch(0)

    def set_epoch(self, epoch: int, generator_state: Tensor | None = None) -> None:
        """Draw as in ``epoch`` (0-based): from its start, or from ``generator_state`` (what
        :meth:`generator_state` returned mid-epoch) when resuming inside it."""
        self.epoch = epoch
        if generator_state is None:
            self.generator.manual_seed(mixed_seed(self.seed, epoch, self.rank))
        else:
            self.generator.set_state(generator_state)

    def generator_state(self) -> Tensor:
        """Where the per-image draws stand, for a mid-epoch checkpoint."""
        return self.generator.get_state()

    def __call__(self, images: Tensor, indices: Tensor | None = None) -> Tensor:
        """Augment and normalise; ``indices`` (the images' places in the training set) only for alternating flips."""
        random_flip = self.flip and self.first_flips is None
        if self.pad or random_flip:
            images = random_crop_flip(images, self.pad, self.generator, random_flip)
        if self.first_flips is not None:
            if indices is None:
                raise ValueError("alternating flips need the images' indices in the training set")
            flipped = self.first_flips[indices] ^ bool(self.epoch % 2)
            images = torch.where(flipped[:, None, None, None], images.flip(3), images)
        if self.auto_augment is not None:
            images = self.auto_augment(images, self.generator)
        inputs = torch.addcmul(self.shift, images, self.scale).to(self.dtype)
        if self.random_erase:
            inputs = augment_ops.random_erase(inputs, self.random_erase, self.generator)
        return inputs

    def mix(self, inputs: Tensor, labels: Tensor, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """(inputs, targets, accuracy labels) of training step ``step`` of the epoch: the batch as it is with its
        labels, or under MixUp/CutMix the mixed batch, its mixed targets (probabilities) and each image's
        dominant label (the label whose share is at least one half), which train accuracy counts."""
        if self.mixing is None:
            return inputs, labels, labels
        draw = augment_ops.draw_mix((self.seed, self.epoch, self.rank, step), tuple(inputs.shape[-2:]),
                                    self.mixing.mixup_alpha, self.mixing.cutmix_alpha)
        if draw is None:
            return inputs, labels, labels
        mixed, targets = augment_ops.mix_batch(inputs, labels, self.mixing.num_classes,
                                               mixup_alpha=self.mixing.mixup_alpha,
                                               cutmix_alpha=self.mixing.cutmix_alpha, label_smoothing=0.0, draw=draw)
        return mixed, targets, labels if draw.lam >= 0.5 else labels.roll(1, 0)


# The key beside the seed from which alternating flips draw each image's first flip.
_FLIP_KEY = 0xF11B


@dataclass(frozen=True)
class Mixing:
    """MixUp and CutMix of training batches (timm's and torchvision's: one of the two per batch when both are
    on). The targets stay unsmoothed: the loss's label smoothing applies to them as to hard labels, which is
    timm's smoothing of mixed targets."""

    mixup_alpha: float
    cutmix_alpha: float
    num_classes: int


# ----------------------------------------------------------------------------- test-time augmentation

TTA_MODES = ("none", "flip", "flip-translate")


def tta_logits(model: Callable[[Tensor], Tensor], inputs: Tensor, mode: str = "none") -> Tensor:
    """The model's logits averaged over test-time views of a normalised batch, as airbench's evaluation:

    none: the batch; flip: the mean over it and its mirror image; flip-translate: one half the flip logits,
    and one quarter each those of the batch shifted by one pixel up-left and down-right (reflect padding).
    The views run as one batch.
    """
    if mode == "none":
        return model(inputs)
    if mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {mode!r}; choose from {', '.join(TTA_MODES)}")
    views = [inputs]
    if mode == "flip-translate":
        padded = F.pad(inputs, (1, 1, 1, 1), mode="reflect")
        h, w = inputs.shape[-2:]
        views += [padded[..., :h, :w], padded[..., 2:, 2:]]
    views += [view.flip(3) for view in views]
    logits = model(torch.cat(views)).unflatten(0, (len(views), len(inputs)))
    if mode == "flip":
        return logits.mean(0)
    mirrored = (logits[:3] + logits[3:]) / 2  # (original, up-left, down-right), each the mean with its mirror
    return mirrored[0] / 2 + (mirrored[1] + mirrored[2]) / 4
