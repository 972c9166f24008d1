"""Using a trained checkpoint: the one resolver that fills the flags a user left out from what a checkpoint records,
and :class:`InferenceSpec`, what predict.py, export.py and the evaluation of a checkpoint need to run its model.

What a file holds is read by ``upanets_lab.checkpoints.read_checkpoint``, in every format accepted.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from models import model_entry
from models.upanets import check_config
from upanets_lab.checkpoints import CheckpointRecord, build_model, read_checkpoint
from upanets_lab.commandline import DEFAULT_DATA_DIR
from upanets_lab.data import catalog, sources
from upanets_lab.errors import DataError, UserError, one_line

# The settings that are options of some models only (UPANets'): filled in for the models that take them.
MODEL_OPTIONS = ("filters", "blocks", "head")
# What --model, --dataset, --filters, --blocks and --head mean when they are left out and no checkpoint says.
DEFAULT_SETTINGS = {"model": "upanets", "dataset": "cifar10", "filters": 16, "blocks": 1, "head": "exc"}


def fill_settings(args: argparse.Namespace, record: CheckpointRecord | None,
                  defaults: Mapping[str, Any] = DEFAULT_SETTINGS) -> dict[str, Any]:
    """Give the flags left out (None) among ``defaults``' keys and ``img_size`` the values that ``record`` (a
    checkpoint) records, else ``defaults``' ones; then check ``--img-size`` against the data set.

    Returns the values taken from the checkpoint. Flags given on the command line are kept, so a checkpoint
    that does not match them is refused where its weights are loaded, with what it holds. ``img_size`` and
    ``data_dir`` (where the data was) are taken only for the data set the checkpoint was trained on.
    """
    saved = {} if record is None else record.settings()
    taken = {}
    for key, default in defaults.items():
        if key in MODEL_OPTIONS and key not in model_entry(args.model).options:
            continue  # --filters, --blocks, --head mean nothing to a model without them: left out, left None
        if getattr(args, key) is None:
            if key in saved:
                taken[key] = saved[key]
            setattr(args, key, saved.get(key, default))
    same_data = record is not None and args.dataset == record.dataset
    if args.img_size is None and "img_size" in saved and same_data:
        args.img_size = taken["img_size"] = saved["img_size"]
    if getattr(args, "data_dir", DEFAULT_DATA_DIR) is None:  # where the checkpoint's data set was, if still there
        recorded = Path(record.data_dir) if same_data and record.data_dir else None
        args.data_dir = recorded if recorded is not None and recorded.is_dir() else DEFAULT_DATA_DIR
        if args.data_dir != DEFAULT_DATA_DIR:
            taken["data_dir"] = args.data_dir
    note = f" (which {record.path} was trained on)" if "dataset" in taken else ""
    check_img_size(args.dataset, args.img_size, note)
    return taken


def check_img_size(dataset: str | None, img_size: int | None, note: str = "") -> None:
    """Refuse an ``--img-size`` that the data set does not take, or that no model can use (``note`` says where
    the data set came from)."""
    if img_size is None:
        return
    if dataset not in (None, *catalog.FREE_SIZE_DATASETS):
        raise UserError(f"--img-size applies to --dataset {' or '.join(catalog.FREE_SIZE_DATASETS)}, "
                        f"not {dataset}{note}")
    try:
        check_config(4, 1, 1, img_size)
    except ValueError as e:
        raise UserError(str(e).replace("UPANets img", "--img-size")) from None


@dataclass
class InferenceSpec:
    """What running a trained model needs: the model, its class names in output order and its input normalisation.

    ``model`` is on the CPU in eval mode with the weights loaded strictly; it takes (N, 3, img_size, img_size)
    float batches of ``(pixels / 255 - mean) / std``. ``mean``/``std`` are None when nothing says what they were
    (see :meth:`normalization`). ``warnings`` name the guesses made for what the checkpoint does not say.
    """

    source: Path
    model: nn.Module
    img_size: int
    classes: list[str]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    warnings: list[str] = field(default_factory=list)

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std), or a UserError saying what to pass when the checkpoint does not say."""
        if self.mean is None or self.std is None:
            raise UserError(f"{self.source} does not say how its inputs were normalised; pass --dataset NAME, "
                                "the data set it was trained on (with --data-dir for a folder)")
        return self.mean, self.std

    def metadata(self) -> dict[str, Any]:
        """JSON-able facts that exported models carry, so that they can be used without this repo."""
        return {"classes": self.classes, "img_size": self.img_size, "mean": self.mean, "std": self.std,
                "input": "float32 (N, 3, img_size, img_size) RGB, (pixels / 255 - mean) / std",
                "output": "logits (N, len(classes))"}


