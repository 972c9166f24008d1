"""Datasets and fast device-side loading for UPANets.

Every split is decoded once into a uint8 (N, 3, H, W) tensor that lives on the training device;
`DeviceLoader` batches it by index and `DeviceTransform` applies the paper's augmentation
(random crop with zero padding + horizontal flip) and normalisation as batched tensor ops.
Image-file datasets too large for memory fall back to `StreamingDataset`, decoded by DataLoader workers.

    bundle = load_data("cifar10", "./data", download=True)
    loader = DeviceLoader(bundle.train, 128, shuffle=True, device="cuda", seed=0)
    augment = DeviceTransform(bundle.mean, bundle.std, device="cuda", pad=bundle.pad, flip=True, seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        augment.set_epoch(epoch)
        for images, labels in loader:
            logits = model(augment(images))
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import os
import pickle
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from utils import TrainingError, WriteError, atomic_write, one_line

DATASETS = ("cifar10", "cifar100", "tiny-imagenet", "folder", "synthetic")
ORIGINAL_DATASET_NAMES = {"cifar_10": "cifar10", "cifar_100": "cifar100", "tiny_imgnet": "tiny-imagenet"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (mean, std) with which the original UPANets code normalised CIFAR-10 and CIFAR-100 alike; its checkpoints expect it.
ORIGINAL_CIFAR_NORMALIZATION = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Decoded splits up to this fraction of the currently available RAM are held in memory (and cached on disk).
MEMORY_FRACTION = 0.5


class DataError(TrainingError):
    """A data set is missing or malformed; the message names the file and what to do."""


@dataclass
class ImageDataset:
    """One decoded split held in memory."""

    images: Tensor  # uint8 (N, 3, H, W), contiguous
    labels: Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


class StreamingDataset(Dataset):
    """One split decoded from image files on access; for sets that do not fit in memory."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], img_size: int):
        self.files = list(files)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.img_size = img_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return read_image(self.files[i], self.img_size), self.labels[i]


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


def dataset_name(value: str) -> str:
    """A ``--dataset`` value as one of DATASETS (the original code's names accepted), for argparse."""
    name = ORIGINAL_DATASET_NAMES.get(value, value)
    if name not in DATASETS:
        choices = ", ".join(DATASETS + tuple(ORIGINAL_DATASET_NAMES))
        raise argparse.ArgumentTypeError(f"unknown dataset {value!r} (choose from {choices})")
    return name


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """``--dataset``, ``--data-dir``, ``--download`` and ``--img-size``, as each script that reads a data set has them.

    ``--dataset`` and ``--img-size`` default to None: the script fills them in from the checkpoint it reads, if any.
    """
    parser.add_argument("--dataset", "--datasets", default=None, type=dataset_name,
                        help=f"one of {', '.join(DATASETS)} (the original names "
                        f"{', '.join(ORIGINAL_DATASET_NAMES)} are accepted too); default: the data set of the "
                        "checkpoint being read, else cifar10")
    parser.add_argument("--data-dir", "--data_dir", default="./data", type=Path, help="where data sets live")
    parser.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                        help="download CIFAR / Tiny ImageNet when missing")
    parser.add_argument("--img-size", default=None, type=int,
                        help="image size for --dataset folder/synthetic (default: the checkpoint's, else 32); "
                        "CIFAR is 32, Tiny ImageNet 64")


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
    if name in _CIFAR:
        if img_size not in (None, 32):
            raise ValueError(f"{name} images are 32x32; img_size={img_size} is not supported")
        return _load_cifar(_CIFAR[name], name, data_dir, download)
    if name == "tiny-imagenet":
        return _load_tiny_imagenet(data_dir, download, 64 if img_size is None else img_size, in_memory, workers)
    if name == "folder":
        return _load_folder(data_dir, 32 if img_size is None else img_size, in_memory, workers)
    if name == "synthetic":
        img_size = 32 if img_size is None else img_size
        # Building it takes about 16 bytes per pixel value (float32 colour, noise and their sum).
        _require_memory(f"the synthetic set at --img-size {img_size}", 16 * 2000 * 3 * img_size**2,
                        "use a smaller --img-size")
        return make_synthetic(seed, img_size=img_size)
    raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


# ---------------------------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class _CifarSpec:
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
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_CIFAR = {
    "cifar10": _CifarSpec(
        "CIFAR-10", "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
        "batches.meta", "labels", "label_names", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": _CifarSpec(
        "CIFAR-100", "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85", ("train",), "test",
        "meta", "fine_labels", "fine_label_names", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
    ),
}


