"""The training pipeline of augment.DeviceTransform with the recipes' options, in torchvision's reference order and
drawn from the run's generators; MixUp/CutMix of the batch; test-time augmentation."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from upanets_lab.data import augment_ops
from upanets_lab.data.augment import DeviceTransform, Mixing, normalize, random_crop_flip, tta_logits
from upanets_lab.data.loading import mixed_seed

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def batch(n: int = 16, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def epoch_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(mixed_seed(seed, epoch, rank))


def test_recipe_pipeline_is_crop_flip_then_auto_augment_normalise_and_erase_in_that_order():
    """One generator, drawn in torchvision's order: crop offsets and flips, the auto-augmentation's ops, then the
    erased boxes (on normalised values, erased to 0)."""
    images = batch()
    policy = augment_ops.AutoAugment("ta_wide")
    transform = DeviceTransform(MEAN, STD, device="cpu", pad=2, flip=True, seed=5, auto_augment=policy,
                                random_erase=0.5)
    transform.set_epoch(3)
    generator = epoch_generator(5, 3)
    expected = random_crop_flip(images, 2, generator, flip=True)
    expected = policy(expected, generator)
    expected = augment_ops.random_erase(normalize(expected, MEAN, STD), 0.5, generator)
    torch.testing.assert_close(transform(images), expected, rtol=0, atol=0)
    assert (expected == 0).any()  # something was erased, and auto-augmentation changed pixels
    assert not torch.equal(expected, normalize(random_crop_flip(images, 2, epoch_generator(5, 3)), MEAN, STD))


def test_alternating_flips_flip_exactly_what_the_previous_epoch_did_not():
    """airbench's flips: a seeded first choice per image of the set, then every epoch the opposite of the one
    before, whichever batch, order or process an image comes in."""
    n = 40
    images = batch(n, 8)
    transform = DeviceTransform(MEAN, STD, device="cpu", pad=0, flip=True, seed=2, alternating_flip=n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    flips = []
    for epoch in range(3):
        transform.set_epoch(epoch)
        out = transform(images[order], order)
        plain = normalize(images[order], MEAN, STD)
        flipped = (out == plain.flip(3)).all((1, 2, 3)) & ~(out == plain).all((1, 2, 3))
        assert ((out == plain).all((1, 2, 3)) | flipped).all()
        flips.append(torch.zeros(n, dtype=torch.bool).index_put((order,), flipped))
    assert torch.equal(flips[1], ~flips[0]) and torch.equal(flips[2], flips[0])
    assert 0.2 < flips[0].float().mean() < 0.8
    other = DeviceTransform(MEAN, STD, device="cpu", seed=2, flip=True, alternating_flip=n, rank=1)
    assert torch.equal(other.first_flips, transform.first_flips)  # every process flips an image alike
    with pytest.raises(ValueError, match="indices"):
        transform(images)


def test_alternating_flips_keep_the_random_crops():
    images = batch(8, 8)
    indices = torch.arange(8)
    transform = DeviceTransform(MEAN, STD, device="cpu", pad=2, flip=True, seed=4, alternating_flip=8)
    transform.set_epoch(0)
    crops = random_crop_flip(images, 2, epoch_generator(4, 0), flip=False)
    flipped = transform.first_flips
    expected = torch.where(flipped[:, None, None, None], crops.flip(3), crops)
    torch.testing.assert_close(transform(images, indices), normalize(expected, MEAN, STD), rtol=0, atol=0)


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mix_draws_per_step_and_counts_the_dominant_label(mixup, cutmix):
    transform = DeviceTransform(MEAN, STD, device="cpu", seed=9, rank=1, mixing=Mixing(mixup, cutmix, 10))
    transform.set_epoch(2)
    inputs = normalize(batch(6), MEAN, STD)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    for step in range(4):
        mixed, targets, hits_of = transform.mix(inputs, labels, step)
        draw = augment_ops.draw_mix((9, 2, 1, step), (12, 12), mixup, cutmix)
        expected, soft = augment_ops.mix_batch(inputs, labels, 10, mixup_alpha=mixup, cutmix_alpha=cutmix,
                                               label_smoothing=0.0, draw=draw)
        torch.testing.assert_close(mixed, expected, rtol=0, atol=0)
        torch.testing.assert_close(targets, soft, rtol=0, atol=0)
        assert torch.equal(hits_of, labels if draw.lam >= 0.5 else labels.roll(1, 0))
        assert torch.equal(targets.argmax(1), hits_of) or draw.lam == 0.5


def test_no_mixing_passes_the_batch_and_labels_through():
    transform = DeviceTransform(MEAN, STD, device="cpu")
    inputs, labels = torch.randn(4, 3, 8, 8), torch.arange(4)
    out, targets, hits_of = transform.mix(inputs, labels, 0)
    assert out is inputs and targets is labels and hits_of is labels


class Recorder(nn.Module):
    """A linear 'model' whose logits depend on position, so flips and shifts change them."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.randn(3 * 8 * 8, 5, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight


def test_tta_views_are_airbenchs():
    model, x = Recorder(), torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(tta_logits(model, x, "none"), model(x))
    mirror = lambda v: (model(v) + model(v.flip(3))) / 2  # noqa: E731
    torch.testing.assert_close(tta_logits(model, x, "flip"), mirror(x), rtol=1e-6, atol=1e-5)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    translated = (mirror(padded[..., :8, :8]) + mirror(padded[..., 2:, 2:])) / 2
    torch.testing.assert_close(tta_logits(model, x, "flip-translate"), mirror(x) / 2 + translated / 2,
                               rtol=1e-6, atol=1e-5)
    assert not torch.allclose(tta_logits(model, x, "flip-translate"), mirror(x))
    with pytest.raises(ValueError, match="unknown TTA mode"):
        tta_logits(model, x, "five-crop")
