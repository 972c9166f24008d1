"""Classify image files with a trained UPANets.

    python predict.py --weights checkpoint/cifar10-upanets16/best.pth photo.png my_images/
    python predict.py --weights best.pth my_images/ --topk 3 --csv predictions.csv
    python predict.py --weights ckpt.pth --dataset cifar10 images/     # the original code's checkpoint

Images are read as training reads image files (RGB, resized to the model's size with bilinear resampling) and
normalised as in training. Exit code: 0 when every image was predicted, 1 when unreadable images were skipped,
2 on errors (no images, bad weights, bad flags).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import data
import utils
from checkpointing import InferenceSpec, inference_spec
from engine import Runtime
from utils import TrainingError


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """``--weights`` and the flags that supply what a checkpoint lacks (shared with export.py)."""
    parser.add_argument("--weights", required=True, type=Path,
                        help="a checkpoint of main.py (best.pth, last.pth) or the original code's ckpt.pth")
    parser.add_argument("--classes", default=None,
                        help="class names in output order, comma-separated or a text file with one per line "
                        "(default: the checkpoint's, else the --dataset's)")
    parser.add_argument("--img-size", default=None, type=int,
                        help="the model's image size; read from the checkpoint, so needed only for weights "
                        "that do not say, and checked against it otherwise")
    parser.add_argument("--dataset", default=None, choices=data.DATASETS + tuple(data.ORIGINAL_DATASET_NAMES),
                        help="the data set the model was trained on, for checkpoints without class names or "
                        "mean/std")
    parser.add_argument("--data-dir", default=Path("./data"), type=Path,
                        help="where --dataset lives (needed for folder; Tiny ImageNet's class names come from it)")


def read_class_names(value: str) -> list[str]:
    """``--classes``: a text file with one name per line, or a comma-separated list."""
    path = Path(value)
    if path.is_file():
        try:
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise TrainingError(f"--classes {value}: cannot read it ({utils.one_line(e)})") from None
    elif os.sep in value or path.suffix == ".txt":  # meant as a file, not a class name
        raise TrainingError(f"--classes {value}: no such file")
    else:
        names = [name.strip() for name in value.split(",")]
    if not names or not all(names):
        raise TrainingError(f"--classes {value!r}: expected names separated by commas, or a file with one per line")
    return names


def load_spec(args: argparse.Namespace) -> InferenceSpec:
    """The checkpoint and flags of :func:`add_checkpoint_args` as an :class:`InferenceSpec`; prints its warnings."""
    classes = None if args.classes is None else read_class_names(args.classes)
    spec = inference_spec(args.weights, classes=classes, img_size=args.img_size, dataset=args.dataset,
                          data_dir=args.data_dir)
    for warning in spec.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return spec


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Classify image files with a trained UPANets", add_help=add_help)
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="image files, or folders searched recursively for images")
    add_checkpoint_args(parser)
    parser.add_argument("--topk", default=None, type=int, help="classes shown per image (default: 5, or fewer "
                        "when the model has fewer classes)")
    parser.add_argument("--csv", default=None, type=Path, help="also write the predictions to this CSV file")
    parser.add_argument("--batch-size", default=64, type=int, help="images per forward pass")
    parser.add_argument("--workers", default=2, type=int, help="processes decoding images")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def find_images(paths: Sequence[Path]) -> list[Path]:
    """The files named, and the images (data.IMG_EXTENSIONS) under the folders named, each folder's sorted."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in data.IMG_EXTENSIONS and p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file():
            files.append(path)
        else:
            raise TrainingError(f"{path}: no such file or folder")
    if not files:
        raise TrainingError(f"no images ({', '.join(data.IMG_EXTENSIONS)}) found under {', '.join(map(str, paths))}")
    return list(dict.fromkeys(files))  # a file named twice is predicted once


class ImageFiles(Dataset):
    """Image files decoded for the model; an unreadable one gives a blank image and its error message."""

    def __init__(self, files: Sequence[Path], img_size: int) -> None:
        self.files, self.img_size = list(files), img_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        try:
            return data.read_image(self.files[i], self.img_size), ""
        except data.DataError as e:
            return torch.zeros(3, self.img_size, self.img_size, dtype=torch.uint8), str(e)


@dataclass
class Prediction:
    path: Path
    classes: list[str]  # top-k, most probable first
    probabilities: list[float]


