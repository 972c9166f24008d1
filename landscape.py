"""Loss landscapes of trained UPANets around their weights, after Li et al. 2018, "Visualizing the Loss Landscape
of Neural Nets".

    python landscape.py --weights checkpoint/cifar10-upanets16/best.pth checkpoint/cifar10-upanets16-last/best.pth \\
        --dataset cifar10 --images 500 --points 21 --span 1.0 --dims 1 --out results/landscape

Each checkpoint's weights w move along a random direction d (and a second one, e, with --dims 2) to
w + alpha * d (+ beta * e), for alpha and beta on a grid over [-span, span]. The directions are filter-normalised:
each filter of d, the slice of a convolution or linear weight that makes one output channel (or one SPA output),
is rescaled to the norm of the same filter in w, so a step of 1 is as large as the weights in every layer whatever
their scale. One-dimensional parameters (BatchNorm weights, biases) stay where they are, as do BatchNorm's
running statistics. The loss and top-1 accuracy at each point are ``engine.evaluate``'s, in eval mode and fp32,
over a fixed seeded sample of training images without augmentation: the point at the origin is an ordinary
evaluation of the checkpoint itself. The same command draws the same directions and images on any device,
and gives the same numbers on the same machine.

Writes OUT/landscape.csv (checkpoint, alpha[, beta], loss, accuracy; one row per checkpoint and grid point) and
OUT/landscape.png (--dims 1: one curve per checkpoint on shared axes; --dims 2: a contour panel per checkpoint).
"""
from __future__ import annotations

import argparse
import csv
import itertools
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from models.upanets import HEADS, UPANets, config_repr
from upanets_lab import commandline
from upanets_lab.checkpoints import CheckpointRecord, build_model, read_checkpoint
from upanets_lab.data import sources
from upanets_lab.data.augment import DeviceTransform
from upanets_lab.data.decoding import ImageDataset, StreamingDataset
from upanets_lab.data.loading import DeviceLoader
from upanets_lab.errors import DataError, UserError
from upanets_lab.files import atomic_write, check_writable
from upanets_lab.inference.trained import fill_settings
from upanets_lab.training import tuning
from upanets_lab.training.distributed import resolve_device
from upanets_lab.training.engine import Runtime, evaluate
from upanets_lab.training.logs import pyplot, save_figure


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = commandline.make_parser("Loss landscapes of UPANets checkpoints (Li et al. 2018)", add_help=add_help)
    weights = parser.add_argument_group("checkpoints")
    weights.add_argument("--weights", required=True, nargs="+", type=Path, metavar="PATH",
                         help="checkpoints to compare (this repo's, or the original code's ckpt.pth)")
    weights.add_argument("--head", default=None, choices=HEADS,
                         help="the head of checkpoints that do not record theirs (default: read from the weights)")
    weights.add_argument("--filters", default=None, type=int,
                         help="the base filters of checkpoints that do not record theirs (default: from the weights)")
    commandline.add_weights_choice_arg(weights)
    data = parser.add_argument_group("data")
    commandline.add_dataset_args(data, dataset_help="the first checkpoint, else cifar10")
    commandline.add_img_size_arg(data, "image size for --dataset folder/synthetic (default: the checkpoint's, "
                                 "else 32)")
    commandline.add_workers_arg(data)
    data.add_argument("--images", default=500, type=int, help="training images the loss is measured on")
    grid_flags = parser.add_argument_group("grid")
    grid_flags.add_argument("--points", default=21, type=int,
                            help="grid points per direction (odd: 0 is one of them)")
    grid_flags.add_argument("--span", default=1.0, type=float, help="the grid covers [-span, span] in each direction")
    grid_flags.add_argument("--dims", default=1, type=int, choices=(1, 2), help="1: a curve; 2: a surface")
    grid_flags.add_argument("--seed", default=0, type=int, help="seed of the directions and of the image sample")
    speed = parser.add_argument_group("speed")
    commandline.add_batch_size_arg(speed, 100, "images per evaluation batch")
    commandline.add_device_args(speed)
    speed.add_argument("--eval-amp", default="off", choices=tuning.EVAL_AMP_FLAGS,
                       help="autocast precision of the evaluations (off: fp32)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", default=Path("results/landscape"), type=Path,
                        help="folder for landscape.csv and landscape.png")
    commandline.add_progress_arg(output)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Reject nonsense flag values before any work starts."""
    if args.points < 3 or args.points % 2 == 0:
        raise UserError(f"--points must be an odd number >= 3, so that the grid holds the checkpoint itself "
                        f"(alpha = 0), got {args.points}")
    commandline.check_flag_ranges(positive={"--span": args.span, "--images": args.images,
                                            "--batch-size": args.batch_size},
                                  non_negative={"--seed": args.seed, "--workers": args.workers})
    check_writable(args.out)


# ----------------------------------------------------------------------------- the landscape


def grid(points: int, span: float) -> list[float]:
    """``points`` evenly spaced values over [-span, span]; the middle one is exactly 0."""
    # An integer numerator and a single division: the values are exact where they can be (-0.9, not -0.8999...).
    return [span * (2 * i - (points - 1)) / (points - 1) for i in range(points)]


def sample_images(train: ImageDataset | StreamingDataset, count: int, seed: int) -> ImageDataset:
    """A seeded choice of ``count`` training images, in their order in the set, decoded into memory."""
    if count > len(train):
        raise DataError(f"--images {count} is more than the {len(train)} training images the set holds")
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    if isinstance(train, ImageDataset):
        return ImageDataset(train.images[chosen].contiguous(), train.labels[chosen])
    return ImageDataset(torch.stack([train[i][0] for i in chosen.tolist()]), train.labels[chosen])


def filter_normalized_direction(weights: Sequence[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """A Gaussian direction for ``weights`` (each at least 2-d), each filter rescaled to its weight filter's norm.

    The noise is drawn on the CPU, so every device gets the same direction for a seed.
    """
    direction = []
    for weight in weights:
        d = torch.randn(weight.shape, generator=generator, dtype=weight.dtype).to(weight.device)
        scale = weight.flatten(1).norm(dim=1) / (d.flatten(1).norm(dim=1) + 1e-10)
        direction.append(d * scale.view(-1, *[1] * (weight.dim() - 1)))
    return direction


@dataclass
class Landscape:
    """One checkpoint's losses and accuracies (percent) on the grid: shape (points,) or (points, points)."""

    path: Path
    label: str
    loss: np.ndarray
    accuracy: np.ndarray


