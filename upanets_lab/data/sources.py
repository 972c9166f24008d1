"""Data set sources: CIFAR-10/100 (official pickled batches, downloaded with checksums), Tiny ImageNet, image
folders and a synthetic set, each loaded into a :class:`DataBundle` of decoded splits and its facts.

    bundle = load_data("cifar10", "./data", download=True)
"""
from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from upanets_lab.data.catalog import (
    CIFAR_NORMALIZATION,
    DATASETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ORIGINAL_DATASET_NAMES,
)
from upanets_lab.data.decoding import (
    ImageDataset,
    StreamingDataset,
    decode_all,
    decode_split,
    list_images,
    require_memory,
)
from upanets_lab.errors import DataError, one_line

# Said wherever a downloadable set is missing: what trains without a network.
OFFLINE_HINT = " (offline, --dataset synthetic trains on a set made in memory)"


@dataclass
class DataBundle:
    name: str
    train: ImageDataset | StreamingDataset
    test: ImageDataset | StreamingDataset
    num_classes: int
    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pad: int  # random-crop padding: img_size // 8, i.e. 4 for 32 px and 8 for 64 px as in the paper
    classes: list[str]


@dataclass(frozen=True)
class ValidationSplit:
    """Training images held out for model selection: their indices in the training set (sorted) and how they
    were drawn."""

    indices: Tensor
    seed: int

    def record(self) -> dict[str, Any]:
        """What args.json and checkpoints record of the split: enough to tell another split apart."""
        digest = hashlib.sha1(self.indices.numpy().astype("<i8").tobytes()).hexdigest()
        return {"images": len(self.indices), "seed": self.seed, "sha1": digest}


def split_validation(bundle: DataBundle, size: float, seed: int) -> tuple[DataBundle, DataBundle, ValidationSplit]:
    """A seeded, class-balanced hold-out of ``size`` training images (a count, or a fraction below 1):
    (the bundle with the rest as its train split, the bundle with the held-out images as its test split, the split).

    Each class gives its share of ``size`` in proportion to its training images (largest remainders first), drawn
    by a generator of ``seed`` alone, so every process and every resumed run holds out the same images.
    Raises DataError when the split is empty, or leaves a class without training images.
    """
    labels = bundle.train.labels
    n = len(labels)
    count = round(size * n) if size < 1 else int(size)
    if size >= 1 and size != count:
        raise DataError(f"--val-split {size:g} must be a whole number of images, or a fraction below 1")
    if not 0 < count < n:
        raise DataError(f"--val-split {size:g} holds out {count} of the {n} training images; it must leave some "
                        "for training and take at least one")
    per_class = torch.bincount(labels, minlength=bundle.num_classes)
    quotas = _largest_remainders(per_class.double() * count / n, count)
    starved = [bundle.classes[c] for c in range(bundle.num_classes) if per_class[c] and quotas[c] >= per_class[c]]
    if starved:
        raise DataError(f"--val-split {size:g} would leave class {starved[0]} without training images "
                        f"(it has {int(per_class[bundle.classes.index(starved[0])])}); hold out fewer images")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    chosen = [order[labels[order] == c][:quota] for c, quota in enumerate(quotas.tolist())]
    held = torch.cat(chosen).sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[held] = False
    train = replace(bundle, train=bundle.train.subset(keep.nonzero().squeeze(1)))
    val = replace(bundle, test=bundle.train.subset(held))
    return train, val, ValidationSplit(held, seed)


def _largest_remainders(shares: Tensor, total: int) -> Tensor:
    """Whole numbers summing to ``total`` as close as can be to ``shares`` (which sum to it)."""
    quotas = shares.floor().long()
    extra = total - int(quotas.sum())
    if extra:
        quotas[(shares - quotas).argsort(descending=True, stable=True)[:extra]] += 1
    return quotas


def load_data(
    name: str,
    data_dir: str | os.PathLike,
    *,
    download: bool = False,
    img_size: int | None = None,
    in_memory: bool | None = None,
    workers: int = 4,
    seed: int = 0,
) -> DataBundle:
    """Load a data set by name (one of DATASETS, or the original repo's names).

    img_size: CIFAR must be 32; Tiny ImageNet defaults to 64, folder and synthetic to 32 (images are resized).
    in_memory: for image-file sets, None decodes into memory (with an on-disk cache) when the split fits in
    MEMORY_FRACTION of available RAM and streams otherwise; True/False force either. workers: decoding processes.
    seed: only used by the synthetic set.
    """
    name = ORIGINAL_DATASET_NAMES.get(name, name)
    data_dir = Path(data_dir).expanduser()
    if name in CIFAR_SPECS:
        if img_size not in (None, 32):
            raise ValueError(f"{name} images are 32x32; img_size={img_size} is not supported")
        return _load_cifar(CIFAR_SPECS[name], name, data_dir, download)
    if name == "tiny-imagenet":
        return _load_tiny_imagenet(data_dir, download, 64 if img_size is None else img_size, in_memory, workers)
    if name == "folder":
        return _load_folder(data_dir, 32 if img_size is None else img_size, in_memory, workers)
    if name == "synthetic":
        img_size = 32 if img_size is None else img_size
        # Building it takes about 16 bytes per pixel value (float32 colour, noise and their sum).
        require_memory(f"the synthetic set at --img-size {img_size}", 16 * 2000 * 3 * img_size**2,
                        "use a smaller --img-size")
        return make_synthetic(seed, img_size=img_size)
    raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