@torch.inference_mode()
def predict(spec: InferenceSpec, files: Sequence[Path], *, topk: int, runtime: Runtime, batch_size: int,
            workers: int = 0) -> Iterator[Prediction | str]:
    """Predictions for ``files`` in order, with the error message of each unreadable file in its place."""
    model = spec.model.to(runtime.device).eval()
    transform = data.DeviceTransform(*spec.normalization(), device=runtime.device)
    loader = DataLoader(ImageFiles(files, spec.img_size), batch_size=batch_size, num_workers=workers)
    start = 0
    for images, errors in loader:
        readable = [i for i, error in enumerate(errors) if not error]
        tops = iter(())
        if readable:
            inputs = runtime.inputs(images[readable].to(runtime.device), transform)
            with runtime.autocast:
                logits = model(inputs)
            top = logits.float().softmax(1).topk(topk, dim=1)
            tops = zip(top.values.tolist(), top.indices.tolist())
        for i, error in enumerate(errors):
            if error:
                yield error
            else:
                probabilities, indices = next(tops)
                yield Prediction(files[start + i], [spec.classes[j] for j in indices], probabilities)
        start += len(errors)


def csv_header(topk: int) -> list[str]:
    """``path,class,probability,class_2,probability_2,...``: top-1 first."""
    header = ["path", "class", "probability"]
    for rank in range(2, topk + 1):
        header += [f"class_{rank}", f"probability_{rank}"]
    return header


def write_csv(path: Path, predictions: Sequence[Prediction], topk: int) -> None:
    with utils.atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(csv_header(topk))
        for p in predictions:
            writer.writerow([str(p.path), *(cell for name, prob in zip(p.classes, p.probabilities)
                                             for cell in (name, f"{prob:.6f}"))])


def check_args(args: argparse.Namespace) -> None:
    positive = {"--batch-size": args.batch_size} if args.topk is None else {"--topk": args.topk,
                                                                            "--batch-size": args.batch_size}
    utils.check_flag_ranges(positive=positive, non_negative={"--workers": args.workers})
    if args.csv is not None:
        utils.check_writable(args.csv.parent)


def main(args: argparse.Namespace) -> int:
    """Predict, print the table (and write --csv); return how many unreadable images were skipped."""
    check_args(args)
    files = find_images(args.paths)
    spec = load_spec(args)
    spec.normalization()  # a checkpoint that does not say how inputs were normalised fails before any output
    num_classes = len(spec.classes)
    if args.topk is not None and args.topk > num_classes:
        raise TrainingError(f"--topk {args.topk} exceeds the model's {num_classes} classes")
    topk = args.topk or min(5, num_classes)
    device = utils.resolve_device(args.device)
    runtime = Runtime(device, progress=not args.no_progress and sys.stderr.isatty())

    name_width = max(len(str(f)) for f in files)
    cell_width = max(len(name) for name in spec.classes) + 7  # "name 0.1234"
    titles = (f"{f'top-{rank}':<{cell_width}}" for rank in range(1, topk + 1))
    print(f"{'file':<{name_width}}  " + "  ".join(titles).rstrip())
    predictions, skipped = [], 0
    bar = tqdm(total=len(files), unit="img", desc="predict", disable=not runtime.progress, dynamic_ncols=True)
    for result in predict(spec, files, topk=topk, runtime=runtime, batch_size=args.batch_size, workers=args.workers):
        if isinstance(result, str):
            skipped += 1
            tqdm.write(f"warning: skipped: {result}", file=sys.stderr)
        else:
            predictions.append(result)
            cells = (f"{f'{name} {p:.4f}':<{cell_width}}" for name, p in zip(result.classes, result.probabilities))
            tqdm.write(f"{result.path!s:<{name_width}}  " + "  ".join(cells).rstrip(), file=sys.stdout)
        bar.update()
    bar.close()
    if not predictions:
        raise TrainingError(f"none of the {len(files)} images could be read")
    if args.csv is not None:
        write_csv(args.csv, predictions, topk)
    print(f"predicted {len(predictions)} image{'s' if len(predictions) > 1 else ''} with {args.weights}"
          + (f"; wrote {args.csv}" if args.csv is not None else ""))
    if skipped:
        print(f"warning: skipped {skipped} unreadable image{'s' if skipped > 1 else ''}", file=sys.stderr)
    return skipped


def cli(argv: Iterable[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return utils.run_cli(lambda: 1 if main(args) else 0, memory_remedy=lambda: "use a smaller --batch-size")


if __name__ == "__main__":
    sys.exit(cli())
