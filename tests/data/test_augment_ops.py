"""Tests for augment_ops.py against torchvision's own per-image definitions (v2 auto-augment, RandomErasing,
MixUp/CutMix). Everything runs in-process on the CPU and takes a few seconds."""

from __future__ import annotations

import ast
import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import AutoAugmentPolicy

from upanets_lab.data import augment_ops as A
from upanets_lab.data.augment_ops import OPS, AutoAugment, BatchDraw, apply_op, draw_mix, mix_batch, random_erase

torch.set_num_threads(1)

SIZES = [(32, 32), (24, 40)]  # CIFAR's, and a non-square one whose half-sizes are not powers of two
TV_CLASSES = {
    "ta_wide": v2.TrivialAugmentWide,
    "ra": v2.RandAugment,
    "cifar10": lambda: v2.AutoAugment(AutoAugmentPolicy.CIFAR10),
}
TV_BINS = {"ta_wide": 31, "ra": 31, "cifar10": 10}  # AutoAugment always uses 10 bins
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
# Values off the tables: fast paths of rotate, shifts beyond the image, every posterize bit count, odd thresholds.
EXTRA_MAGNITUDES = {
    "Rotate": [90.0, -90.0, 180.0, -180.0, 270.0, 360.0, -360.0, 45.5, 1e-3, 200.25],
    "ShearX": [0.5, -0.75, 1.0, -1.0, 1e-4],
    "ShearY": [0.5, -0.75, 1.0, -1.0, 1e-4],
    "TranslateX": [0.999, -1.5, 31.9, -40.0, 3.0],
    "TranslateY": [0.999, -1.5, 31.9, -40.0, 3.0],
    "Posterize": [float(b) for b in range(9)],
    "Solarize": [0.0, 0.25, 0.5, 128 / 255, 1.0],
}


