"""Per-image auto-augmentation, random erasing and MixUp/CutMix as batched tensor ops on the training device.

torchvision's v2 transforms draw ONE op for a whole batched tensor; the recipes (TrivialAugmentWide,
RandAugment, AutoAugment's CIFAR-10 policy, RandomErasing) are defined image by image. This module gives every
image its own draw while running batched on the device the images live on:

    augment = AutoAugment("ta_wide")
    images = augment(images_uint8, generator)            # generator on images' device, seeded per rank/epoch
    images = normalise(images)
    images = random_erase(images, 0.25, generator)
    draw = draw_mix((seed, epoch, rank, step), images.shape[-2:], mixup_alpha=0.2, cutmix_alpha=1.0)
    images, targets = mix_batch(images, labels, 10, mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1,
                                draw=draw)

Every random draw goes through the given generator (or, for draw_mix, a generator seeded from its keys), and
how many numbers are drawn depends only on the batch shape, so runs replay bit for bit. Each op reproduces
torchvision.transforms.v2.functional's arithmetic (same dtypes, same rounding; its fused multiply-adds are
emulated in float64, which is exact here) so that an image comes out as torchvision would make it.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

POLICIES = ("ta_wide", "ra", "cifar10")  # TrivialAugmentWide, RandAugment, AutoAugment's CIFAR-10 policy
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
       "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")
# TrivialAugmentWide and RandAugment draw uniformly from the first 14 ops, in this order (torchvision's dict order).
_RANDOM_OPS = OPS[:14]
# AutoAugmentPolicy.CIFAR10: 25 sub-policies of two (op, probability, magnitude bin) each, bins out of 10.
CIFAR10_POLICY: tuple[tuple[tuple[str, float, int | None], tuple[str, float, int | None]], ...] = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)
_CIFAR10_BINS = 10  # AutoAugment's fixed number of magnitude bins


def augmentation_space(policy: str, num_bins: int, height: int, width: int) -> dict[str, tuple[Tensor | None, bool]]:
    """op -> (magnitude bins or None, signed), built on the CPU exactly as torchvision's `_AUGMENTATION_SPACE`
    of the policy's class builds it (float32 linspace), so that drawn magnitudes equal torchvision's bit for bit."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if policy == "ta_wide":  # TrivialAugment's wide ranges: absolute 32 px shifts, up to 135 degrees
        shear, tx, ty, rotate, enhance, posterize_span = 0.99, 32.0, 32.0, 135.0, 0.99, 6
    else:  # RandAugment and AutoAugment share their ranges; shifts scale with the image
        shear, rotate, enhance, posterize_span = 0.3, 30.0, 0.9, 4
        tx, ty = 150.0 / 331.0 * width, 150.0 / 331.0 * height
    bins = functools.partial(torch.linspace, 0.0, steps=num_bins)
    space: dict[str, tuple[Tensor | None, bool]] = {
        "Identity": (None, False),
        "ShearX": (bins(shear), True),
        "ShearY": (bins(shear), True),
        "TranslateX": (bins(tx), True),
        "TranslateY": (bins(ty), True),
        "Rotate": (bins(rotate), True),
        "Brightness": (bins(enhance), True),
        "Color": (bins(enhance), True),
        "Contrast": (bins(enhance), True),
        "Sharpness": (bins(enhance), True),
        "Posterize": ((8 - (torch.arange(num_bins) / ((num_bins - 1) / posterize_span))).round().int(), False),
        "Solarize": (torch.linspace(1.0, 0.0, num_bins), False),
        "AutoContrast": (None, False),
        "Equalize": (None, False),
    }
    if policy == "cifar10":  # AutoAugment has no Identity (an op not applied is one) but has Invert
        del space["Identity"]
        space["Invert"] = (None, False)
    return space


# ------------------------------------------------------------------------------------------------ the ops

