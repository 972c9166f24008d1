"""The original UPANets training recipe, end to end: the speed baseline of benchmarks/benchmark.py.

    python benchmarks/baseline_train.py --data-dir ./data --epochs 1
    python benchmarks/baseline_train.py --data-dir ./data --filters 64 --device cuda --save-path /tmp/baseline

It follows the recipe of the authors' code (hanktseng131415go/UPANets, main.py) without its code: a
torchvision-style CIFAR-10 Dataset that hands PIL images to RandomCrop(32, padding=4) +
RandomHorizontalFlip + ToTensor + Normalize, DataLoaders with num_workers=0, fp32 in NCHW,
SGD(lr 0.1, momentum 0.9, weight decay 5e-4) with per-epoch cosine annealing, host syncs every step
(loss.item(), correct.sum().item()), a test pass after every epoch, a {'net', 'acc', 'epoch'} checkpoint
when the accuracy improves, and per-epoch metrics with a loss/accuracy plot. (DataParallel, which the
original wraps around the model on CUDA, does nothing on one GPU and is left out.)

The model is this repo's UPANets computed the original way, see :func:`original_computation`. Each
epoch's metrics go to <save-path>/metrics.jsonl as main.py writes them (epoch_seconds: the time of its
training and test passes; train_images_per_second), which benchmark.py reads.
"""
from __future__ import annotations

import argparse
import contextlib
import pickle
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

REPO = Path(__file__).resolve().parents[1]

from models import upanets
from upanets_lab.data.catalog import ORIGINAL_CIFAR_NORMALIZATION
from upanets_lab.training.logs import MetricsLogger

ORIGINAL_MEAN, ORIGINAL_STD = ORIGINAL_CIFAR_NORMALIZATION


# ----------------------------------------------------------------------------- original model computation


def _per_pixel_linear(self: upanets.PixelLinear, x: torch.Tensor) -> torch.Tensor:
    """CPA's channel mix as the original: (N, C, H, W) -> (N, H, W, C), nn.Linear, and back (a permuted view)."""
    return nn.Linear.forward(self, x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _layer_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x, x.shape[1:], eps=eps)


def _original_head(self: upanets.UPANets, features: list[torch.Tensor]) -> torch.Tensor:
    """ExC as the original: SPA as nn.Linear over the flattened pixels, plus average pooling, F.layer_norm."""
    pooled = []
    for spa, feature in zip(self.spas, features):
        spatial = spa.sp_ffc(feature.flatten(2)).unsqueeze(-1)  # (N, C, 1, 1)
        average = F.avg_pool2d(feature, feature.shape[2:])
        pooled.append(_layer_norm(average + spatial))
    return self.linear(self.bn(torch.cat(pooled[::-1], dim=1).flatten(1)))


@contextlib.contextmanager
def original_computation() -> Iterator[None]:
    """Within this block every UPANets computes as the original code did (same parameters, same maths).

    CPA mixes channels with permute -> nn.Linear -> permute instead of a 1x1 convolution, layer norm is
    F.layer_norm, and the ExC head pools with a separate nn.Linear and average pooling. Patches the
    classes, so it affects every model's forward passes run inside the block.
    """
    with mock.patch.object(upanets.PixelLinear, "forward", _per_pixel_linear), \
            mock.patch.object(upanets, "_layer_norm_chw", _layer_norm), \
            mock.patch.object(upanets.UPANets, "forward_head", _original_head):
        yield


# ----------------------------------------------------------------------------- data


class PilImages(Dataset):
    """(PIL image -> transform, label) pairs over HWC uint8 images, like torchvision.datasets.CIFAR10."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], transform: transforms.Compose) -> None:
        self.images, self.labels, self.transform = images, list(labels), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def read_cifar10(data_dir: Path, train: bool) -> tuple[np.ndarray, list[int]]:
    """HWC uint8 images and labels of <data_dir>/cifar-10-batches-py, read as torchvision does."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    for name in names:
        with open(data_dir / "cifar-10-batches-py" / name, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images.append(np.asarray(batch["data"]).reshape(-1, 3, 32, 32))
        labels += list(batch["labels"])
    return np.concatenate(images).transpose(0, 2, 3, 1), labels


def train_transform() -> transforms.Compose:
    return transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(ORIGINAL_MEAN, ORIGINAL_STD),
    ])