def _load_cifar(spec: _CifarSpec, name: str, data_dir: Path, download: bool) -> DataBundle:
    root = _locate(data_dir, spec.folder, spec.title, spec.url, spec.md5, download)
    names = _unpickle(root / spec.meta_file).get(spec.names_key)
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise DataError(f"{root / spec.meta_file}: expected {spec.num_classes} '{spec.names_key}'; "
                        "re-download with --download")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    train = _cat([_read_cifar_file(root / f, spec) for f in spec.train_files])
    test = _read_cifar_file(root / spec.test_file, spec)
    return DataBundle(name, train, test, spec.num_classes, 32, spec.mean, spec.std, 4, classes)


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


def _read_cifar_file(path: Path, spec: _CifarSpec) -> ImageDataset:
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
        raise DataError(f"{title} not found at {root}; pass --download to fetch it, or extract {url} into {data_dir}")
    try:
        download_and_extract_archive(url, str(data_dir), md5=md5)
    except Exception as e:  # network, HTTP, checksum and archive errors all mean the same here
        raise DataError(f"downloading {title} from {url} failed ({one_line(e)}); "
                        f"check the network, or extract the archive into {data_dir} yourself") from None
    if not root.is_dir():
        raise DataError(f"{url} did not extract to {root}; extract it there yourself")
    return root


# ------------------------------------------------------------------------------------- image files


def _load_tiny_imagenet(data_dir: Path, download: bool, img_size: int, in_memory: bool | None,
                        workers: int) -> DataBundle:
    root = _locate(data_dir, "tiny-imagenet-200", "Tiny ImageNet", "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                   "90528d7ca1a48142e341f4ef8d21d0de", download)
    classes = _tiny_imagenet_classes(root)
    index = {w: i for i, w in enumerate(classes)}

    train_files, train_labels = [], []
    for wnid in classes:
        files = _list_images(root / "train" / wnid / "images")
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

    train = _image_split(root, "train", train_files, train_labels, img_size, in_memory, workers)
    test = _image_split(root, "val", test_files, test_labels, img_size, in_memory, workers)
    return DataBundle("tiny-imagenet", train, test, len(classes), img_size, IMAGENET_MEAN, IMAGENET_STD,
                      img_size // 8, classes)


def _tiny_imagenet_classes(root: Path) -> list[str]:
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
            found = _list_images(d)
            files += found
            labels += [index[d.name]] * len(found)
        if not files:
            raise DataError(f"{data_dir / split} has no images")
        data[split] = _image_split(data_dir, split, files, labels, img_size, in_memory, workers)

    train = data["train"]
    if isinstance(train, StreamingDataset):  # measure the statistics on a fixed sample rather than a full pass
        sample = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:4096]
        mean, std = channel_stats(_decode_all(torch.utils.data.Subset(train, sample.tolist()), workers, "statistics"))
    else:
        mean, std = channel_stats(train.images)
    return DataBundle("folder", train, data["val"], len(classes), img_size, mean, std, img_size // 8, classes)


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder} not found; the data set is incomplete")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder} has no images ({', '.join(IMG_EXTENSIONS)}); add some or remove the folder")
    return files