def _fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """float32 a * b + c rounded once, as torchvision's `add_(x, alpha=...)` computes it (a fused multiply-add
    on AVX2/AVX-512 CPUs and on CUDA; unfused it differs in the last bit, which truncation to uint8 shows).
    In float64 a * b is exact, and with operands derived from uint8 values so is the sum, so one rounding to
    float32 gives the fused result."""
    return torch.addcmul(c.double(), a.double(), b.double()).to(torch.float32)


def _per_image(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _factors(magnitudes: Tensor) -> tuple[Tensor, Tensor]:
    """(ratio, 1 - ratio) as torchvision's float32 kernels receive them: ratio = 1.0 + magnitude and
    1.0 - ratio are Python double arithmetic, each then cast to float32."""
    ratio = 1.0 + magnitudes.double()
    return _per_image(ratio.to(torch.float32)), _per_image((1.0 - ratio).to(torch.float32))


def _blend(images: Tensor, other: Tensor, magnitudes: Tensor) -> Tensor:
    """torchvision's `_blend(image, other, 1 + magnitude)`: image * ratio + other * (1 - ratio), fused."""
    ratio, rest = _factors(magnitudes)
    return _fma(other, rest, images.mul(ratio)).clamp_(0, 255).to(torch.uint8)


def _grayscale(images: Tensor) -> Tensor:
    """torchvision's `_rgb_to_grayscale_image(..., preserve_dtype=False).floor_()` for uint8 RGB (fused adds)."""
    r, g, b = images.unbind(dim=-3)
    weight_g, weight_b = images.new_tensor(0.587, dtype=torch.float32), images.new_tensor(0.114, dtype=torch.float32)
    gray = _fma(b, weight_b, _fma(g, weight_g, r.mul(0.2989)))
    return gray.floor_().unsqueeze(-3)


def _brightness(images: Tensor, magnitudes: Tensor) -> Tensor:
    return images.mul(_factors(magnitudes)[0]).clamp_(0, 255).to(torch.uint8)


def _color(images: Tensor, magnitudes: Tensor) -> Tensor:
    return _blend(images, _grayscale(images), magnitudes)


def _contrast(images: Tensor, magnitudes: Tensor) -> Tensor:
    return _blend(images, _grayscale(images).mean(dim=(-3, -2, -1), keepdim=True), magnitudes)


def _sharpness(images: Tensor, magnitudes: Tensor) -> Tensor:
    """torchvision's adjust_sharpness: blend the interior with a rounded 3x3 smoothing, borders kept."""
    if images.shape[-1] <= 2 or images.shape[-2] <= 2:
        return images.clone()
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]], device=images.device).expand(3, 1, 3, 3)
    output = images.to(torch.float32)
    blurred = F.conv2d(output, kernel, groups=3).round_()
    view = output[..., 1:-1, 1:-1]
    view.copy_(_fma(blurred.sub_(view), _factors(magnitudes)[1], view))
    return output.clamp_(0, 255).to(torch.uint8)


def _posterize(images: Tensor, magnitudes: Tensor) -> Tensor:
    """Keep the top int(magnitude) bits of every channel value."""
    bits = magnitudes.trunc().to(torch.int64)
    mask = (256 - torch.pow(2, 8 - bits)).to(torch.uint8)
    return images & _per_image(mask)


def _solarize(images: Tensor, magnitudes: Tensor) -> Tensor:
    """Invert values >= 255 * magnitude; the threshold and values compare as float32, as in torchvision."""
    threshold = _per_image((255.0 * magnitudes.double()).to(torch.float32))
    return torch.where(images.to(torch.float32) >= threshold, images.bitwise_not(), images)


def _autocontrast(images: Tensor, magnitudes: Tensor) -> Tensor:
    """Stretch each channel of each image to [0, 255] (torchvision's autocontrast_image, batched as it is)."""
    float_images = images.to(torch.float32)
    minimum = float_images.amin(dim=(-2, -1), keepdim=True)
    maximum = float_images.amax(dim=(-2, -1), keepdim=True)
    constant = maximum == minimum  # left as is (torchvision's masked assignments, without a device sync)
    inv_scale = torch.where(constant, 1.0, maximum.sub(minimum).mul_(1.0 / 255.0))
    minimum = torch.where(constant, 0.0, minimum)
    return float_images.sub_(minimum).div_(inv_scale).clamp_(0, 255).to(torch.uint8)


