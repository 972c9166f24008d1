"""Decoded image splits: in memory (:class:`ImageDataset`, one uint8 tensor) or decoded on access
(:class:`StreamingDataset`), how image files are decoded, and the on-disk cache that decodes each file set once.

Image-file sets are decoded into memory, through a cache file beside the data, when the split fits in
MEMORY_FRACTION of the available memory, and streamed by DataLoader workers otherwise.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from upanets_lab.errors import DataError, WriteError, one_line
from upanets_lab.files import atomic_write

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Decoded splits up to this fraction of the currently available RAM are held in memory (and cached on disk).
MEMORY_FRACTION = 0.5


@dataclass
class ImageDataset:
    """One decoded split held in memory."""

    images: Tensor  # uint8 (N, 3, H, W), contiguous
    labels: Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Tensor) -> ImageDataset:
        return ImageDataset(self.images[indices].contiguous(), self.labels[indices])


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

    def subset(self, indices: Tensor) -> StreamingDataset:
        return StreamingDataset([self.files[i] for i in indices.tolist()], self.labels[indices], self.img_size)


def list_images(folder: Path) -> list[Path]:
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


def decode_split(root: Path, split: str, files: list[Path], labels: list[int], img_size: int,
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
        data = ImageDataset(decode_all(stream, workers, f"{root.name}/{split}"), stream.labels)
        _write_cache(cache, key, data)
    return data


def require_memory(what: str, needed: int, remedy: str) -> None:
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


def decode_all(dataset: Dataset, workers: int, desc: str) -> Tensor:
    """Decode a whole streaming dataset into one uint8 tensor with parallel workers."""
    # Its own generator: a DataLoader draws its workers' base seed from torch's global one otherwise, and
    # decoding runs only when the cache is cold, so the run's later draws would depend on the cache.
    loader = DataLoader(dataset, batch_size=256, num_workers=workers, generator=torch.Generator().manual_seed(0))
    images, start = None, 0
    with worker_errors():
        for batch, _ in tqdm(loader, desc=f"decoding {desc}", leave=False, disable=None):
            if images is None:
                images = torch.empty((len(dataset), *batch.shape[1:]), dtype=torch.uint8)
            images[start:start + len(batch)] = batch
            start += len(batch)
    return images


@contextlib.contextmanager
def worker_errors() -> Iterator[None]:
    """DataLoader re-raises a worker's DataError with the worker traceback in the message: keep its one line."""
    try:
        yield
    except DataError as e:
        lines = str(e).strip().splitlines()
        if len(lines) == 1:
            raise
        raise DataError(lines[-1].partition("DataError: ")[2] or lines[-1]) from None