@dataclass(frozen=True)
class CifarSpec:
    title: str
    folder: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int


CIFAR_SPECS = {
    "cifar10": CifarSpec(
        "CIFAR-10", "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
        "batches.meta", "labels", "label_names", 10,
    ),
    "cifar100": CifarSpec(
        "CIFAR-100", "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85", ("train",), "test",
        "meta", "fine_labels", "fine_label_names", 100,
    ),
}


def _load_cifar(spec: CifarSpec, name: str, data_dir: Path, download: bool) -> DataBundle:
    root = _locate(data_dir, spec.folder, spec.title, spec.url, spec.md5, download)
    names = _unpickle(root / spec.meta_file).get(spec.names_key)
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise DataError(f"{root / spec.meta_file}: expected {spec.num_classes} '{spec.names_key}'; "
                        "re-download with --download")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    train = _cat([_read_cifar_file(root / f, spec) for f in spec.train_files])
    test = _read_cifar_file(root / spec.test_file, spec)
    return DataBundle(name, train, test, spec.num_classes, 32, *CIFAR_NORMALIZATION[name], 4, classes)


def _unpickle(path: Path) -> dict:
    """Load a CIFAR pickle with str keys, whether written by Python 2 (str keys) or Python 3 (bytes keys)."""
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")  # latin1 is how numpy arrays in Python 2 pickles decode
    except FileNotFoundError:
        raise DataError(f"{path} is missing; delete {path.parent} and re-run with --download") from None
    except Exception as e:  # a damaged pickle can fail with almost any exception type
        raise DataError(f"{path} is truncated or corrupt ({type(e).__name__}); "
                        f"delete {path.parent} and re-run with --download") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a CIFAR dict; "
                        f"delete {path.parent} and re-run with --download")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_cifar_file(path: Path, spec: CifarSpec) -> ImageDataset:
    batch = _unpickle(path)
    if "data" not in batch or spec.label_key not in batch:
        raise DataError(f"{path} has no 'data'/'{spec.label_key}' entries; is it a {spec.title} file?")
    data, labels = np.asarray(batch["data"]), np.asarray(batch[spec.label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072); "
                        "the file is damaged, re-download it")
    if labels.shape != (len(data),) or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{path}: {labels.shape} {labels.dtype} labels for {len(data)} images; "
                        "the file is damaged, re-download it")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(f"{path}: labels span [{labels.min()}, {labels.max()}], outside [0, {spec.num_classes}); "
                        f"is it a {spec.title} file?")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return ImageDataset(images, torch.from_numpy(labels.astype(np.int64)))


