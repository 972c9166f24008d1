"""Write a small real data set in a format main.py reads, with no network: scikit-learn's handwritten digits.

    python sampledata.py digits data/digits --size 16 --train 1400         # an image folder: --dataset folder
    python sampledata.py digits data/digits-cifar --format cifar10          # CIFAR-10 files: --dataset cifar10

The builders (CIFAR, Tiny ImageNet and image-folder files of any content) are in upanets_lab.data.samples.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from upanets_lab import commandline
from upanets_lab.data.samples import digits, write_cifar10, write_image_folder


def main(argv: Sequence[str] | None = None) -> None:
    """``python sampledata.py digits ROOT``: write the digits set for main.py's --dataset folder or cifar10."""
    parser = commandline.make_parser("Write scikit-learn's digits as a data set main.py reads")
    parser.add_argument("set", choices=("digits",), help="the set to write")
    parser.add_argument("root", type=Path, help="the --data-dir to write it into")
    parser.add_argument("--format", default="folder", choices=("folder", "cifar10"),
                        help="folder: ROOT/{train,val}/<digit>/<i>.png; cifar10: ROOT/cifar-10-batches-py")
    parser.add_argument("--size", default=32, type=int, help="image size (cifar10 needs 32)")
    parser.add_argument("--train", default=1500, type=int, help="training images (of 1,797); the rest are val/test")
    parser.add_argument("--seed", default=0, type=int, help="seed of the train/test shuffle")
    args = parser.parse_args(argv)
    if args.format == "cifar10" and args.size != 32:
        parser.error("--format cifar10 holds 32x32 images: use --size 32")
    if not 0 < args.train < 1797:
        parser.error(f"--train must be between 1 and 1,796, got {args.train}")
    fake = digits(size=args.size, n_train=args.train, seed=args.seed)
    (write_image_folder if args.format == "folder" else write_cifar10)(args.root, fake)
    print(f"wrote {len(fake.train_labels)} train and {len(fake.test_labels)} test digits "
          f"({args.size}x{args.size}) to {args.root}")


if __name__ == "__main__":
    main(sys.argv[1:])