@torch.no_grad()
def measure(model: nn.Module, coords: Sequence[float], dims: int, seed: int, loader: DeviceLoader,
            transform: DeviceTransform, runtime: Runtime, bar: tqdm) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate ``model`` at every grid point of ``coords`` along ``dims`` seeded filter-normalised directions."""
    weights = [p for p in model.parameters() if p.dim() > 1]  # the 1-d ones have no filters and stay fixed
    origin = [w.detach().clone() for w in weights]
    generator = torch.Generator().manual_seed(seed)
    directions = [filter_normalized_direction(origin, generator) for _ in range(dims)]
    criterion = nn.CrossEntropyLoss()
    loss, accuracy = np.empty((len(coords),) * dims), np.empty((len(coords),) * dims)
    for index in itertools.product(range(len(coords)), repeat=dims):
        for i, (weight, start) in enumerate(zip(weights, origin)):
            weight.copy_(start)
            for direction, k in zip(directions, index):
                if coords[k]:  # the origin stays bit-exact
                    weight.add_(direction[i], alpha=coords[k])
        stats = evaluate(model, criterion, loader, transform, runtime)
        loss[index], accuracy[index] = stats["loss"], stats["acc1"]
        bar.update()
    for weight, start in zip(weights, origin):
        weight.copy_(start)
    return loss, accuracy


# ----------------------------------------------------------------------------- checkpoints


def landscape_model(record: CheckpointRecord, args: argparse.Namespace, bundle: sources.DataBundle) -> nn.Module:
    """The checkpoint's model with its weights, for the data set's classes and images; --head and --filters,
    when given, must be what the checkpoint holds."""
    given = {key: value for key, value in (("filters", args.filters), ("head", args.head)) if value is not None}
    model, _ = build_model(record, num_classes=bundle.num_classes, img=bundle.img_size,
                           raw_weights=args.raw_weights, **given)
    return model


def label(record: CheckpointRecord) -> str:
    """``run/file (head)`` (a UPANets' head, else the model's name) for the legend, so two heads or models compare
    at a glance."""
    kind = record.model_config.get("head", "exc") if record.model.startswith("upanets") else record.model
    return f"{record.run_name}/{record.path.name} ({kind})" if record.run_name else f"{record.path} ({kind})"


# ----------------------------------------------------------------------------- outputs


def write_csv(path: Path, landscapes: Sequence[Landscape], coords: Sequence[float], dims: int) -> None:
    with atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["checkpoint", "alpha", *(["beta"] if dims == 2 else []), "loss", "accuracy"])
        for landscape in landscapes:
            for index in itertools.product(range(len(coords)), repeat=dims):
                writer.writerow([landscape.path, *(coords[k] for k in index), landscape.loss[index],
                                 landscape.accuracy[index]])


def plot(path: Path, landscapes: Sequence[Landscape], coords: Sequence[float], dims: int, images: int) -> None:
    """1-d: loss (log scale) and accuracy against alpha, a curve per checkpoint; 2-d: a loss contour per checkpoint.

    Non-finite losses are left out.
    """
    from matplotlib.colors import LogNorm

    plt = pyplot()

    if dims == 1:
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
        for landscape in landscapes:
            finite = np.isfinite(landscape.loss)
            ax_loss.plot(np.asarray(coords)[finite], landscape.loss[finite], marker=".", label=landscape.label)
            ax_acc.plot(np.asarray(coords)[finite], landscape.accuracy[finite], marker=".", label=landscape.label)
        ax_loss.set_yscale("log")
        ax_loss.set_ylabel(f"loss on {images} training images")
        ax_acc.set_ylabel("top-1 accuracy (%)")
        for ax in (ax_loss, ax_acc):
            ax.set_xlabel("alpha (filter-normalised direction)")
            ax.grid(alpha=0.3)
        ax_loss.legend(fontsize=8)
    else:
        fig, axes = plt.subplots(1, len(landscapes), figsize=(5 * len(landscapes), 4.5), squeeze=False)
        finite = np.concatenate([landscape.loss[np.isfinite(landscape.loss)] for landscape in landscapes])
        # One set of levels for every panel, log-spaced: the basin and the far slopes both show, comparably.
        levels = np.geomspace(max(finite.min(), 1e-6), finite.max(), 16) if finite.max() > finite.min() else None
        for ax, landscape in zip(axes[0], landscapes):
            surface = np.ma.masked_invalid(landscape.loss.T)  # rows: beta, columns: alpha
            contours = ax.contour(coords, coords, surface, levels=levels, norm=LogNorm(), cmap="viridis")
            ax.clabel(contours, fontsize=7, fmt="%.3g")
            ax.plot(0, 0, marker="*", color="black")
            ax.set_title(landscape.label, fontsize=9)
            ax.set_xlabel("alpha")
            ax.set_ylabel("beta")
            ax.set_aspect("equal")
    fig.suptitle(f"loss landscape (Li et al. 2018), {images} training images")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


# ----------------------------------------------------------------------------- main


def load_checkpoints(args: argparse.Namespace) -> tuple[list[CheckpointRecord], sources.DataBundle]:
    """The checkpoints (a bad file fails before any work) and the data set they were trained on: --dataset and
    --img-size, else the first checkpoint's, as the one resolver (trained.fill_settings) fills them in."""
    records = [read_checkpoint(path) for path in args.weights]
    fill_settings(args, records[0], {"dataset": "cifar10"})
    for record in records:
        if record.dataset not in (None, args.dataset):
            raise UserError(f"{record.path} was trained on {record.dataset}, not {args.dataset}; pass --dataset "
                            f"{record.dataset}")
    bundle = sources.load_data(args.dataset, args.data_dir, download=args.download, img_size=args.img_size,
                                workers=args.workers, seed=records[0].seed)
    return records, bundle


