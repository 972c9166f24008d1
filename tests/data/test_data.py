"""Tests for the data set sources, decoding, loading and augmentation on tiny data sets in the real on-disk formats
(see sampledata.py)."""

from __future__ import annotations

import contextlib
import os
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from upanets_lab.data import augment, decoding, sources
from upanets_lab.data.augment import DeviceTransform
from upanets_lab.data.decoding import ImageDataset, StreamingDataset
from upanets_lab.data.loading import DeviceLoader
from upanets_lab.data.samples import (
    make_cifar10,
    make_cifar100,
    make_image_folder,
    make_tiny_imagenet,
    write_cifar_pickle,
)
from upanets_lab.data.sources import load_data
from upanets_lab.errors import DataError


@contextlib.contextmanager
def data_error(*fragments):
    """Expect a one-line DataError that mentions every fragment (paths, flags)."""
    with pytest.raises(DataError) as info:
        yield
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, message


# ---------------------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("py2_str_keys", [True, False])
def test_cifar10_loads_exact_pixels_and_labels(tmp_path, py2_str_keys):
    fake = make_cifar10(tmp_path, n_train=7, n_test=3, py2_str_keys=py2_str_keys)  # 7 over 5 files: a subset
    bundle = load_data("cifar10", tmp_path)
    assert bundle.train.images.dtype == torch.uint8 and bundle.train.labels.dtype == torch.int64
    assert bundle.train.images.is_contiguous()
    np.testing.assert_array_equal(bundle.train.images.numpy(), fake.train_images)
    np.testing.assert_array_equal(bundle.train.labels.numpy(), fake.train_labels)
    np.testing.assert_array_equal(bundle.test.images.numpy(), fake.test_images)
    np.testing.assert_array_equal(bundle.test.labels.numpy(), fake.test_labels)
    assert bundle.classes == fake.classes
    assert (bundle.num_classes, bundle.img_size, bundle.pad) == (10, 32, 4)
    assert bundle.mean == (0.4914, 0.4822, 0.4465) and bundle.std == (0.2470, 0.2435, 0.2616)


@pytest.mark.parametrize("py2_str_keys", [True, False])
def test_cifar100_uses_fine_labels(tmp_path, py2_str_keys):
    fake = make_cifar100(tmp_path, n_train=6, n_test=4, py2_str_keys=py2_str_keys)
    bundle = load_data("cifar_100", tmp_path)  # the original repo's name works too
    np.testing.assert_array_equal(bundle.train.images.numpy(), fake.train_images)
    np.testing.assert_array_equal(bundle.train.labels.numpy(), fake.train_labels)
    np.testing.assert_array_equal(bundle.test.labels.numpy(), fake.test_labels)
    assert bundle.num_classes == 100 and bundle.classes == fake.classes
    assert bundle.mean == (0.5071, 0.4865, 0.4409) and bundle.std == (0.2673, 0.2564, 0.2762)


def test_cifar_missing_dir_names_path_and_download_flag(tmp_path):
    with data_error(tmp_path / "cifar-10-batches-py", "--download"):
        load_data("cifar10", tmp_path)


def test_cifar_download_uses_official_archive(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, md5=None):
        calls.append((url, md5))
        make_cifar100(download_root, n_train=3, n_test=2)

    monkeypatch.setattr(sources, "download_and_extract_archive", fake_download)
    assert len(load_data("cifar100", tmp_path, download=True).train) == 3
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85")]


def test_cifar_download_failure_is_one_line(tmp_path, monkeypatch):
    def offline(url, download_root, md5=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution\nmore")

    monkeypatch.setattr(sources, "download_and_extract_archive", offline)
    with data_error("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "name resolution"):
        load_data("cifar10", tmp_path, download=True)


def test_a_missing_set_points_at_the_offline_demo(tmp_path, monkeypatch):
    """Without a network (or with --no-download) the message says what trains offline."""
    monkeypatch.setattr(sources, "download_and_extract_archive", lambda *args, **kwargs: 1 / 0)
    with data_error("--dataset synthetic"):
        load_data("cifar10", tmp_path, download=True)
    with data_error("--dataset synthetic"):
        load_data("tiny-imagenet", tmp_path, download=False)


def test_cifar_missing_file_is_named(tmp_path):
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with data_error(tmp_path / "cifar-10-batches-py" / "data_batch_4", "--download"):
        load_data("cifar10", tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not_a_dict"])
def test_cifar_corrupt_file_is_named(tmp_path, damage):
    make_cifar10(tmp_path, n_train=10)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[: len(raw) // 2], "garbage": os.urandom(500),
                      "not_a_dict": pickle.dumps([1, 2, 3])}[damage])
    with data_error(path):
        load_data("cifar10", tmp_path)


@pytest.mark.parametrize("py2_str_keys", [True, False])
@pytest.mark.parametrize("batch, fragment", [
    ({"data": np.zeros((2, 3000), np.uint8), "labels": [0, 1]}, "(2, 3000)"),
    ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "float32"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1, 2]}, "2 images"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, "[0, 10]"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [-1, 3]}, "[-1, 3]"),
    ({"data": np.zeros((2, 3072), np.uint8)}, "'labels'"),
])
def test_cifar_malformed_batch_is_named(tmp_path, py2_str_keys, batch, fragment):
    make_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_cifar_pickle(path, batch, py2_str_keys)
    with data_error(path, fragment):
        load_data("cifar10", tmp_path)


