"""Small image sets in the real on-disk formats, for the tests, the benchmarks and the offline examples (CIFAR and
Tiny ImageNet cannot always be downloaded): CIFAR's pickled batches, Tiny ImageNet's folders, image folders, and
scikit-learn's handwritten digits (a real, learnable set that needs no network) in any of those formats
(``python sampledata.py`` writes the digits).

Each builder writes under `root` (the `data_dir` that sources.load_data takes) and returns the exact
images (uint8 (N, 3, H, W) numpy) and labels it wrote, so tests can compare pixel for pixel.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class FakeData:
    train_images: np.ndarray  # uint8 (N, 3, H, W)
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes, as in the official CIFAR files, so that they load as str
    under encoding='latin1' (numpy's array payload included)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_cifar_pickle(path: Path, obj: dict, py2_str_keys: bool) -> None:
    """Python 2 style (str keys, like the official files) or Python 3 style (bytes keys, bytes strings)."""
    if py2_str_keys:
        buffer = io.BytesIO()
        _Py2Pickler(buffer, protocol=2).dump(_to_bytes(obj))
        # the official files name numpy 1's module; protocol 2 stores globals as text lines, so this is exact
        payload = buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    else:
        payload = pickle.dumps(_to_bytes(obj), protocol=pickle.HIGHEST_PROTOCOL)
    Path(path).write_bytes(payload)


def _to_bytes(obj):
    if isinstance(obj, str):
        return obj.encode()
    if isinstance(obj, dict):
        return {_to_bytes(k): _to_bytes(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_bytes(v) for v in obj]
    return obj


def _random_split(rng: np.random.Generator, n: int, num_classes: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    return (rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8),
            rng.integers(0, num_classes, n).astype(np.int64))


def make_cifar10(root: str | Path, n_train: int = 12, n_test: int = 5, py2_str_keys: bool = True,
                 seed: int = 0) -> FakeData:
    """<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}; n_train is spread over 5 files."""
    rng = np.random.default_rng(seed)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    fake = FakeData(*_random_split(rng, n_train, 10), *_random_split(rng, n_test, 10), classes)
    write_cifar10(root, fake, py2_str_keys)
    return fake


def write_cifar10(root: str | Path, fake: FakeData, py2_str_keys: bool = True) -> None:
    """Write 32x32 images and labels as <root>/cifar-10-batches-py, the training images spread over 5 files."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    (x, y), (tx, ty) = (fake.train_images, fake.train_labels), (fake.test_images, fake.test_labels)
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5), 1):
        write_cifar_pickle(folder / f"data_batch_{i}", {
            "batch_label": f"training batch {i} of 5", "labels": y[part].tolist(),
            "data": x[part].reshape(len(part), -1), "filenames": [f"img_{j}.png" for j in part]}, py2_str_keys)
    write_cifar_pickle(folder / "test_batch", {
        "batch_label": "testing batch 1 of 1", "labels": ty.tolist(), "data": tx.reshape(len(ty), -1),
        "filenames": [f"test_{j}.png" for j in range(len(ty))]}, py2_str_keys)
    meta = {"num_cases_per_batch": 10000, "label_names": list(fake.classes), "num_vis": 3072}
    write_cifar_pickle(folder / "batches.meta", meta, py2_str_keys)


def digits(size: int = 32, n_train: int = 1500, seed: int = 0) -> FakeData:
    """scikit-learn's 1,797 handwritten digit scans (8x8, 17 grey levels) as RGB images of size x size,
    upscaled bilinearly: a real, learnable, offline image set. A seeded shuffle puts n_train in train."""
    from sklearn.datasets import load_digits

    scans = load_digits()
    pixels = (scans.images * (255 / 16)).round().astype(np.uint8)
    images = np.stack([np.array(Image.fromarray(p, "L").resize((size, size), Image.Resampling.BILINEAR)
                                .convert("RGB")).transpose(2, 0, 1) for p in pixels])
    order = np.random.default_rng(seed).permutation(len(images))
    train, test = order[:n_train], order[n_train:]
    labels = scans.target.astype(np.int64)
    return FakeData(images[train], labels[train], images[test], labels[test], [str(d) for d in range(10)])