def _equalize(images: Tensor, magnitudes: Tensor) -> Tensor:
    """Histogram equalisation per image and channel with PIL's LUT, as torchvision's equalize_image."""
    flat = images.flatten(start_dim=-2).to(torch.long)
    hist = flat.new_zeros(images.shape[:-2] + (256,), dtype=torch.int32)
    hist.scatter_add_(dim=-1, index=flat, src=hist.new_ones(1).expand_as(flat))
    cum_hist = hist.cumsum(dim=-1)
    last = cum_hist.argmax(dim=-1, keepdim=True)  # the image's largest value
    step = (flat.shape[-1] - hist.gather(dim=-1, index=last)).div_(255, rounding_mode="floor")
    valid = step.ne(0).unsqueeze_(-1)
    lut = cum_hist[..., :-1].add_(step // 2).div_(step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    lut = torch.cat([lut.new_zeros(lut.shape[:-1] + (1,)), lut], dim=-1).to(torch.uint8)
    equalized = lut.gather(dim=-1, index=flat).view_as(images)
    return torch.where(valid, equalized, images)


def _invert(images: Tensor, magnitudes: Tensor) -> Tensor:
    return images.bitwise_not()


def _identity(images: Tensor, magnitudes: Tensor) -> Tensor:
    return images.clone()


# ------------------------------------------------------------------------------------------- geometric ops

def _inverse_affine(angle: float, shear: tuple[float, float], translate: tuple[float, float],
                    center: tuple[float, float]) -> list[float]:
    """torchvision's `_get_inverse_affine_matrix` (scale 1): the same Python math calls in the same order. The
    device's own trig (SLEEF on CPU, libdevice on CUDA) differs from libm in the last double bits, and some
    table magnitudes land next to a float32 rounding tie (ShearX 0.28 on a 24x40 image moved 14 pixels)."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    (cx, cy), (tx, ty) = center, translate
    cos_sy, tan_sx, rot_minus_sy = math.cos(sy), math.tan(sx), rot - sy
    cx_plus_tx, cy_plus_ty = cx + tx, cy + ty
    a = math.cos(rot_minus_sy) / cos_sy
    b = -(a * tan_sx + math.sin(rot))
    c = math.sin(rot_minus_sy) / cos_sy
    d = math.cos(rot) - c * tan_sx
    matrix = [d, -b, 0.0, -c, a, 0.0]
    matrix[2] += cx - matrix[0] * cx_plus_tx - matrix[1] * cy_plus_ty
    matrix[5] += cy - matrix[3] * cx_plus_tx - matrix[4] * cy_plus_ty
    return matrix


def _per_value(magnitudes: Tensor, function: Callable[[float], list[float]]) -> Tensor:
    """function(magnitude) of every image as float32 (torchvision's `torch.tensor(matrix, dtype=float32)`),
    evaluated on the host once per distinct magnitude (a table has at most 2 * bins of them): one host sync
    per geometric op, the price of libm's exact matrices."""
    values, inverse = torch.unique(magnitudes, return_inverse=True)
    rows = [function(value) for value in values.tolist()]
    return torch.tensor(rows, dtype=torch.float32, device=magnitudes.device)[inverse]


def _warp(images: Tensor, matrices: Tensor) -> Tensor:
    """torchvision's `_affine_grid` + `_apply_grid_transform` (nearest, fill 0) with one float32 (2, 3) inverse
    matrix per image: the same float32 grid arithmetic, batched through bmm."""
    n, _, h, w = images.shape
    device = images.device
    base_grid = torch.empty(1, h, w, 3, dtype=torch.float32, device=device)
    base_grid[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=device))
    base_grid[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=device).unsqueeze_(-1))
    base_grid[..., 2].fill_(1)
    theta = matrices.view(n, 2, 3).transpose(1, 2).div(torch.tensor([0.5 * w, 0.5 * h], device=device))
    grid = base_grid.view(1, h * w, 3).expand(n, -1, -1).bmm(theta).view(n, h, w, 2)
    output = F.grid_sample(images.to(torch.float32), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return output.round_().to(torch.uint8)


def _shear(images: Tensor, magnitudes: Tensor, axis: int) -> Tensor:
    """Shear by `magnitude` (= tan of the shear angle) about the top-left corner, as AutoAugment's ShearX/Y."""
    h, w = images.shape[-2:]

    def matrix(magnitude: float) -> list[float]:
        degrees = math.degrees(math.atan(magnitude))
        return _inverse_affine(0.0, (degrees, 0.0) if axis == 0 else (0.0, degrees), (0.0, 0.0), (-w * 0.5, -h * 0.5))

    return _warp(images, _per_value(magnitudes, matrix))


def _translate(images: Tensor, magnitudes: Tensor, axis: int) -> Tensor:
    """Shift by int(magnitude) pixels (truncated toward zero, as torchvision's int())."""

    def matrix(magnitude: float) -> list[float]:
        pixels = float(int(magnitude))
        return _inverse_affine(0.0, (0.0, 0.0), (pixels, 0.0) if axis == 0 else (0.0, pixels), (0.0, 0.0))

    return _warp(images, _per_value(magnitudes, matrix))


def _rotate(images: Tensor, magnitudes: Tensor) -> Tensor:
    """Rotate counter-clockwise by `magnitude` degrees about the centre. torchvision's shortcuts (a copy at 0,
    rot90 at 180, and at 90/270 for square images) are left out: at those angles its matrices map pixel
    centres onto pixel centres, far from a nearest-neighbour tie, so the warp gives the same pixels."""

    def matrix(magnitude: float) -> list[float]:
        return _inverse_affine(-(magnitude % 360), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0))

    return _warp(images, _per_value(magnitudes, matrix))


