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
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from upanets_lab import commandline
from upanets_lab.data.augment import TTA_MODES, DeviceTransform, tta_logits
from upanets_lab.data.decoding import IMG_EXTENSIONS, read_image
from upanets_lab.errors import DataError, UserError
from upanets_lab.files import atomic_write, check_writable
from upanets_lab.inference.trained import InferenceSpec, load_spec
from upanets_lab.training import tuning
from upanets_lab.training.distributed import resolve_device
from upanets_lab.training.engine import Runtime


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = commandline.make_parser("Classify image files with a trained UPANets", add_help=add_help)
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="image files, or folders searched recursively for images")
    commandline.add_checkpoint_args(parser.add_argument_group("checkpoint"))
    output = parser.add_argument_group("output")
    output.add_argument("--topk", default=None, type=int, help="classes shown per image (default: 5, or fewer "
                        "when the model has fewer classes)")
    output.add_argument("--csv", default=None, type=Path, help="also write the predictions to this CSV file")
    commandline.add_progress_arg(output)
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--tta", default="none", choices=TTA_MODES,
                            help="test-time augmentation: the mean logits over flipped (and translated) views")
    evaluation.add_argument("--eval-amp", default="off", choices=tuning.EVAL_AMP_FLAGS,
                            help="autocast precision of the forward passes (off: fp32)")
    speed = parser.add_argument_group("speed")
    commandline.add_batch_size_arg(speed, 64, "images per forward pass")
    commandline.add_workers_arg(speed)
    commandline.add_device_args(speed)
    return parser


def find_images(paths: Sequence[Path]) -> list[Path]:
    """The files named, and the images (IMG_EXTENSIONS) under the folders named, each folder's sorted."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    if not files:
        raise UserError(f"no images ({', '.join(IMG_EXTENSIONS)}) found under {', '.join(map(str, paths))}")
    return list(dict.fromkeys(files))  # a file named twice is predicted once


class ImageFiles(Dataset):
    """Image files decoded for the model; an unreadable one gives a blank image and its error message."""

    def __init__(self, files: Sequence[Path], img_size: int) -> None:
        self.files, self.img_size = list(files), img_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        try:
            return read_image(self.files[i], self.img_size), ""
        except DataError as e:
            return torch.zeros(3, self.img_size, self.img_size, dtype=torch.uint8), str(e)


@dataclass
class Prediction:
    path: Path
    classes: list[str]  # top-k, most probable first
    probabilities: list[float]


@torch.inference_mode()
def predict(spec: InferenceSpec, files: Sequence[Path], *, topk: int, runtime: Runtime, batch_size: int,
            workers: int = 0, tta: str = "none") -> Iterator[Prediction | str]:
    """Predictions for ``files`` in order, with the error message of each unreadable file in its place."""
    model = spec.model.to(runtime.device).eval()
    transform = DeviceTransform(*spec.normalization(), device=runtime.device)
    loader = DataLoader(ImageFiles(files, spec.img_size), batch_size=batch_size, num_workers=workers)
    start = 0
    for images, errors in loader:
        readable = [i for i, error in enumerate(errors) if not error]
        tops = iter(())
        if readable:
            inputs = runtime.inputs(images[readable].to(runtime.device), transform)
            with runtime.eval_autocast:
                logits = tta_logits(model, inputs, tta)
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
    with atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(csv_header(topk))
        for p in predictions:
            writer.writerow([str(p.path), *(cell for name, prob in zip(p.classes, p.probabilities)
                                             for cell in (name, f"{prob:.6f}"))])


def check_args(args: argparse.Namespace) -> None:
    positive = {"--batch-size": args.batch_size} if args.topk is None else {"--topk": args.topk,
                                                                            "--batch-size": args.batch_size}
    commandline.check_flag_ranges(positive=positive, non_negative={"--workers": args.workers})
    if args.csv is not None:
        check_writable(args.csv.parent)


def main(args: argparse.Namespace) -> int:
    """Predict, print the table (and write --csv); return how many unreadable images were skipped."""
    check_args(args)
    files = find_images(args.paths)
    spec = load_spec(args)
    spec.normalization()  # a checkpoint that does not say how inputs were normalised fails before any output
    num_classes = len(spec.classes)
    if args.topk is not None and args.topk > num_classes:
        raise UserError(f"--topk {args.topk} exceeds the model's {num_classes} classes")
    topk = args.topk or min(5, num_classes)
    device = resolve_device(args.device)
    tuning.amp_candidates(args.eval_amp, device, "--eval-amp")  # before any prediction
    runtime = Runtime(device, progress=not args.no_progress and sys.stderr.isatty(),
                      eval_amp_dtype=tuning.autocast_dtype(args.eval_amp))

    name_width = max(len(str(f)) for f in files)
    cell_width = max(len(name) for name in spec.classes) + 7  # "name 0.1234"
    titles = (f"{f'top-{rank}':<{cell_width}}" for rank in range(1, topk + 1))
    print(f"{'file':<{name_width}}  " + "  ".join(titles).rstrip())
    predictions, skipped = [], 0
    bar = tqdm(total=len(files), unit="img", desc="predict", disable=not runtime.progress, dynamic_ncols=True)
    for result in predict(spec, files, topk=topk, runtime=runtime, batch_size=args.batch_size, workers=args.workers,
                          tta=args.tta):
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
        raise UserError(f"none of the {len(files)} images could be read")
    if args.csv is not None:
        write_csv(args.csv, predictions, topk)
    print(f"predicted {len(predictions)} image{'s' if len(predictions) > 1 else ''} with {args.weights}"
          + (f"; wrote {args.csv}" if args.csv is not None else ""))
    if skipped:
        print(f"warning: skipped {skipped} unreadable image{'s' if skipped > 1 else ''}", file=sys.stderr)
    return skipped


def cli(argv: Iterable[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return commandline.run_cli(lambda: 1 if main(args) else 0, memory_remedy=lambda: "use a smaller --batch-size")


if __name__ == "__main__":
    sys.exit(cli())
