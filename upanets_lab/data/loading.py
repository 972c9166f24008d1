"""Batches of a decoded split on the training device: :class:`DeviceLoader`, seeded and sharded across processes.

    loader = DeviceLoader(bundle.train, 128, shuffle=True, device="cuda", seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:        # uint8 (B, 3, H, W) and int64 (B,), on the device
            ...
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from upanets_lab.data.decoding import ImageDataset, StreamingDataset, worker_errors
from upanets_lab.errors import DataError


def mixed_seed(*keys: int) -> int:
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
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(mixed_seed(self.seed, self.epoch)))
        return perm[self.rank:self.num_samples * self.world_size:self.world_size]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iter_from(0)

    def iter_from(self, step: int, with_indices: bool = False) -> Iterator[tuple[Tensor, ...]]:
        """The current epoch's batches from batch `step` on; resuming mid-epoch skips earlier ones unread.

        with_indices: each batch also carries its images' indices in the data set (int64, on the device).
        """
        indices = indices_on_device = self.indices()
        sizes = self.batch_sizes()
        if isinstance(self.data, ImageDataset):
            indices_on_device = indices.to(self.device)
            batches = ((self._images.index_select(0, idx), self._labels.index_select(0, idx))
                       for idx in indices_on_device.split(sizes)[step:])
        else:
            batches = self._stream([b.tolist() for b in indices.split(sizes)[step:]])
        if not with_indices:
            yield from batches
            return
        if indices_on_device is indices:
            indices_on_device = indices.to(self.device)
        for (images, labels), idx in zip(batches, indices_on_device.split(sizes)[step:]):
            yield images, labels, idx

    def _stream(self, batches: list[list[int]]) -> Iterator[tuple[Tensor, Tensor]]:
        """Decode ``batches`` of a streaming set with DataLoader workers."""
        # Its own generator, so that streaming draws nothing from torch's global one (the workers' base seed).
        loader = DataLoader(self.data, batch_sampler=batches, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(0))
        with worker_errors():
            for images, labels in loader:
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