def test_transform() -> transforms.Compose:
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(ORIGINAL_MEAN, ORIGINAL_STD)])


# ----------------------------------------------------------------------------- training


def train_epoch(model: nn.Module, loader: DataLoader, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                device: torch.device) -> tuple[float, float]:
    """One epoch; returns (mean loss, accuracy %), accumulated on the host every step."""
    model.train()
    loss_sum, correct, total = 0.0, 0, 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, targets)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item()
        correct += outputs.max(1)[1].eq(targets).sum().item()
        total += targets.size(0)
    return loss_sum / len(loader), 100.0 * correct / total


def evaluate(model: nn.Module, loader: DataLoader, criterion: nn.Module, device: torch.device) -> tuple[float, float]:
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    with torch.no_grad():
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            outputs = model(inputs)
            loss_sum += criterion(outputs, targets).item()
            correct += outputs.max(1)[1].eq(targets).sum().item()
            total += targets.size(0)
    return loss_sum / len(loader), 100.0 * correct / total


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train UPANets with the original recipe (speed baseline)")
    parser.add_argument("--data-dir", default=Path("./data"), type=Path,
                        help="folder holding cifar-10-batches-py/")
    parser.add_argument("--filters", default=16, type=int)
    parser.add_argument("--epochs", default=1, type=int)
    parser.add_argument("--batch-size", default=100, type=int)
    parser.add_argument("--lr", default=0.1, type=float)
    parser.add_argument("--workers", default=0, type=int, help="DataLoader workers (the original: 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--save-path", default=Path("./results/baseline"), type=Path,
                        help="checkpoint/ckpt.pth, metrics.jsonl/.csv and curves.png go here")
    parser.add_argument("--seed", default=0, type=int)
    return parser


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def main(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_images, train_labels = read_cifar10(args.data_dir, train=True)
    test_images, test_labels = read_cifar10(args.data_dir, train=False)
    train_loader = DataLoader(PilImages(train_images, train_labels, train_transform()), batch_size=args.batch_size,
                              shuffle=True, num_workers=args.workers)
    test_loader = DataLoader(PilImages(test_images, test_labels, test_transform()), batch_size=args.batch_size,
                             shuffle=False, num_workers=args.workers)

    model = upanets.UPANets(args.filters, 10, 1, 32).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    args.save_path.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLogger(args.save_path)  # rows and a plot per epoch, as main.py writes them
    best_acc = 0.0
    with original_computation():
        for epoch in range(args.epochs):
            started = time.perf_counter()
            train_loss, train_acc = train_epoch(model, train_loader, criterion, optimizer, device)
            train_seconds = time.perf_counter() - started
            test_loss, test_acc = evaluate(model, test_loader, criterion, device)
            epoch_seconds = time.perf_counter() - started
            if test_acc > best_acc:
                best_acc = test_acc
                (args.save_path / "checkpoint").mkdir(exist_ok=True)
                torch.save({"net": model.state_dict(), "acc": test_acc, "epoch": epoch},
                           args.save_path / "checkpoint" / "ckpt.pth")
            metrics.log({"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                         "test_acc": test_acc, "best_acc": best_acc, "lr": scheduler.get_last_lr()[0],
                         "epoch_seconds": epoch_seconds,
                         "train_images_per_second": len(train_labels) / train_seconds})
            scheduler.step()
            print(f"epoch {epoch + 1}/{args.epochs} | train loss {train_loss:.4f} acc {train_acc:.2f}% | "
                  f"test loss {test_loss:.4f} acc {test_acc:.2f}% | best {best_acc:.2f}% | "
                  f"{epoch_seconds:.1f}s, {len(train_labels) / train_seconds:.0f} img/s", flush=True)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