def main(args: argparse.Namespace) -> list[Landscape]:
    """Measure, write and plot the landscapes the flags ask for; return them."""
    check_args(args)
    device = resolve_device(args.device)
    tuning.amp_candidates(args.eval_amp, device, "--eval-amp")  # before any image is read
    records, bundle = load_checkpoints(args)
    models = [landscape_model(record, args, bundle) for record in records]
    sample = sample_images(bundle.train, args.images, args.seed)
    loader = DeviceLoader(sample, args.batch_size, shuffle=False, device=device, workers=0)
    # fp32 unless --eval-amp, the default memory format: the origin is an ordinary evaluation.
    runtime = Runtime(device, eval_amp_dtype=tuning.autocast_dtype(args.eval_amp))
    coords = grid(args.points, args.span)
    landscapes = []
    with tqdm(total=len(records) * args.points ** args.dims, desc="landscape", dynamic_ncols=True,
              disable=True if args.no_progress else None) as bar:
        for record, model in zip(records, models):
            path, model = record.path, model.to(device)
            normalization = record.normalization(bundle.name) or (bundle.mean, bundle.std)
            transform = DeviceTransform(*normalization, device=device)
            loss, accuracy = measure(model, coords, args.dims, args.seed, loader, transform, runtime, bar)
            centre = (args.points // 2,) * args.dims
            if not math.isfinite(loss[centre]):
                raise UserError(f"{path}: the loss of the checkpoint itself is not finite; its weights are ruined")
            landscapes.append(Landscape(path, label(record), loss, accuracy))
            described = config_repr(model.config) if isinstance(model, UPANets) else record.model
            bar.write(f"{path}: {described}, loss {loss[centre]:.4f}, top-1 "
                      f"{accuracy[centre]:.2f}% on {len(sample)} training images", file=sys.stdout)
    write_outputs(args.out, landscapes, coords, args.dims, len(sample))
    return landscapes


def write_outputs(out: Path, landscapes: Sequence[Landscape], coords: Sequence[float], dims: int,
                  images: int) -> None:
    """landscape.csv and landscape.png in ``out``, and a note when some losses are not finite."""
    write_csv(out / "landscape.csv", landscapes, coords, dims)
    plot(out / "landscape.png", landscapes, coords, dims, images)
    print(f"wrote {out / 'landscape.csv'} and {out / 'landscape.png'}")
    bad = sum(int((~np.isfinite(landscape.loss)).sum()) for landscape in landscapes)
    if bad:
        total = sum(landscape.loss.size for landscape in landscapes)
        print(f"note: the loss is not finite at {bad} of {total} grid points, away from the checkpoints; "
              "landscape.csv records them and the plot leaves them out (a smaller --span stays inside)",
              file=sys.stderr)


def cli(argv: Iterable[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)

    def run() -> None:
        main(args)

    return commandline.run_cli(run, memory_remedy=lambda: "use a smaller --batch-size, or fewer --images for a "
                               "streamed set")


if __name__ == "__main__":
    sys.exit(cli())