def test_cifar_rejects_other_image_sizes_and_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="32"):
        load_data("cifar10", tmp_path, img_size=64)
    with pytest.raises(ValueError, match="imagenet"):
        load_data("imagenet", tmp_path)


# ------------------------------------------------------------------------------------ Tiny ImageNet


def test_tiny_imagenet_labels_pixels_and_stats(tmp_path):
    fake = make_tiny_imagenet(tmp_path, n_classes=3, per_class=3, n_val=13)
    # The annotations list the files in neither name nor number order: a loader must follow them, not sort.
    listed = [line.split("\t")[0] for line in
              (tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt").read_text().splitlines()]
    assert listed != sorted(listed) and listed != sorted(listed, key=lambda name: int(name[4:-5]))
    bundle = load_data("tiny_imgnet", tmp_path, workers=0)
    assert isinstance(bundle.train, ImageDataset)
    assert bundle.classes == fake.classes == sorted(fake.classes)
    np.testing.assert_array_equal(bundle.train.images.numpy(), fake.train_images)  # grayscale ones as RGB
    np.testing.assert_array_equal(bundle.train.labels.numpy(), fake.train_labels)
    np.testing.assert_array_equal(bundle.test.images.numpy(), fake.test_images)
    np.testing.assert_array_equal(bundle.test.labels.numpy(), fake.test_labels)  # from val_annotations.txt
    assert bundle.test.labels.unique().numel() > 1
    assert (bundle.num_classes, bundle.img_size, bundle.pad) == (3, 64, 8)
    assert bundle.mean == (0.485, 0.456, 0.406) and bundle.std == (0.229, 0.224, 0.225)


def test_tiny_imagenet_resizes_to_img_size(tmp_path):
    make_tiny_imagenet(tmp_path, n_classes=2, per_class=1, n_val=2)
    bundle = load_data("tiny-imagenet", tmp_path, img_size=32, workers=0)
    assert bundle.train.images.shape == (2, 3, 32, 32) and bundle.pad == 4
    assert (tmp_path / "tiny-imagenet-200" / ".upanets_cache_train_32.pt").is_file()


def test_tiny_imagenet_bad_annotation_is_named(tmp_path):
    make_tiny_imagenet(tmp_path, n_classes=2, per_class=1, n_val=2)
    annotations = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    with annotations.open("a") as f:
        f.write("val_9.JPEG\tn00000042\t0\t0\t63\t63\n")
    with data_error(f"{annotations}:3", "n00000042"):
        load_data("tiny-imagenet", tmp_path, workers=0)


def test_tiny_imagenet_missing_val_image_is_named(tmp_path):
    make_tiny_imagenet(tmp_path, n_classes=2, per_class=1, n_val=2)
    missing = tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_1.JPEG"
    missing.unlink()
    with data_error(missing):
        load_data("tiny-imagenet", tmp_path, workers=0)


def test_tiny_imagenet_missing_dir_names_download_flag(tmp_path):
    with data_error(tmp_path / "tiny-imagenet-200", "--download"):
        load_data("tiny-imagenet", tmp_path)


# ---------------------------------------------------------------------------------- folder + caching


def _resized(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)).transpose(2, 0, 1)


def test_folder_resizes_and_measures_stats(tmp_path):
    fake = make_image_folder(tmp_path, classes=["zebra", "ant", "cat"], per_class=2, size=(40, 30), val_per_class=1)
    bundle = load_data("folder", tmp_path, img_size=16, workers=0)
    assert bundle.classes == ["ant", "cat", "zebra"] and bundle.num_classes == 3
    assert bundle.train.images.shape == (6, 3, 16, 16) and bundle.pad == 2
    np.testing.assert_array_equal(bundle.train.labels.numpy(), fake.train_labels)
    np.testing.assert_array_equal(bundle.test.labels.numpy(), fake.test_labels)
    np.testing.assert_array_equal(bundle.train.images[2].numpy(), _resized(tmp_path / "train" / "cat" / "0.png", 16))
    pixels = bundle.train.images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(bundle.mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(bundle.std, pixels.std(axis=(0, 2, 3)), rtol=1e-6)


def test_folder_val_may_have_fewer_classes_but_not_new_ones(tmp_path):
    make_image_folder(tmp_path, classes=["a", "b"], per_class=1)
    for f in (tmp_path / "val" / "b").iterdir():
        f.unlink()
    (tmp_path / "val" / "b").rmdir()
    bundle = load_data("folder", tmp_path, workers=0)
    assert bundle.num_classes == 2 and bundle.test.labels.tolist() == [0]
    (tmp_path / "val" / "c").mkdir()
    with data_error(tmp_path / "val", "c"):
        load_data("folder", tmp_path, workers=0)


def test_folder_empty_class_is_named(tmp_path):
    make_image_folder(tmp_path, classes=["a", "b"], per_class=1)
    (tmp_path / "train" / "empty").mkdir()
    with data_error(tmp_path / "train" / "empty"):
        load_data("folder", tmp_path, workers=0)


def test_folder_missing_split_is_named(tmp_path):
    make_image_folder(tmp_path, classes=["a"], per_class=1)
    for f in (tmp_path / "val" / "a").iterdir():
        f.unlink()
    (tmp_path / "val" / "a").rmdir()
    (tmp_path / "val").rmdir()
    with data_error(tmp_path / "val"):
        load_data("folder", tmp_path, workers=0)


@pytest.mark.parametrize("in_memory", [True, False])
def test_unreadable_image_is_named(tmp_path, in_memory):
    make_image_folder(tmp_path, classes=["a", "b"], per_class=2)
    broken = tmp_path / "train" / "b" / "1.png"
    broken.write_bytes(b"\x89PNG not really")
    with data_error(broken):
        bundle = load_data("folder", tmp_path, in_memory=in_memory, workers=0)
        for _ in DeviceLoader(bundle.train, 2, shuffle=False, device="cpu", workers=2):  # worker processes
            pass


def test_cache_is_written_reused_and_invalidated(tmp_path, monkeypatch):
    make_image_folder(tmp_path, classes=["a", "b"], per_class=2)
    first = load_data("folder", tmp_path, workers=0)
    cache = tmp_path / ".upanets_cache_train_32.pt"
    assert cache.is_file() and (tmp_path / ".upanets_cache_val_32.pt").is_file()
    assert not list(tmp_path.glob("*.tmp"))

    def no_decoding(path, size):
        raise AssertionError(f"decoded {path} although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(decoding, "read_image", no_decoding)
        second = load_data("folder", tmp_path, workers=0)
    assert torch.equal(second.train.images, first.train.images)
    assert torch.equal(second.train.labels, first.train.labels)

    Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp_path / "train" / "a" / "new.png")
    third = load_data("folder", tmp_path, workers=0)
    assert len(third.train) == 5
    assert third.train.images[2].flatten(1).tolist() == [[1] * 1024, [2] * 1024, [3] * 1024]  # sorted after 0, 1

    cache.write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="unreadable cache"):
        fourth = load_data("folder", tmp_path, workers=0)
    assert torch.equal(fourth.train.images, third.train.images)


def test_streaming_matches_in_memory(tmp_path):
    make_image_folder(tmp_path, classes=["a", "b", "c"], per_class=5, size=24)
    memory = load_data("folder", tmp_path, img_size=16, workers=0)
    stream = load_data("folder", tmp_path, img_size=16, in_memory=False, workers=0)
    assert isinstance(stream.train, StreamingDataset) and isinstance(memory.train, ImageDataset)
    assert stream.mean == pytest.approx(memory.mean) and stream.std == pytest.approx(memory.std)
    for shuffle in (True, False):
        loaders = [DeviceLoader(b.train, 4, shuffle=shuffle, device="cpu", seed=3, workers=0) for b in (memory, stream)]
        for loader in loaders:
            loader.set_epoch(2)
        for (xa, ya), (xb, yb) in zip(*loaders, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ----------------------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_balanced_and_learnable():
    a, b, c = sources.make_synthetic(0), load_data("synthetic", "unused", seed=0), sources.make_synthetic(1)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, c.train.images)
    assert a.train.images.shape == (2000, 3, 32, 32) and a.test.images.shape == (500, 3, 32, 32)
    assert torch.bincount(a.train.labels).tolist() == [200] * 10 and a.num_classes == len(a.classes) == 10
    assert a.mean == sources.channel_stats(a.train.images)[0]

    def features(x):  # colour + stripe orientation, all a convnet needs
        x = x.float()
        orientation = x.diff(dim=3).abs().mean((1, 2, 3)) - x.diff(dim=2).abs().mean((1, 2, 3))
        return torch.cat([x.mean((2, 3)), orientation[:, None]], 1)

    train, test = features(a.train.images), features(a.test.images)
    centroids = torch.stack([train[a.train.labels == k].mean(0) for k in range(10)])
    accuracy = (torch.cdist(test, centroids).argmin(1) == a.test.labels).float().mean()
    assert accuracy > 0.95


# ---------------------------------------------------------------------------------------- transforms

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def test_normalize_matches_reference():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    reference = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    out = DeviceTransform(MEAN, STD, device="cpu")(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)
    assert torch.equal(out, augment.normalize(x, MEAN, STD))
    assert DeviceTransform(MEAN, STD, device="cpu", dtype=torch.bfloat16)(x).dtype == torch.bfloat16


def _match_windows(images, out, pad):
    """Per sample (dy, dx, flipped) of the window of the zero-padded input that equals the output; -1 if none."""
    padded = torch.stack([F.pad(img, (pad, pad, pad, pad)) for img in images])
    h, w = images.shape[2:]
    found = torch.full((len(images), 3), -1)
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            window = padded[:, :, dy:dy + h, dx:dx + w]
            for flipped, candidate in ((0, window), (1, window.flip(3))):
                found[(candidate == out).flatten(1).all(1)] = torch.tensor([dy, dx, flipped])
    return found


def test_random_crop_flip_gives_true_windows_with_torchvision_distribution():
    images = torch.randint(1, 256, (3000, 3, 6, 7), dtype=torch.uint8)
    out = augment.random_crop_flip(images, pad=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    found = _match_windows(images, out, pad=2)
    assert (found >= 0).all()
    for axis in (0, 1):  # offsets uniform over [0, 2 * pad]
        counts = torch.bincount(found[:, axis], minlength=5)
        assert len(counts) == 5 and ((counts > 500) & (counts < 700)).all(), counts
    assert 0.46 < found[:, 2].float().mean() < 0.54
    assert not augment.random_crop_flip(images, 2, flip=False).eq(0).all((1, 2, 3)).any()  # no all-padding crops
    assert (_match_windows(images, augment.random_crop_flip(images, 2, flip=False), 2)[:, 2] == 0).all()


@pytest.mark.parametrize("sync_free", [False, True])
def test_random_crop_flip_flips_horizontally_at_half_the_rate(sync_free):
    """Both flip paths (the CPU's boolean-mask index and the branch-free torch.where used on GPUs) mirror a sample's
    crop left-right (flip(3)) or leave it, about half the time each; never upside down."""
    images = torch.randint(0, 256, (2000, 3, 6, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    crops = augment.random_crop_flip(images, 2, torch.Generator().manual_seed(3), flip=False)  # same offsets drawn first
    out = augment.random_crop_flip(images, 2, torch.Generator().manual_seed(3), sync_free=sync_free)
    assert out.shape == images.shape and out.dtype == torch.uint8
    same, mirrored = (out == crops).all((1, 2, 3)), (out == crops.flip(3)).all((1, 2, 3))
    assert not (same & mirrored).any()  # random crops are never symmetric, so the two cases are distinct
    assert (same | mirrored).all(), f"{(~(same | mirrored)).sum()} samples are neither the crop nor its mirror"
    assert 0.46 < mirrored.float().mean() < 0.54


def test_random_crop_flip_paths_agree():
    """The branch-free path gives the very batch of the CPU's default path for the same generator state."""
    images = torch.randint(0, 256, (500, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    default = augment.random_crop_flip(images, 3, torch.Generator().manual_seed(7))
    masked = augment.random_crop_flip(images, 3, torch.Generator().manual_seed(7), sync_free=False)
    where = augment.random_crop_flip(images, 3, torch.Generator().manual_seed(7), sync_free=True)
    assert torch.equal(default, masked) and torch.equal(default, where)
    assert not torch.equal(default, augment.random_crop_flip(images, 3, torch.Generator().manual_seed(8)))


def test_transform_pads_with_black_before_normalising():
    x = torch.full((64, 3, 8, 8), 200, dtype=torch.uint8)
    out = DeviceTransform(MEAN, STD, device="cpu", pad=3, flip=True)(x)
    black = (-torch.tensor(MEAN) / torch.tensor(STD)).view(1, 3, 1, 1).expand_as(out)
    grey = ((200 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)).view(1, 3, 1, 1).expand_as(out)
    is_black, is_grey = (out - black).abs() < 1e-5, (out - grey).abs() < 1e-5
    assert (is_black | is_grey).all() and is_black.any() and is_grey.any()


def test_transform_without_augmentation_is_plain_normalisation():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(DeviceTransform(MEAN, STD, device="cpu", pad=0, flip=False)(x), augment.normalize(x, MEAN, STD))


def test_transform_is_seeded_by_seed_epoch_and_rank():
    x = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)

    def run(seed=0, epoch=0, rank=0):
        t = DeviceTransform(MEAN, STD, device="cpu", pad=2, flip=True, seed=seed, rank=rank)
        t.set_epoch(epoch)
        return t(x)

    assert torch.equal(run(epoch=3), run(epoch=3))
    assert not torch.equal(run(epoch=3), run(epoch=4))
    assert not torch.equal(run(rank=0), run(rank=1))
    assert not torch.equal(run(seed=0), run(seed=1))


# -------------------------------------------------------------------------------------------- loader


def _indexed(n: int) -> ImageDataset:
    """Images whose pixels encode their index, so a batch's images can be checked against its labels."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return ImageDataset(images, torch.arange(n))


def _epoch(loader: DeviceLoader, epoch: int) -> list[torch.Tensor]:
    loader.set_epoch(epoch)
    batches = []
    for images, labels in loader:
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert torch.equal(images[:, 0, 0, 0].long(), labels)
        batches.append(labels)
    assert len(batches) == len(loader)
    return batches


def _loader(n: int, batch_size: int, shuffle: bool = True, **kwargs) -> DeviceLoader:
    return DeviceLoader(_indexed(n), batch_size, shuffle=shuffle, device="cpu", **kwargs)


def test_loader_covers_every_sample_once_in_seeded_order():
    loader = _loader(103, 10, seed=5)
    order = torch.cat(_epoch(loader, 0))
    assert sorted(order.tolist()) == list(range(103)) and loader.num_samples == 103
    assert not torch.equal(order, torch.cat(_epoch(loader, 1)))
    assert torch.equal(order, torch.cat(_epoch(_loader(103, 10, seed=5), 0)))  # a fresh loader: resume needs no state
    assert not torch.equal(order, torch.cat(_epoch(_loader(103, 10, seed=6), 0)))


def test_loader_resumes_mid_epoch(tmp_path):
    loader = _loader(53, 10, seed=2)
    loader.set_epoch(4)
    full = [labels.tolist() for _, labels in loader]
    assert [labels.tolist() for _, labels in loader.iter_from(3)] == full[3:]
    make_image_folder(tmp_path, classes=["a", "b"], per_class=5, size=8)
    stream = load_data("folder", tmp_path, img_size=8, in_memory=False, workers=0).train
    loader = DeviceLoader(stream, 3, shuffle=True, device="cpu", workers=0)
    assert [labels.tolist() for _, labels in loader.iter_from(2)] == [labels.tolist() for _, labels in loader][2:]


def test_loader_merges_a_final_batch_of_one():
    assert [len(b) for b in _epoch(_loader(21, 10), 0)] == [10, 11]
    assert [len(b) for b in _epoch(_loader(21, 10, shuffle=False), 0)] == [10, 10, 1]  # eval mode copes with 1
    with pytest.raises(DataError, match="fewer than 2 per process"):
        _loader(3, 10, world_size=2)


@pytest.mark.parametrize("n, world_size", [(103, 4), (21, 2), (40, 4)])
def test_loader_ddp_shards(n, world_size):
    for epoch in (0, 1):
        batches = [_epoch(_loader(n, 8, seed=1, rank=r, world_size=world_size), epoch) for r in range(world_size)]
        assert all(len(b) > 1 for rank in batches for b in rank)
        shards = [torch.cat(rank) for rank in batches]
        assert all(len(s) == n // world_size for s in shards)
        together = torch.cat(shards)
        assert len(together.unique()) == len(together) == n // world_size * world_size
    evals = [torch.cat(_epoch(_loader(n, 5, shuffle=False, rank=r, world_size=world_size), 0))
             for r in range(world_size)]
    for r, shard in enumerate(evals):
        assert shard.tolist() == list(range(r, n, world_size))
    assert sorted(torch.cat(evals).tolist()) == list(range(n))