_OP_FUNCTIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Identity": _identity,
    "ShearX": functools.partial(_shear, axis=0),
    "ShearY": functools.partial(_shear, axis=1),
    "TranslateX": functools.partial(_translate, axis=0),
    "TranslateY": functools.partial(_translate, axis=1),
    "Rotate": _rotate,
    "Brightness": _brightness,
    "Color": _color,
    "Contrast": _contrast,
    "Sharpness": _sharpness,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
    "Invert": _invert,
}


def _check_images(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a uint8 (B, 3, H, W) batch, got {images.dtype} {tuple(images.shape)}")


def apply_op(images: Tensor, op: str, magnitudes: Tensor) -> Tensor:
    """One named op on every image of a uint8 batch, image i with magnitude magnitudes[i] (float, signed where the
    op is signed), exactly as torchvision.transforms.v2.functional does it in AutoAugment's
    `_apply_image_or_video_transform` (nearest interpolation, fill 0). Returns a new tensor."""
    _check_images(images)
    if op not in _OP_FUNCTIONS:
        raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")
    if magnitudes.shape != images.shape[:1]:
        raise ValueError(f"magnitudes must have shape ({images.shape[0]},), got {tuple(magnitudes.shape)}")
    return _OP_FUNCTIONS[op](images, magnitudes.to(images.device))


def _apply_drawn(images: Tensor, op_index: Tensor, magnitudes: Tensor) -> Tensor:
    """Image i gets op OPS[op_index[i]]: images are grouped by op (one host sync for the group sizes), each
    group goes through its op in one batched call, and the results are put back in batch order."""
    counts = torch.bincount(op_index, minlength=len(OPS)).tolist()
    order = torch.argsort(op_index, stable=True)
    groups = images.index_select(0, order).split(counts)
    group_magnitudes = magnitudes.index_select(0, order).split(counts)
    outputs = [group if not counts[k] or OPS[k] == "Identity" else _OP_FUNCTIONS[OPS[k]](group, group_magnitudes[k])
               for k, group in enumerate(groups)]
    return torch.empty_like(images).index_copy_(0, order, torch.cat(outputs))


# ------------------------------------------------------------------------------------------- auto-augment

class AutoAugment:
    """Per-image auto-augmentation of uint8 (B, 3, H, W) batches, as torchvision's v2 TrivialAugmentWide /
    RandAugment / AutoAugment(CIFAR10 policy) would do image by image (nearest interpolation, fill 0)."""

    def __init__(self, policy: str, *, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if isinstance(num_ops, bool) or not isinstance(num_ops, int) or num_ops < 1:
            raise ValueError(f"num_ops must be an integer >= 1, got {num_ops!r}")
        if isinstance(num_magnitude_bins, bool) or not isinstance(num_magnitude_bins, int) or num_magnitude_bins < 2:
            raise ValueError(f"num_magnitude_bins must be an integer >= 2, got {num_magnitude_bins!r}")
        if isinstance(magnitude, bool) or not isinstance(magnitude, int) or not 0 <= magnitude < num_magnitude_bins:
            raise ValueError(f"magnitude must be an integer in [0, {num_magnitude_bins}), got {magnitude!r}")
        self.policy, self.num_ops, self.magnitude = policy, num_ops, magnitude
        self.num_bins = _CIFAR10_BINS if policy == "cifar10" else num_magnitude_bins
        self.slots = {"ta_wide": 1, "ra": num_ops, "cifar10": 2}[policy]  # ops applied in sequence per image
        self._tables: dict[tuple[int, int, torch.device], tuple[Tensor, Tensor]] = {}

    def _table(self, image_size: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor]:
        """(magnitudes (15, bins) float32, signed (15,) bool) indexed by OPS, cached per image size and device."""
        key = (int(image_size[0]), int(image_size[1]), device)
        if key not in self._tables:
            table = torch.zeros(len(OPS), self.num_bins)
            signed = torch.zeros(len(OPS), dtype=torch.bool)
            for op, (bins, is_signed) in augmentation_space(self.policy, self.num_bins, *key[:2]).items():
                if bins is not None:
                    table[OPS.index(op)] = bins.to(torch.float32)
                signed[OPS.index(op)] = is_signed
            self._tables[key] = (table.to(device), signed.to(device))
        return self._tables[key]

    def draw(self, batch_size: int, generator: torch.Generator, image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Each image's ops and signed magnitudes: (op index into OPS (B, slots) int64, magnitude (B, slots)
        float32), on the generator's device. An AutoAugment op skipped by its probability comes out as Identity
        with magnitude 0. The numbers drawn depend only on batch_size, so the generator's stream stays aligned."""
        device = generator.device
        table, signed = self._table(image_size, device)
        shape = (batch_size, self.slots)
        if self.policy == "cifar10":
            ops, bins, probabilities = _cifar10_policy_tensors(device)
            choice = torch.randint(len(CIFAR10_POLICY), (batch_size,), generator=generator, device=device)
            applied = torch.rand(shape, generator=generator, device=device) <= probabilities[choice]
            op_index, bin_index = torch.where(applied, ops[choice], 0), bins[choice]
        else:
            op_index = torch.randint(len(_RANDOM_OPS), shape, generator=generator, device=device)
            bin_index = (torch.randint(self.num_bins, shape, generator=generator, device=device)
                         if self.policy == "ta_wide" else torch.full(shape, self.magnitude, device=device))
        negative = signed[op_index] & (torch.rand(shape, generator=generator, device=device) <= 0.5)
        magnitudes = table[op_index, bin_index]
        return op_index, torch.where(negative, -magnitudes, magnitudes)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """uint8 batch in, augmented uint8 batch out (a new tensor); the generator must be on images' device."""
        _check_images(images)
        if generator.device != images.device:
            raise ValueError(f"generator is on {generator.device} but images are on {images.device}")
        op_index, magnitudes = self.draw(images.shape[0], generator, (images.shape[-2], images.shape[-1]))
        for slot in range(self.slots):
            images = _apply_drawn(images, op_index[:, slot], magnitudes[:, slot])
        return images


@functools.lru_cache(maxsize=None)
def _cifar10_policy_tensors(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """CIFAR10_POLICY as (op index (25, 2), bin (25, 2), probability (25, 2) float32) on `device`."""
    ops = [[OPS.index(op) for op, _, _ in sub] for sub in CIFAR10_POLICY]
    bins = [[b or 0 for _, _, b in sub] for sub in CIFAR10_POLICY]
    probabilities = [[p for _, p, _ in sub] for sub in CIFAR10_POLICY]
    return (torch.tensor(ops, device=device), torch.tensor(bins, device=device),
            torch.tensor(probabilities, dtype=torch.float32, device=device))


# ------------------------------------------------------------------------------------------- random erasing

def random_erase(images: Tensor, p: float, generator: torch.Generator, *, scale: tuple[float, float] = (0.02, 0.33),
                 ratio: tuple[float, float] = (0.3, 3.3), value: float = 0.0) -> Tensor:
    """torchvision's RandomErasing per image on a FLOAT (already normalised) batch: with probability p, a box of
    area fraction ~ U(scale) and log-uniform aspect ratio in `ratio` (up to 10 tries to fit, else no erase) is
    set to `value`. All 10 tries are drawn for every image (the first that fits is used) so that the count of
    numbers drawn depends only on the batch size."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if not 0.0 <= scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"scale must be (min, max) within [0, 1], got {scale}")
    if not 0.0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must be (min, max) with 0 < min, got {ratio}")
    if not images.is_floating_point() or images.ndim != 4:
        raise ValueError(f"images must be a float (B, C, H, W) batch, got {images.dtype} {tuple(images.shape)}")
    b, _, h, w = images.shape
    draw = functools.partial(torch.rand, generator=generator, device=images.device, dtype=torch.float64)
    erase = draw(b) < p
    area = h * w * (scale[0] + (scale[1] - scale[0]) * draw(b, 10))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draw(b, 10))
    box_h = torch.sqrt(area * aspect).round_()
    box_w = torch.sqrt(area / aspect).round_()
    fits = (box_h < h) & (box_w < w)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first try that fits
    box_h, box_w = box_h.gather(1, first).squeeze(1), box_w.gather(1, first).squeeze(1)
    position = draw(b, 2)
    top = (position[:, 0] * (h - box_h + 1)).floor_()
    left = (position[:, 1] * (w - box_w + 1)).floor_()
    rows = torch.arange(h, device=images.device, dtype=torch.float64)
    cols = torch.arange(w, device=images.device, dtype=torch.float64)
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
    mask = in_rows[:, :, None] & in_cols[:, None, :] & (erase & fits.any(dim=1))[:, None, None]
    return images.masked_fill(mask[:, None], value)


# ------------------------------------------------------------------------------------------- MixUp / CutMix

@dataclass(frozen=True)
class BatchDraw:
    """One training step's MixUp/CutMix choice: which of the two, the (CutMix: box-corrected) lam, and CutMix's
    box (x1, y1, x2, y2) in pixels, None for MixUp."""

    use_cutmix: bool
    lam: float
    box: tuple[int, int, int, int] | None


def _check_alphas(mixup_alpha: float, cutmix_alpha: float) -> None:
    for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if not alpha >= 0.0 or math.isinf(alpha):
            raise ValueError(f"{name} must be a finite number >= 0, got {alpha}")


def _cutmix_box(lam: float, r_x: int, r_y: int, height: int, width: int) -> tuple[tuple[int, int, int, int], float]:
    """torchvision's CutMix box around centre (r_x, r_y) for Beta draw lam, and lam corrected to the box's area."""
    r = 0.5 * math.sqrt(1.0 - lam)
    r_w_half, r_h_half = int(r * width), int(r * height)
    x1, y1 = max(r_x - r_w_half, 0), max(r_y - r_h_half, 0)
    x2, y2 = min(r_x + r_w_half, width), min(r_y + r_h_half, height)
    return (x1, y1, x2, y2), float(1.0 - (x2 - x1) * (y2 - y1) / (width * height))


def draw_mix(seed_keys: tuple[int, ...], shape: tuple[int, int], mixup_alpha: float,
             cutmix_alpha: float) -> BatchDraw | None:
    """The MixUp/CutMix draw of one step, a pure function of its arguments (keys such as (seed, epoch, rank,
    step)), so resuming needs no saved state. None when both alphas are 0. As torchvision's reference recipe:
    with both alphas > 0 each is picked with probability 0.5; lam ~ Beta(alpha, alpha) of the one picked."""
    _check_alphas(mixup_alpha, cutmix_alpha)
    if not seed_keys or not all(isinstance(k, int) for k in seed_keys):
        raise ValueError(f"seed_keys must be a non-empty tuple of ints, got {seed_keys!r}")
    height, width = (int(s) for s in shape)
    if height < 1 or width < 1:
        raise ValueError(f"shape must be a positive (height, width), got {tuple(shape)}")
    if mixup_alpha == 0.0 and cutmix_alpha == 0.0:
        return None
    # A str seed is hashed with SHA-512 by random.Random: the same keys give the same stream in every process.
    rng = random.Random("draw_mix:" + ",".join(str(k) for k in seed_keys))
    use_cutmix = cutmix_alpha > 0.0 and (mixup_alpha == 0.0 or rng.random() < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = rng.betavariate(alpha, alpha)
    if not use_cutmix:
        return BatchDraw(False, lam, None)
    r_x, r_y = rng.randrange(width), rng.randrange(height)
    box, lam = _cutmix_box(lam, r_x, r_y, height, width)
    return BatchDraw(True, lam, box)


def _check_draw(draw: BatchDraw | None, mixup_alpha: float, cutmix_alpha: float) -> None:
    """A draw made for other alphas (or none where one is due) would silently mix with the wrong recipe."""
    if draw is None:
        consistent = mixup_alpha == 0.0 and cutmix_alpha == 0.0
    elif draw.use_cutmix:
        consistent = cutmix_alpha > 0.0 and draw.box is not None
    else:
        consistent = mixup_alpha > 0.0 and draw.box is None
    if not consistent:
        raise ValueError(f"draw {draw} does not fit mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}")


def mix_batch(images: Tensor, labels: Tensor, num_classes: int, *, mixup_alpha: float, cutmix_alpha: float,
              label_smoothing: float, draw: BatchDraw | None) -> tuple[Tensor, Tensor]:
    """(mixed images, soft targets) for a float (B, C, H, W) batch and int labels (B,): each image is mixed with
    its neighbour images.roll(1, 0) as v2.MixUp / v2.CutMix do; targets are timm's label-smoothed one-hots
    mixed the same way. With draw None (both alphas 0) images come back as they are, targets only smoothed."""
    _check_alphas(mixup_alpha, cutmix_alpha)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not images.is_floating_point() or images.ndim != 4 or labels.shape != images.shape[:1]:
        raise ValueError(f"images must be a float (B, C, H, W) batch and labels (B,), got "
                         f"{images.dtype} {tuple(images.shape)} and {tuple(labels.shape)}")
    _check_draw(draw, mixup_alpha, cutmix_alpha)
    off = label_smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=images.device)
    targets.scatter_(1, labels.view(-1, 1).to(device=images.device, dtype=torch.int64), 1.0 - label_smoothing + off)
    if draw is None:
        return images, targets
    lam = draw.lam
    targets = targets.mul(lam).add_(targets.roll(1, 0).mul_(1.0 - lam))
    if draw.use_cutmix:
        x1, y1, x2, y2 = draw.box
        mixed = images.clone()
        mixed[..., y1:y2, x1:x2] = images.roll(1, 0)[..., y1:y2, x1:x2]
    else:
        mixed = images.roll(1, 0).mul_(1.0 - lam).add_(images.mul(lam))
    return mixed, targets