def read_image(path: str | os.PathLike, img_size: int) -> Tensor:
    """Decode one image file to uint8 (3, img_size, img_size): RGB, resized bilinearly if needed.

    How the image-file sets read their images, and predict.py its inputs. Raises DataError for a file that
    cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")  # some Tiny ImageNet images are grayscale
            if im.size != (img_size, img_size):
                im = im.resize((img_size, img_size), Image.Resampling.BILINEAR)
            array = np.array(im)
    except Exception as e:  # PIL reports damaged files as OSError, SyntaxError, EOFError, struct.error, ...
        raise DataError(f"cannot read image {path} ({one_line(e)}); replace or delete it") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _image_split(root: Path, split: str, files: list[Path], labels: list[int], img_size: int,
                 in_memory: bool | None, workers: int) -> ImageDataset | StreamingDataset:
    """Decode a split into memory through an on-disk cache, or stream it when it does not fit."""
    stream = StreamingDataset(files, labels, img_size)
    if in_memory is None:
        in_memory = len(files) * 3 * img_size * img_size <= MEMORY_FRACTION * _available_memory()
    if not in_memory:
        return stream
    cache = root / f".upanets_cache_{split}_{img_size}.pt"
    key = _fingerprint(root, files, labels)
    data = _read_cache(cache, key)
    if data is None:
        data = ImageDataset(_decode_all(stream, workers, f"{root.name}/{split}"), stream.labels)
        _write_cache(cache, key, data)
    return data


def _require_memory(what: str, needed: int, remedy: str) -> None:
    """Raise DataError before allocating when ``needed`` bytes exceed the memory available now."""
    available = _available_memory()
    if needed > available:
        raise DataError(f"out of memory: {what} needs about {_gib(needed)} of memory, more than the "
                        f"{_gib(available)} available; {remedy}")


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def _available_memory() -> int:
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as f:
            return int(next(line for line in f if line.startswith("MemAvailable:")).split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _fingerprint(root: Path, files: list[Path], labels: list[int]) -> str:
    """Hash of the file list (relative paths, labels, sizes, mtimes): the cache is stale when any of it changes."""
    h = hashlib.sha1()
    for path, label in zip(files, labels):
        try:
            stat = path.stat()
        except OSError as e:
            raise DataError(f"cannot read image {path} ({one_line(e)}); replace it or fix the listing") from None
        h.update(f"{path.relative_to(root)}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _read_cache(path: Path, key: str) -> ImageDataset | None:
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if obj["key"] != key:
            return None
        return ImageDataset(obj["images"], obj["labels"])
    except Exception as e:  # a damaged cache is only a lost shortcut: decode again
        warnings.warn(f"ignoring unreadable cache {path} ({one_line(e)})", stacklevel=2)
        return None


def _write_cache(path: Path, key: str, data: ImageDataset) -> None:
    """Write atomically, so concurrent ranks or a crash never leave a partial cache.

    A folder that cannot be written (a read-only data set) only loses the shortcut; a full disk is an error,
    as the run's own checkpoints would meet it next.
    """
    try:
        with atomic_write(path) as f:
            torch.save({"key": key, "images": data.images, "labels": data.labels}, f)
    except (OSError, RuntimeError) as e:  # torch's file writer reports a failed write as a RuntimeError
        if isinstance(e, OSError):
            disk_full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        else:
            disk_full = shutil.disk_usage(path.parent).free < data.images.numel()
        if disk_full:
            raise WriteError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        warnings.warn(f"cannot write cache {path} ({one_line(e)}); images will be decoded again next time",
                      stacklevel=2)


def _decode_all(dataset: Dataset, workers: int, desc: str) -> Tensor:
    """Decode a whole streaming dataset into one uint8 tensor with parallel workers."""
    loader = DataLoader(dataset, batch_size=256, num_workers=workers)
    images, start = None, 0
    with _worker_errors():
        for batch, _ in tqdm(loader, desc=f"decoding {desc}", leave=False, disable=None):
            if images is None:
                images = torch.empty((len(dataset), *batch.shape[1:]), dtype=torch.uint8)
            images[start:start + len(batch)] = batch
            start += len(batch)
    return images


@contextlib.contextmanager
def _worker_errors() -> Iterator[None]:
    """DataLoader re-raises a worker's DataError with the worker traceback in the message: keep its one line."""
    try:
        yield
    except DataError as e:
        lines = str(e).strip().splitlines()
        if len(lines) == 1:
            raise
        raise DataError(lines[-1].partition("DataError: ")[2] or lines[-1]) from None


# ---------------------------------------------------------------------------------------- synthetic

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


# ------------------------------------------------------------------------------------------ loading