def _cat(parts: list[ImageDataset]) -> ImageDataset:
    return ImageDataset(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


def download_and_extract_archive(url: str, download_root: str, md5: str) -> None:
    """torchvision's checksummed download, imported on first use: torchvision takes seconds to import."""
    from torchvision.datasets.utils import download_and_extract_archive as download

    download(url, download_root, md5=md5)


def _locate(data_dir: Path, folder: str, title: str, url: str, md5: str, download: bool) -> Path:
    """Return data_dir/folder, downloading and extracting the official archive first if allowed."""
    root = data_dir / folder
    if root.is_dir():
        return root
    if not download:
        raise DataError(f"{title} not found at {root}; pass --download to fetch it, or extract {url} into "
                        f"{data_dir}{OFFLINE_HINT}")
    try:
        download_and_extract_archive(url, str(data_dir), md5=md5)
    except Exception as e:  # network, HTTP, checksum and archive errors all mean the same here
        raise DataError(f"downloading {title} from {url} failed ({one_line(e)}); "
                        f"check the network, or extract the archive into {data_dir} yourself{OFFLINE_HINT}") from None
    if not root.is_dir():
        raise DataError(f"{url} did not extract to {root}; extract it there yourself")
    return root


def _load_tiny_imagenet(data_dir: Path, download: bool, img_size: int, in_memory: bool | None,
                        workers: int) -> DataBundle:
    root = _locate(data_dir, "tiny-imagenet-200", "Tiny ImageNet", "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                   "90528d7ca1a48142e341f4ef8d21d0de", download)
    classes = tiny_imagenet_classes(root)
    index = {w: i for i, w in enumerate(classes)}

    train_files, train_labels = [], []
    for wnid in classes:
        files = list_images(root / "train" / wnid / "images")
        train_files += files
        train_labels += [index[wnid]] * len(files)

    annotations = root / "val" / "val_annotations.txt"
    try:
        lines = annotations.read_text().splitlines()
    except OSError as e:
        raise DataError(f"cannot read {annotations} ({one_line(e)}); re-download with --download") from None
    test_files, test_labels = [], []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DataError(f"{annotations}:{lineno}: expected '<file>\\t<wnid from wnids.txt>\\t...', got {line!r}")
        test_files.append(root / "val" / "images" / fields[0])
        test_labels.append(index[fields[1]])
    if not test_files:
        raise DataError(f"{annotations} lists no images; re-download with --download")

    train = decode_split(root, "train", train_files, train_labels, img_size, in_memory, workers)
    test = decode_split(root, "val", test_files, test_labels, img_size, in_memory, workers)
    return DataBundle("tiny-imagenet", train, test, len(classes), img_size, IMAGENET_MEAN, IMAGENET_STD,
                      img_size // 8, classes)


def tiny_imagenet_classes(root: Path) -> list[str]:
    """The wnids of ``root/wnids.txt`` in label order."""
    wnids_file = root / "wnids.txt"
    try:
        wnids = wnids_file.read_text().split()
    except OSError as e:
        raise DataError(f"cannot read {wnids_file} ({one_line(e)}); re-download with --download") from None
    if not wnids:
        raise DataError(f"{wnids_file} lists no classes; re-download with --download")
    return sorted(set(wnids))  # sorted like ImageFolder, which the original code (and its checkpoints) used


def _load_folder(data_dir: Path, img_size: int, in_memory: bool | None, workers: int) -> DataBundle:
    """<data_dir>/{train,val}/<class>/<image>; classes come from train; mean/std are measured on train."""
    splits = {}
    for split in ("train", "val"):
        split_dir = data_dir / split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir} not found; the folder dataset needs "
                            f"{data_dir}/train/<class>/* and {data_dir}/val/<class>/*")
        splits[split] = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = [d.name for d in splits["train"]]
    if not classes:
        raise DataError(f"{data_dir / 'train'} has no class folders; expected {data_dir}/train/<class>/<image>")
    index = {c: i for i, c in enumerate(classes)}
    unknown = [d.name for d in splits["val"] if d.name not in index]
    if unknown:
        raise DataError(f"{data_dir / 'val'} has class folders not in {data_dir / 'train'}: {', '.join(unknown)}")

    data = {}
    for split, dirs in splits.items():
        files, labels = [], []
        for d in dirs:
            found = list_images(d)
            files += found
            labels += [index[d.name]] * len(found)
        if not files:
            raise DataError(f"{data_dir / split} has no images")
        data[split] = decode_split(data_dir, split, files, labels, img_size, in_memory, workers)

    train = data["train"]
    if isinstance(train, StreamingDataset):  # measure the statistics on a fixed sample rather than a full pass
        sample = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:4096]
        mean, std = channel_stats(decode_all(torch.utils.data.Subset(train, sample.tolist()), workers, "statistics"))
    else:
        mean, std = channel_stats(train.images)
    return DataBundle("folder", train, data["val"], len(classes), img_size, mean, std, img_size // 8, classes)


_COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 200), "yellow": (210, 190, 40),
            "grey": (128, 128, 128)}


def make_synthetic(seed: int = 0, n_train: int = 2000, n_test: int = 500, img_size: int = 32) -> DataBundle:
    """A small learnable set: 10 classes = 5 colours x {horizontal, vertical} stripes, random phase and noise."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.tensor(list(_COLOURS.values()), dtype=torch.float32)
    classes = [f"{c}-{o}" for c in _COLOURS for o in ("horizontal", "vertical")]

    def split(n: int) -> ImageDataset:
        labels = torch.arange(n)[torch.randperm(n, generator=g)] % len(classes)
        phase = torch.randint(0, 8, (n, 1), generator=g)
        stripes = ((torch.arange(img_size) + phase) // 4 % 2).float()  # period 8 px: survives crops and flips
        vertical = (labels % 2 == 1).view(n, 1, 1)
        pattern = torch.where(vertical, stripes[:, None, :], stripes[:, :, None])  # (n, H, W)
        colour = palette[labels // 2].view(n, 3, 1, 1)
        images = colour * (0.45 + 0.55 * pattern[:, None]) + 25 * torch.randn(n, 3, img_size, img_size, generator=g)
        return ImageDataset(images.round().clamp(0, 255).to(torch.uint8), labels)

    train, test = split(n_train), split(n_test)
    mean, std = channel_stats(train.images)
    return DataBundle("synthetic", train, test, len(classes), img_size, mean, std, img_size // 8, classes)


def channel_stats(images: Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std of uint8 (N, 3, H, W) images on the [0, 1] scale."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(1024):  # bounded float copies for large sets
        x = chunk.float()
        total += x.sum((0, 2, 3), dtype=torch.float64)
        squares += x.square().sum((0, 2, 3), dtype=torch.float64)
    count = images.numel() / 3
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())