def inference_spec(path: str | os.PathLike, *, classes: Sequence[str] | None = None, img_size: int | None = None,
                   dataset: str | None = None, data_dir: str | os.PathLike | None = None,
                   raw_weights: bool = False) -> InferenceSpec:
    """Turn a checkpoint (this repo's, older ones of ours, or the original code's) into an :class:`InferenceSpec`.

    The checkpoint's own facts come first; the arguments fill in what it lacks: the model configuration from
    its ``model_config``, else from the weights' shapes (``img_size``, if given, must agree); its EMA weights
    where it holds them, unless ``raw_weights``; class names from ``classes``, else the checkpoint, else
    ``dataset`` (or the dataset recorded in its args, or for the original code's files the one its class count
    and image size imply), else "0".."N-1" with a warning; mean/std from the checkpoint, else the original
    code's CIFAR normalisation for its CIFAR checkpoints, else the dataset's.
    """
    record = read_checkpoint(path)
    path = record.path
    model, which = build_model(record, img=img_size, raw_weights=raw_weights)
    img = img_size or record.model_config["img"]
    num_classes, warnings = record.model_config["num_classes"], []
    if which == "ema":
        warnings.append(f"{path}: using its EMA weights (--raw-weights for the trained ones)")
    if classes is not None and len(classes) != num_classes:
        raise UserError(f"--classes names {len(classes)} classes but the model in {path} has {num_classes} "
                        "outputs")
    named = dataset is not None
    settings = argparse.Namespace(dataset=catalog.canonical_dataset(dataset), img_size=None)
    if "dataset" in fill_settings(settings, record, {"dataset": None}) and record.format in (
            "original", "pytorch-cifar"):
        # These files record no data set: the one their class count and image size imply.
        whose = "the original code's" if record.format == "original" else "pytorch-cifar's"
        warnings.append(f"{path} is {whose} checkpoint of a {num_classes}-class model for "
                        f"{img}x{img} images: taking it for {settings.dataset} (pass --dataset "
                        "otherwise)")
    names = list(classes) if classes is not None else record.classes
    mean, std = record.normalization(settings.dataset) or (None, None)
    if settings.dataset is not None and (names is None or mean is None):
        info = _dataset_info_or_warning(settings.dataset, data_dir, img, record, named, warnings)
        if info is not None:
            names = names if names is not None else info.classes
            if mean is None:
                mean, std = info.mean, info.std
        if classes is None and names is not None and len(names) != num_classes:
            raise UserError(f"{settings.dataset} has {len(names)} classes but the model in {path} has "
                            f"{num_classes} outputs; pass the --dataset it was trained on, or --classes")
    if names is None:
        names = [str(i) for i in range(num_classes)]
        warnings.append(f"{path} names no classes: calling them 0..{num_classes - 1} (pass --classes or --dataset)")
    return InferenceSpec(path, model, img, [str(name) for name in names], None if mean is None else tuple(mean),
                         None if std is None else tuple(std), warnings)


def _dataset_info_or_warning(dataset: str, data_dir: str | os.PathLike | None, img_size: int,
                             record: CheckpointRecord, named: bool, warnings: list[str]) -> DatasetInfo | None:
    """:func:`dataset_info` of the set a model was trained on; when it cannot be read, the error if the set was
    ``named`` by the caller (then its failure is the answer), else None and a warning (only the checkpoint
    recorded it: what it cannot give stays missing)."""
    try:
        return dataset_info(dataset, data_dir if data_dir is not None else record.data_dir, img_size=img_size,
                            seed=record.seed)
    except DataError as e:
        if named:
            raise
        warnings.append(f"cannot read the class names or normalisation of {dataset}, which {record.path} was "
                        f"trained on ({e})")
        return None


def load_spec(args: argparse.Namespace) -> InferenceSpec:
    """The checkpoint and flags of ``commandline.add_checkpoint_args`` as an :class:`InferenceSpec`; prints its
    warnings."""
    classes = None if args.classes is None else read_class_names(args.classes)
    spec = inference_spec(args.weights, classes=classes, img_size=args.img_size, dataset=args.dataset,
                          data_dir=args.data_dir, raw_weights=args.raw_weights)
    for warning in spec.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return spec


def read_class_names(value: str) -> list[str]:
    """``--classes``: a text file with one name per line, or a comma-separated list."""
    path = Path(value)
    if path.is_file():
        try:
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--classes {value}: cannot read it ({one_line(e)})") from None
    elif os.sep in value or path.suffix == ".txt":  # meant as a file, not a class name
        raise UserError(f"--classes {value}: no such file")
    else:
        names = [name.strip() for name in value.split(",")]
    if not names or not all(names):
        raise UserError(f"--classes {value!r}: expected names separated by commas, or a file with one per line")
    return names


# ---------------------------------------------------------------------------------- what inference needs

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
    name = catalog.canonical_dataset(name)
    if name in catalog.CIFAR_CLASSES:
        return DatasetInfo(list(catalog.CIFAR_CLASSES[name]), *catalog.CIFAR_NORMALIZATION[name])
    if name == "tiny-imagenet":
        root = None if data_dir is None else Path(data_dir).expanduser() / "tiny-imagenet-200"
        classes = sources.tiny_imagenet_classes(root) if root is not None and root.is_dir() else None
        return DatasetInfo(classes, catalog.IMAGENET_MEAN, catalog.IMAGENET_STD)
    if name == "folder" and data_dir is None:
        raise DataError("a folder data set's class names and mean/std come from its images: give its data dir")
    if name in catalog.FREE_SIZE_DATASETS:
        bundle = sources.load_data(name, data_dir or ".", img_size=img_size, seed=seed)
        return DatasetInfo(list(bundle.classes), bundle.mean, bundle.std)
    raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(catalog.DATASETS)}")