def _seed(*keys: int) -> int:
    """A well-mixed 64-bit seed from non-negative integer keys such as (seed, epoch, rank)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0])


class DeviceLoader:
    """Batches of (uint8 images (B, 3, H, W), int64 labels (B,)) on `device`.

    shuffle=True: the epoch's permutation is a pure function of (seed, epoch), so resuming needs no RNG state.
    Each of `world_size` ranks takes every world_size-th element of it (equal shares; the < world_size
    leftover samples, different ones each epoch, are skipped), and a final batch of one sample is merged into
    the previous batch because BatchNorm cannot train on a single sample.
    shuffle=False: rank r gets samples r::world_size in order, unpadded, so all-reduced sums are exact.
    In-memory datasets are copied to `device` once; streaming ones are decoded by `workers` DataLoader processes.
    """

    def __init__(self, data: ImageDataset | StreamingDataset, batch_size: int, *, shuffle: bool,
                 device: torch.device | str, seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 4):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.device = torch.device(device)
        self.seed, self.rank, self.world_size, self.workers = seed, rank, world_size, workers
        self.epoch = 0
        n = len(data)
        self.num_samples = n // world_size if shuffle else len(range(rank, n, world_size))
        if shuffle and self.num_samples < 2:
            raise DataError(f"{n} training images over {world_size} processes leave fewer than 2 per process; "
                            "add images or use fewer processes")
        if isinstance(data, ImageDataset):
            self._images = data.images.to(self.device)
            self._labels = data.labels.to(self.device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batch_sizes(self) -> list[int]:
        full, rest = divmod(self.num_samples, self.batch_size)
        sizes = [self.batch_size] * full + ([rest] if rest else [])
        if self.shuffle and rest == 1 and full:
            sizes.pop()
            sizes[-1] += 1
        return sizes

    def __len__(self) -> int:
        return len(self.batch_sizes())

    def indices(self) -> Tensor:
        """This rank's sample indices for the current epoch, in batch order (CPU int64)."""
        n = len(self.data)
        if not self.shuffle:
            return torch.arange(self.rank, n, self.world_size)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(self.seed, self.epoch)))
        return perm[self.rank:self.num_samples * self.world_size:self.world_size]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iter_from(0)

    def iter_from(self, step: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The current epoch's batches from batch `step` on; resuming mid-epoch skips earlier ones unread."""
        indices, sizes = self.indices(), self.batch_sizes()
        if isinstance(self.data, ImageDataset):
            for idx in indices.to(self.device).split(sizes)[step:]:
                yield self._images.index_select(0, idx), self._labels.index_select(0, idx)
            return
        batches = [b.tolist() for b in indices.split(sizes)[step:]]
        loader = DataLoader(self.data, batch_sampler=batches, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda")
        with _worker_errors():
            for images, labels in loader:
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


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
    """uint8 batch -> normalised float batch, with random crop + flip when pad > 0 or flip is set.

    The augmentation generator lives on `device` and is reseeded from (seed, epoch, rank) by set_epoch,
    so augmentation is reproducible on resume and differs between DDP ranks.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, device: torch.device | str, pad: int = 0,
                 flip: bool = False, seed: int = 0, rank: int = 0, dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.scale, self.shift = _scale_shift(mean, std, self.device)
        self.pad, self.flip, self.seed, self.rank, self.dtype = pad, flip, seed, rank, dtype
        self.generator = torch.Generator(device=self.device)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(_seed(self.seed, epoch, self.rank))

    def __call__(self, images: Tensor) -> Tensor:
        if self.pad or self.flip:
            images = random_crop_flip(images, self.pad, self.generator, self.flip)
        return torch.addcmul(self.shift, images, self.scale).to(self.dtype)


# ---------------------------------------------------------------------------------- what inference needs

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# CIFAR-100's fine labels in label order (alphabetical, as in its meta file).
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
_CIFAR_CLASSES = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}


@dataclass(frozen=True)
class DatasetInfo:
    """What a model trained on a data set needs from it at inference: class names (label order) and mean/std."""

    classes: list[str] | None  # None where only the data holds them and it is not there
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def dataset_info(name: str, data_dir: str | os.PathLike | None = None, *, img_size: int | None = None,
                 seed: int = 0) -> DatasetInfo:
    """Class names and normalisation as training on ``name`` used them, reading no more of the data than needed.

    CIFAR's are constants. Tiny ImageNet's mean/std are constants and its class names are the wnids in
    ``data_dir``, None when that is missing. A folder or synthetic set is loaded as training loads it (its
    mean/std are measured on its train split), with ``img_size`` and, for synthetic, ``seed`` as trained.
    """
    name = ORIGINAL_DATASET_NAMES.get(name, name)
    if name in _CIFAR:
        spec = _CIFAR[name]
        return DatasetInfo(list(_CIFAR_CLASSES[name]), spec.mean, spec.std)
    if name == "tiny-imagenet":
        root = None if data_dir is None else Path(data_dir).expanduser() / "tiny-imagenet-200"
        classes = _tiny_imagenet_classes(root) if root is not None and root.is_dir() else None
        return DatasetInfo(classes, IMAGENET_MEAN, IMAGENET_STD)
    if name == "folder" and data_dir is None:
        raise DataError("a folder data set's class names and mean/std come from its images: give its data dir")
    if name in ("folder", "synthetic"):
        bundle = load_data(name, data_dir or ".", img_size=img_size, seed=seed)
        return DatasetInfo(list(bundle.classes), bundle.mean, bundle.std)
    raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