def make_images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Random uint8 images plus the cases with their own code paths: a constant image (autocontrast's and
    equalize's degenerate branch), a gray one (r = g = b), a low-contrast one and one with two values."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8, generator=g)
    images[0] = 77
    images[1] = torch.randint(0, 256, (1, height, width), dtype=torch.uint8, generator=g)
    images[2] = torch.randint(100, 111, (3, height, width), dtype=torch.uint8, generator=g)
    images[3] = torch.randint(0, 2, (3, height, width), dtype=torch.uint8, generator=g) * 200 + 20
    return images


def reference(images: torch.Tensor, op: str, magnitudes: list[float], policy: str = "ta_wide") -> torch.Tensor:
    """torchvision's own per-image op, called exactly as its forward calls it (the class's interpolation and
    fill; the default fill {"others": None} means zero padding)."""
    transform = TV_CLASSES[policy]()
    return torch.stack([
        transform._apply_image_or_video_transform(image, op, magnitude, interpolation=transform.interpolation,
                                                  fill=transform._fill)
        for image, magnitude in zip(images, magnitudes)])


def table_magnitudes(op: str, height: int, width: int) -> list[float]:
    """Every magnitude any of the three torchvision classes can give `op` at this size (both signs), plus extras."""
    values = {0.0}
    for policy, cls in TV_CLASSES.items():
        space = cls()._AUGMENTATION_SPACE
        if op in space:
            bins, signed = space[op][0](TV_BINS[policy], height, width), space[op][1]
            if bins is not None:
                values.update(float(v) for v in bins)
                values.update(-float(v) for v in bins if signed)
    return sorted(values | set(EXTRA_MAGNITUDES.get(op, [])))


# ------------------------------------------------------------------------------------- 1. ops, bit-exact

@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", OPS)
def test_apply_op_equals_torchvision_per_image(op, size):
    """Bit-exact for every op, size and magnitude, geometric ops included: the inverse affine matrices are
    computed with libm as torchvision does (device trig moved pixels at ShearX 0.28 on 24x40) and the grid with
    its float32 formula; colour blends emulate torchvision's fused multiply-adds. No tolerance needed."""
    images = make_images(8, *size)
    magnitudes = table_magnitudes(op, *size)
    for start in range(0, len(magnitudes), 8):  # 8 different magnitudes per batch, cycled over 8 images
        chunk = [magnitudes[(start + i) % len(magnitudes)] for i in range(8)]
        out = apply_op(images, op, torch.tensor(chunk, dtype=torch.float32))
        expected = reference(images, op, chunk)
        assert out.dtype == torch.uint8 and out.shape == images.shape
        differ = (out != expected).flatten(1).sum(1)
        assert differ.sum() == 0, f"{op} {size}: pixels differing per magnitude {dict(zip(chunk, differ.tolist()))}"


@pytest.mark.parametrize("size", [(31, 31), (17, 9), (64, 64), (1, 5)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_rotate_quarter_turns_equal_torchvision_shortcuts(size):
    """torchvision copies / rot90s at 0, 180 (and 90, 270 when square); the warp must give the same pixels."""
    images = make_images(8, 8, 8).repeat(1, 1, 8, 8)[..., :size[0], :size[1]].contiguous()
    angles = [0.0, 90.0, -90.0, 180.0, -180.0, 270.0, 360.0, 450.0]
    assert torch.equal(apply_op(images, "Rotate", torch.tensor(angles)), reference(images, "Rotate", angles))


def test_apply_op_does_not_modify_its_input_and_changes_images():
    images = make_images(8, 32, 32)
    before = images.clone()
    for op in OPS:
        out = apply_op(images, op, torch.full((8,), 0.5 if op not in GEOMETRIC else 10.0))
        assert out.data_ptr() != images.data_ptr()
        if op != "Identity":
            assert not torch.equal(out[4:], images[4:]), op
    assert torch.equal(images, before)


# ------------------------------------------------------------------------------ 2. tables and distributions

@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("policy", A.POLICIES)
def test_augmentation_space_equals_torchvision(policy, size):
    ours = A.augmentation_space(policy, TV_BINS[policy], *size)
    theirs = TV_CLASSES[policy]()._AUGMENTATION_SPACE
    assert list(ours) == list(theirs)  # same ops in the same order (the draw's uniform index follows it)
    for op, (fn, signed) in theirs.items():
        bins = fn(TV_BINS[policy], *size)
        assert ours[op][1] == signed, op
        if bins is None:
            assert ours[op][0] is None, op
        else:
            assert ours[op][0].dtype == bins.dtype and torch.equal(ours[op][0], bins), op


def test_cifar10_policy_equals_torchvision():
    tv = v2.AutoAugment(AutoAugmentPolicy.CIFAR10)
    assert list(A.CIFAR10_POLICY) == tv._get_policies(AutoAugmentPolicy.CIFAR10)


def within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """count ~ Binomial(n, p) within `sigmas` standard errors."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1e-9


def bin_tables(policy: str, size: tuple[int, int]) -> dict[str, list[float]]:
    space = TV_CLASSES[policy]()._AUGMENTATION_SPACE
    return {op: ([0.0] if fn(TV_BINS[policy], *size) is None else fn(TV_BINS[policy], *size).float().tolist())
            for op, (fn, _) in space.items()}


def check_signs(ops: torch.Tensor, magnitudes: torch.Tensor, policy: str) -> None:
    """Signed ops are negative about half the time (among nonzero magnitudes); unsigned ones never."""
    space = TV_CLASSES[policy]()._AUGMENTATION_SPACE
    names = [OPS[k] for k in ops.tolist()]
    signed = torch.tensor([name in space and space[name][1] for name in names])
    nonzero = magnitudes != 0
    negative = magnitudes < 0
    assert not (negative & ~signed).any()
    n = int((signed & nonzero).sum())
    assert n > 1000 and within(int((negative & signed).sum()), n, 0.5)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_trivial_augment_draw_distribution(size):
    n = 20000
    ops, magnitudes = AutoAugment("ta_wide").draw(n, torch.Generator().manual_seed(1), size)
    assert ops.shape == (n, 1) and magnitudes.shape == (n, 1) and magnitudes.dtype == torch.float32
    ops, magnitudes = ops[:, 0], magnitudes[:, 0]
    counts = Counter(ops.tolist())
    assert set(counts) == set(range(14))  # never Invert
    assert all(within(counts[k], n, 1 / 14) for k in range(14)), counts
    tables = bin_tables("ta_wide", size)
    bins = Counter()
    for k, m in zip(ops.tolist(), magnitudes.tolist()):
        assert abs(m) in tables[OPS[k]], (OPS[k], m)  # a table value exactly
        if OPS[k] == "Rotate":
            bins[tables["Rotate"].index(abs(m))] += 1
    rotations = sum(bins.values())
    assert all(within(bins[b], rotations, 1 / 31) for b in range(31)), bins
    check_signs(ops, magnitudes, "ta_wide")


@pytest.mark.parametrize("num_ops, magnitude", [(2, 9), (3, 30), (1, 0)])
def test_rand_augment_draw_distribution(num_ops, magnitude):
    n, size = 20000, (24, 40)
    ops, magnitudes = AutoAugment("ra", num_ops=num_ops, magnitude=magnitude).draw(
        n, torch.Generator().manual_seed(2), size)
    assert ops.shape == magnitudes.shape == (n, num_ops)
    tables = bin_tables("ra", size)
    for slot in range(num_ops):
        counts = Counter(ops[:, slot].tolist())
        assert set(counts) == set(range(14)) and all(within(counts[k], n, 1 / 14) for k in range(14)), counts
        for k in range(14):
            expected = tables[OPS[k]][magnitude] if len(tables[OPS[k]]) > 1 else 0.0
            assert set(magnitudes[ops[:, slot] == k, slot].abs().tolist()) == {expected}, OPS[k]
    if magnitude:
        check_signs(ops.flatten(), magnitudes.flatten(), "ra")
    assert (ops[:, 0] != ops[:, -1]).any() or num_ops == 1  # the slots are drawn independently


def test_cifar10_draw_follows_sub_policies():
    """The joint outcome (op, |magnitude|) of both slots has the probability that picking one of the 25
    sub-policies uniformly and applying each op with its probability gives (not applied -> Identity, 0)."""
    n, size = 20000, (32, 32)
    ops, magnitudes = AutoAugment("cifar10").draw(n, torch.Generator().manual_seed(3), size)
    assert ops.shape == magnitudes.shape == (n, 2)
    tables = bin_tables("cifar10", size)
    expected = Counter()
    for sub in v2.AutoAugment(AutoAugmentPolicy.CIFAR10)._get_policies(AutoAugmentPolicy.CIFAR10):
        outcomes = [[(("Identity", 0.0), 1 - p), ((op, tables[op][b] if b is not None else 0.0), p)]
                    for op, p, b in sub]
        for first, p1 in outcomes[0]:
            for second, p2 in outcomes[1]:
                expected[first + second] += p1 * p2 / 25
    observed = Counter(
        (OPS[o1], abs(m1), OPS[o2], abs(m2))
        for (o1, o2), (m1, m2) in zip(ops.tolist(), magnitudes.tolist()))
    assert set(observed) <= {key for key, p in expected.items() if p > 0}
    assert all(within(observed[key], n, p) for key, p in expected.items()), observed
    check_signs(ops.flatten(), magnitudes.flatten(), "cifar10")


# --------------------------------------------------------------------- 3. per image, and draw + apply agree

def test_identical_images_get_different_ops():
    images = make_images(8, 32, 32)[4:5].expand(64, -1, -1, -1).contiguous()
    out = AutoAugment("ta_wide")(images, torch.Generator().manual_seed(0))
    distinct = {bytes(image.numpy()) for image in out}
    assert len(distinct) > 20


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("policy, num_ops", [("ta_wide", 2), ("ra", 2), ("ra", 3), ("cifar10", 2)])
def test_call_is_draw_then_apply_op_per_image(policy, num_ops, size):
    """__call__ groups images by op and scatters them back: each image must come out as its own draw,
    applied alone, slot after slot; and the same draw applied by torchvision gives the same image."""
    augment = AutoAugment(policy, num_ops=num_ops)
    images = make_images(40, *size, seed=5)
    out = augment(images, torch.Generator().manual_seed(11))
    ops, magnitudes = augment.draw(40, torch.Generator().manual_seed(11), size)
    for i in range(40):
        image = images[i:i + 1]
        for slot in range(ops.shape[1]):
            image = apply_op(image, OPS[ops[i, slot]], magnitudes[i:i + 1, slot])
        assert torch.equal(out[i:i + 1], image), i
    for i in range(0, 40, 7):  # and torchvision agrees on the whole chain
        image = images[i:i + 1]
        for slot in range(ops.shape[1]):
            image = reference(image, OPS[ops[i, slot]], [float(magnitudes[i, slot])], policy)
        assert torch.equal(out[i:i + 1], image), i


# ------------------------------------------------------------------------------------- 4. determinism

def test_same_seed_same_output_and_no_global_rng_use():
    images = make_images(32, 32, 32)
    before_images = images.clone()
    torch_state, seed, py_state = torch.get_rng_state(), torch.initial_seed(), random.getstate()
    for policy in A.POLICIES:
        augment = AutoAugment(policy)
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        first, second = augment(images, g1), augment(images, g2)
        assert torch.equal(first, second), policy
        assert torch.equal(g1.get_state(), g2.get_state())
        assert not torch.equal(first, augment(images, torch.Generator().manual_seed(8))), policy
        # the numbers drawn depend on the batch shape only, not on the pixels
        g3 = torch.Generator().manual_seed(7)
        augment(make_images(32, 32, 32, seed=99), g3)
        assert torch.equal(g1.get_state(), g3.get_state()), policy
    floats = images.float()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(random_erase(floats, 0.5, g1), random_erase(floats, 0.5, g2))
    draw_mix((0, 1, 2, 3), (32, 32), 0.2, 1.0)
    assert torch.equal(torch.get_rng_state(), torch_state) and torch.initial_seed() == seed
    assert random.getstate() == py_state
    assert torch.equal(images, before_images)


def test_generator_on_another_device_is_refused():
    if not torch.cuda.is_available():
        pytest.skip("needs a second device")
    with pytest.raises(ValueError, match="generator"):
        AutoAugment("ta_wide")(make_images(4, 32, 32), torch.Generator(device="cuda"))


# ------------------------------------------------------------------------------------- 5. random erasing

def erased_boxes(images: torch.Tensor, out: torch.Tensor) -> list[tuple[int, int, int, int] | None]:
    """The (top, left, h, w) box of each image's zeros, asserting it is a full rectangle on every channel with
    the pixels outside it untouched (the inputs have no zeros)."""
    boxes = []
    for image, result in zip(images, out):
        zero = result == 0
        assert torch.equal(zero, zero[:1].expand_as(zero))
        assert torch.equal(result[~zero], image[~zero])
        if not zero.any():
            boxes.append(None)
            continue
        rows, cols = zero[0].any(1).nonzero().flatten(), zero[0].any(0).nonzero().flatten()
        top, left, h, w = int(rows[0]), int(cols[0]), len(rows), len(cols)
        assert int(rows[-1]) - top + 1 == h and int(cols[-1]) - left + 1 == w
        assert zero[0, top:top + h, left:left + w].all()
        boxes.append((top, left, h, w))
    return boxes


def test_random_erase_boxes_and_probability():
    n, height, width = 4000, 16, 20
    images = torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(0)) + 0.5
    out = random_erase(images, 0.4, torch.Generator().manual_seed(1))
    boxes = erased_boxes(images, out)
    erased = [box for box in boxes if box is not None]
    assert within(len(erased), n, 0.4)
    for top, left, h, w in erased:
        assert 0.02 * 0.6 <= h * w / (height * width) <= 0.33 * 1.4  # box sides are rounded
        assert 0.3 * 0.6 <= h / w <= 3.3 * 1.6 and h < height and w < width
    tops = Counter(top for top, _, _, _ in erased)
    assert tops[0] > 0 and any(top + h == height for top, _, h, _ in erased)  # positions reach both edges
    assert torch.equal(random_erase(images, 0.0, torch.Generator()), images)
    assert (random_erase(images[:5], 0.7, torch.Generator(), value=-2.5) == -2.5).any()


def test_random_erase_box_distribution_matches_torchvision():
    """Box heights and widths have the distribution of v2.RandomErasing.make_params for the same image size."""
    n, height, width = 3000, 16, 20
    images = torch.ones(n, 3, height, width)
    ours = [box for box in erased_boxes(images, random_erase(images, 1.0, torch.Generator().manual_seed(4)))
            if box is not None]
    torch.manual_seed(0)
    eraser = v2.RandomErasing(p=1.0)
    theirs = [eraser.make_params([torch.empty(3, height, width)]) for _ in range(n)]
    theirs = [(p["h"], p["w"]) for p in theirs if p["v"] is not None]
    assert within(len(ours), n, len(theirs) / n, sigmas=6)
    for index in (0, 1):  # heights, then widths: mean and quartiles
        a = sorted(box[2 + index] for box in ours)
        b = sorted(box[index] for box in theirs)
        assert abs(sum(a) / len(a) - sum(b) / len(b)) < 0.25
        for q in (0.25, 0.5, 0.75):
            assert abs(a[int(q * len(a))] - b[int(q * len(b))]) <= 1


def test_random_erase_without_a_fitting_box_erases_nothing():
    images = torch.rand(50, 3, 16, 16) + 0.5
    out = random_erase(images, 1.0, torch.Generator(), scale=(0.9, 1.0), ratio=(3.0, 3.3))
    assert torch.equal(out, images)  # h = sqrt(area * ratio) > 16 on every try, as torchvision gives up


# ------------------------------------------------------------------------------------- 6. MixUp / CutMix

def batch(n: int = 16, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 12, 18, generator=g), torch.randint(0, num_classes, (n,), generator=g)


def smoothed(labels: torch.Tensor, num_classes: int, smoothing: float, lam: float) -> torch.Tensor:
    """timm's mixup_target, with the partner being roll(1, 0) as in torchvision's MixUp/CutMix."""
    off = smoothing / num_classes
    y1 = torch.full((len(labels), num_classes), off).scatter_(1, labels[:, None], 1.0 - smoothing + off)
    return y1 * lam + y1.roll(1, 0) * (1.0 - lam)


def test_mixup_equals_formula_and_torchvision():
    images, labels = batch()
    draw = draw_mix((0, 0, 0, 5), images.shape[-2:], 0.4, 0.0)
    assert draw is not None and not draw.use_cutmix and draw.box is None and 0.0 < draw.lam < 1.0
    mixed, targets = mix_batch(images, labels, 10, mixup_alpha=0.4, cutmix_alpha=0.0, label_smoothing=0.1,
                               draw=draw)
    assert torch.equal(mixed, draw.lam * images + (1 - draw.lam) * images.roll(1, 0))
    assert torch.equal(targets, smoothed(labels, 10, 0.1, draw.lam))
    assert torch.allclose(targets.sum(1), torch.ones(len(labels)))
    mixup = v2.MixUp(alpha=0.4, num_classes=10)
    mixup.make_params = lambda flat_inputs: {"lam": draw.lam}
    tv_images, tv_targets = mixup(images, labels)
    _, plain_targets = mix_batch(images, labels, 10, mixup_alpha=0.4, cutmix_alpha=0.0, label_smoothing=0.0,
                                 draw=draw)
    assert torch.equal(mixed, tv_images) and torch.allclose(plain_targets, tv_targets, rtol=0, atol=1e-7)


def test_cutmix_pastes_the_box_and_corrects_lam():
    images, labels = batch()
    h, w = images.shape[-2:]
    seen_partial = False
    for step in range(40):
        draw = draw_mix((1, 2, 0, step), (h, w), 0.0, 1.0)
        assert draw.use_cutmix
        x1, y1, x2, y2 = draw.box
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
        assert draw.lam == 1.0 - (x2 - x1) * (y2 - y1) / (h * w)  # corrected, not the Beta draw
        mixed, targets = mix_batch(images, labels, 10, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.2,
                                   draw=draw)
        inside = torch.zeros(h, w, dtype=torch.bool)
        inside[y1:y2, x1:x2] = True
        assert torch.equal(mixed[..., inside], images.roll(1, 0)[..., inside])
        assert torch.equal(mixed[..., ~inside], images[..., ~inside])
        assert torch.equal(targets, smoothed(labels, 10, 0.2, draw.lam))
        cutmix = v2.CutMix(alpha=1.0, num_classes=10)
        cutmix.make_params = lambda flat_inputs: {"box": draw.box, "lam_adjusted": draw.lam}
        tv_images, tv_targets = cutmix(images, labels)
        assert torch.equal(mixed, tv_images)
        seen_partial |= 0 < x1 or x2 < w
    assert seen_partial


def test_cutmix_box_formula_equals_torchvision(monkeypatch):
    """For the same Beta draw and centre, our box and corrected lam are v2.CutMix.make_params' own."""
    cutmix = v2.CutMix(alpha=1.0, num_classes=10)
    rng = random.Random(0)
    for _ in range(300):
        h, w = rng.choice([(32, 32), (12, 18), (7, 3)])
        lam, r_x, r_y = rng.choice([0.0, 1.0, rng.random()]), rng.randrange(w), rng.randrange(h)
        centre = iter([torch.tensor([r_x]), torch.tensor([r_y])])
        monkeypatch.setattr(torch, "randint", lambda *args, **kwargs: next(centre))
        monkeypatch.setattr(cutmix, "_dist", type("Fixed", (), {"sample": lambda self, shape: torch.tensor(lam)})())
        params = cutmix.make_params([torch.empty(2, 3, h, w)])
        monkeypatch.undo()
        assert A._cutmix_box(lam, r_x, r_y, h, w) == (params["box"], params["lam_adjusted"])


def test_draw_mix_is_pure_and_picks_each_half_the_time():
    assert draw_mix((0, 0, 0, 0), (32, 32), 0.0, 0.0) is None
    first = draw_mix((3, 1, 0, 9), (32, 32), 0.2, 1.0)
    assert first == draw_mix((3, 1, 0, 9), (32, 32), 0.2, 1.0)
    draws = [draw_mix((3, 1, 0, step), (32, 32), 0.2, 1.0) for step in range(4000)]
    cutmix = sum(d.use_cutmix for d in draws)
    assert within(cutmix, len(draws), 0.5)
    mixup_lams = [d.lam for d in draws if not d.use_cutmix]  # Beta(0.2, 0.2): mean 1/2, variance 1/5.6
    assert len(set(mixup_lams)) == len(mixup_lams)  # another step key, another draw
    assert len({d.box for d in draws if d.use_cutmix}) > 500
    mean = sum(mixup_lams) / len(mixup_lams)
    variance = sum((x - mean) ** 2 for x in mixup_lams) / len(mixup_lams)
    assert abs(mean - 0.5) < 0.03 and abs(variance - 1 / 5.6) < 0.02
    assert draw_mix((3, 1, 1, 9), (32, 32), 0.2, 1.0) != first  # another rank


def test_mix_batch_without_a_draw_only_smooths():
    images, labels = batch()
    mixed, targets = mix_batch(images, labels, 10, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1,
                               draw=None)
    assert mixed is images and torch.equal(targets, smoothed(labels, 10, 0.1, 1.0))
    with pytest.raises(ValueError, match="draw"):
        mix_batch(images, labels, 10, mixup_alpha=0.2, cutmix_alpha=0.0, label_smoothing=0.0, draw=None)
    with pytest.raises(ValueError, match="draw"):
        mix_batch(images, labels, 10, mixup_alpha=0.2, cutmix_alpha=0.0, label_smoothing=0.0,
                  draw=BatchDraw(True, 0.5, (0, 0, 4, 4)))


# ------------------------------------------------------------------------------------- 7. bad arguments

@pytest.mark.parametrize("call, fragment", [
    (lambda: AutoAugment("bogus"), "policy"),
    (lambda: AutoAugment("ra", num_ops=0), "num_ops"),
    (lambda: AutoAugment("ra", magnitude=31), "magnitude"),
    (lambda: AutoAugment("ra", magnitude=-1), "magnitude"),
    (lambda: AutoAugment("ra", magnitude=5, num_magnitude_bins=5), "magnitude"),
    (lambda: apply_op(make_images(4, 8, 8), "Blur", torch.zeros(4)), "op"),
    (lambda: apply_op(make_images(4, 8, 8).float(), "Invert", torch.zeros(4)), "uint8"),
    (lambda: random_erase(torch.zeros(2, 3, 8, 8), -0.1, torch.Generator()), "p must"),
    (lambda: random_erase(torch.zeros(2, 3, 8, 8), 1.5, torch.Generator()), "p must"),
    (lambda: draw_mix((0,), (8, 8), -0.2, 0.0), "mixup_alpha"),
    (lambda: draw_mix((0,), (8, 8), 0.0, -1.0), "cutmix_alpha"),
    (lambda: draw_mix((0,), (8, 8), float("nan"), 0.0), "mixup_alpha"),
    (lambda: mix_batch(*batch(), 10, mixup_alpha=-1.0, cutmix_alpha=0.0, label_smoothing=0.0, draw=None),
     "mixup_alpha"),
    (lambda: mix_batch(*batch(), 10, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=1.0, draw=None),
     "label_smoothing"),
])
def test_invalid_arguments_name_the_argument(call, fragment):
    with pytest.raises(ValueError, match=fragment):
        call()


def test_module_imports_only_torch_math_and_the_standard_library():
    tree = ast.parse(Path(A.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "collections", "dataclasses", "functools", "math", "random", "torch"}