def write_image_folder(root: str | Path, fake: FakeData) -> None:
    """Write images as lossless PNGs in <root>/{train,val}/<class>/<index>.png."""
    for split, images, labels in (("train", fake.train_images, fake.train_labels),
                                  ("val", fake.test_images, fake.test_labels)):
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = Path(root) / split / fake.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0), "RGB").save(folder / f"{i}.png")


def make_cifar100(root: str | Path, n_train: int = 12, n_test: int = 5, py2_str_keys: bool = True,
                  seed: int = 0) -> FakeData:
    """<root>/cifar-100-python/{train, test, meta} with fine and coarse labels."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    classes = [f"class_{i:03d}" for i in range(100)]
    splits = {"train": _random_split(rng, n_train, 100), "test": _random_split(rng, n_test, 100)}
    for name, (x, y) in splits.items():
        write_cifar_pickle(folder / name, {
            "filenames": [f"{name}_{j}.png" for j in range(len(y))], "batch_label": f"{name} batch",
            "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(), "data": x.reshape(len(y), -1)}, py2_str_keys)
    meta = {"fine_label_names": classes, "coarse_label_names": [f"super_{i}" for i in range(20)]}
    write_cifar_pickle(folder / "meta", meta, py2_str_keys)
    return FakeData(*splits["train"], *splits["test"], classes)


def _write_image(path: Path, rng: np.random.Generator, size: tuple[int, int], grayscale: bool = False) -> np.ndarray:
    """Write a random image and return it as decoded (RGB, uint8 (3, H, W)), which is exact for lossy JPEG too."""
    w, h = size
    if grayscale:
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(path)
    with Image.open(path) as im:
        return np.array(im.convert("RGB")).transpose(2, 0, 1)


def make_tiny_imagenet(root: str | Path, n_classes: int = 3, per_class: int = 2, n_val: int = 6,
                       seed: int = 0) -> FakeData:
    """<root>/tiny-imagenet-200/ with wnids.txt (unsorted, as the real one), train/<wnid>/images/*.JPEG,
    val/images/*.JPEG and val/val_annotations.txt; every third image is grayscale, as some real ones are.
    Labels index the sorted wnids; val images are in annotation order, which lists the files shuffled (neither
    sorted by name nor by number), so only a loader that follows val_annotations.txt gets their labels right."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "tiny-imagenet-200"
    wnids = [f"n{9_000_000 - 1000 * i:08d}" for i in range(n_classes)]  # descending: file order != sorted order
    classes = sorted(wnids)
    base.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("".join(w + "\n" for w in wnids))
    train_x, train_y = [], []
    for wnid in classes:
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for j in range(per_class):
            train_x.append(_write_image(folder / f"{wnid}_{j}.JPEG", rng, (64, 64), grayscale=j % 3 == 2))
            train_y.append(classes.index(wnid))
    (base / "val" / "images").mkdir(parents=True)
    val_x, val_y, lines = [], [], []
    numbers = np.random.default_rng([seed, 1]).permutation(n_val)  # the j-th annotation line names val_<numbers[j]>
    for j, number in enumerate(numbers):
        label = int(rng.integers(0, n_classes)) if j else n_classes - 1  # never all 0
        file = f"val_{number}.JPEG"
        val_x.append(_write_image(base / "val" / "images" / file, rng, (64, 64), grayscale=j % 3 == 2))
        val_y.append(label)
        lines.append(f"{file}\t{classes[label]}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    return FakeData(np.stack(train_x), np.array(train_y), np.stack(val_x), np.array(val_y), classes)


def make_image_folder(root: str | Path, classes: Sequence[str] = ("cat", "dog"), per_class: int = 3,
                      size: int | tuple[int, int] = 32, val_per_class: int | None = None, seed: int = 0) -> FakeData:
    """<root>/{train,val}/<class>/<i>.png (lossless, so returned pixels are exact). Images are `size`
    ((w, h) or square) as written, before any resizing by the loader; classes are returned sorted."""
    rng = np.random.default_rng(seed)
    size = (size, size) if isinstance(size, int) else tuple(size)
    classes = sorted(classes)
    out = {}
    for split, n in (("train", per_class), ("val", per_class if val_per_class is None else val_per_class)):
        xs, ys = [], []
        for label, name in enumerate(classes):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                xs.append(_write_image(folder / f"{j}.png", rng, size))
                ys.append(label)
        out[split] = (np.stack(xs), np.array(ys, dtype=np.int64))
    return FakeData(*out["train"], *out["val"], classes)
