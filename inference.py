"""Using a trained checkpoint: what it records about its run (model, data set, normalisation, class names),
the one resolver that fills the flags a user left out from it, and :class:`InferenceSpec`, what predict.py,
export.py and the evaluation of a checkpoint need to run its model.

Checkpoints written by ``checkpointing.Checkpointer`` record all of it; older ones of ours and the original
code's ``{'net', 'acc', 'epoch'}`` files record less, and the readers here say what they can from the weights.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from checkpointing import load_checkpoint, load_model_weights
from errors import DataError, UserError, one_line
from models.upanets import UPANets, check_config, describe_state_dict, extract_state_dict

# What --dataset, --filters, --blocks and --head mean when they are left out and no checkpoint says.
DEFAULT_SETTINGS = {"dataset": "cifar10", "filters": 16, "blocks": 1, "head": "exc"}


def section(checkpoint: dict[str, Any], key: str) -> dict[str, Any]:
    """A checkpoint's ``key`` entry (args, data, model_config, ...) when it is a dict, else an empty one: older
    checkpoints and the original code's lack most of them."""
    value = checkpoint.get(key)
    return value if isinstance(value, dict) else {}


def saved_model_config(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    """The UPANets arguments a checkpoint was saved from: its ``model_config``, else what its weights' shapes
    say (no ``img`` for heads whose weights do not depend on it)."""
    config = checkpoint.get("model_config")
    if isinstance(config, dict):
        return dict(config)
    try:
        return describe_state_dict(extract_state_dict(checkpoint))
    except ValueError:
        raise UserError(f"{path} does not hold UPANets weights") from None


# What the original code trained, by (classes, image size): its checkpoints hold nothing else to go by.
_ORIGINAL_CODE_DATASETS = {(10, 32): "cifar10", (100, 32): "cifar100", (200, 64): "tiny-imagenet"}


def saved_settings(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    """The ``dataset``, ``filters``, ``blocks``, ``head`` and (for the sets whose image size is a flag)
    ``img_size`` that a checkpoint was trained with, as far as it says: what main.py's flags of those names
    must be to rebuild its model. For the original code's files, the data set their class count and image
    size imply."""
    config = saved_model_config(checkpoint, path)
    dataset = section(checkpoint, "data").get("dataset") or section(checkpoint, "args").get("dataset")
    dataset = datasets.ORIGINAL_DATASET_NAMES.get(dataset, dataset)
    if dataset is None and "net" in checkpoint:
        dataset = _ORIGINAL_CODE_DATASETS.get((config["num_classes"], config.get("img")))
    settings = {"dataset": dataset, "filters": config.get("filters"), "blocks": config.get("blocks"),
                "head": config.get("head", "exc")}  # checkpoints written before heads existed hold the ExC head
    if dataset in datasets.FREE_SIZE_DATASETS:
        settings["img_size"] = config.get("img")
    return {key: value for key, value in settings.items() if value is not None}


def saved_normalization(checkpoint: dict[str, Any], dataset: str | None) -> tuple[Sequence[float], ...] | None:
    """(mean, std) that a checkpoint's inputs were normalised with, when the checkpoint tells: its recorded
    ones, or for the original code's CIFAR checkpoints that code's single CIFAR mean/std; else None."""
    saved = section(checkpoint, "data")
    if saved.get("mean") is not None and saved.get("std") is not None:
        return saved["mean"], saved["std"]
    if "net" in checkpoint and dataset in ("cifar10", "cifar100"):
        # The original code normalised both CIFARs with one mean/std: its weights expect those inputs.
        return datasets.ORIGINAL_CIFAR_NORMALIZATION
    return None



def chosen_weights(checkpoint: dict[str, Any], raw: bool = False) -> tuple[dict[str, Any], str]:
    """(what to load the model from, "ema" or "raw"): the EMA weights of a checkpoint that holds them
    (--model-ema), unless ``raw``; else the trained weights."""
    if not raw and isinstance(checkpoint.get("model_ema"), dict):
        return {"model": checkpoint["model_ema"]}, "ema"
    return checkpoint, "raw"


def fill_settings(args: argparse.Namespace, checkpoint: dict[str, Any] | None, path: Path | None,
                  defaults: Mapping[str, Any] = DEFAULT_SETTINGS) -> dict[str, Any]:
    """Give the flags left out (None) among ``defaults``' keys and ``img_size`` the values that ``checkpoint``
    (read from ``path``) records, else ``defaults``' ones; then check ``--img-size`` against the data set.

    Returns the values taken from the checkpoint. Flags given on the command line are kept, so a checkpoint
    that does not match them is refused where its weights are loaded, with what it holds. ``img_size`` is taken
    only for the data set the checkpoint was trained on.
    """
    saved = {} if checkpoint is None else saved_settings(checkpoint, path)
    taken = {}
    for key, default in defaults.items():
        if getattr(args, key) is None:
            if key in saved:
                taken[key] = saved[key]
            setattr(args, key, saved.get(key, default))
    if args.img_size is None and "img_size" in saved and args.dataset == saved["dataset"]:
        args.img_size = taken["img_size"] = saved["img_size"]
    check_img_size(args.dataset, args.img_size, f" (which {path} was trained on)" if "dataset" in taken else "")
    return taken


def check_img_size(dataset: str | None, img_size: int | None, note: str = "") -> None:
    """Refuse an ``--img-size`` that the data set does not take, or that no model can use (``note`` says where
    the data set came from)."""
    if img_size is None:
        return
    if dataset not in (None, *datasets.FREE_SIZE_DATASETS):
        raise UserError(f"--img-size applies to --dataset {' or '.join(datasets.FREE_SIZE_DATASETS)}, "
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
    model: UPANets
    classes: list[str]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    warnings: list[str] = field(default_factory=list)

    @property
    def img_size(self) -> int:
        return self.model.img

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
    path = Path(path)
    checkpoint = load_checkpoint(path)
    model, which = _trained_model(checkpoint, path, img_size, raw_weights)
    num_classes, warnings = model.num_classes, []
    if which == "ema":
        warnings.append(f"{path}: using its EMA weights (--raw-weights for the trained ones)")
    if classes is not None and len(classes) != num_classes:
        raise UserError(f"--classes names {len(classes)} classes but the model in {path} has {num_classes} "
                        "outputs")
    named = dataset is not None
    settings = argparse.Namespace(dataset=datasets.ORIGINAL_DATASET_NAMES.get(dataset, dataset), img_size=None)
    if "dataset" in fill_settings(settings, checkpoint, path, {"dataset": None}) and "net" in checkpoint:
        # The original code's files record no data set: the one their class count and image size imply.
        warnings.append(f"{path} is the original code's checkpoint of a {num_classes}-class model for "
                        f"{model.img}x{model.img} images: taking it for {settings.dataset} (pass --dataset "
                        "otherwise)")
    names = list(classes) if classes is not None else section(checkpoint, "data").get("classes")
    mean, std = saved_normalization(checkpoint, settings.dataset) or (None, None)
    if settings.dataset is not None and (names is None or mean is None):
        info = _dataset_info_or_warning(settings.dataset, data_dir, model.img, checkpoint, path, named, warnings)
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
    return InferenceSpec(path, model, [str(name) for name in names], None if mean is None else tuple(mean),
                         None if std is None else tuple(std), warnings)


def _trained_model(checkpoint: dict[str, Any], path: Path, img_size: int | None,
                   raw_weights: bool) -> tuple[UPANets, str]:
    """The checkpoint's model on the CPU in eval mode with its weights (see :func:`chosen_weights`)."""
    config = saved_model_config(checkpoint, path)
    if "img" not in config:  # only the ExC head's weights are sized by the image
        if img_size is None:
            raise UserError(f"{path} does not say which image size its model takes; pass --img-size")
        config["img"] = img_size
    elif img_size is not None and img_size != config["img"]:
        raise UserError(f"{path} holds a model for {config['img']}x{config['img']} images, "
                        f"not --img-size {img_size}")
    try:
        model = UPANets(**config)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: {config} does not build a UPANets ({e})") from None
    weights, which = chosen_weights(checkpoint, raw_weights)
    load_model_weights(model, weights, path)
    return model.eval(), which


def _dataset_info_or_warning(dataset: str, data_dir: str | os.PathLike | None, img_size: int,
                             checkpoint: dict[str, Any], path: Path, named: bool,
                             warnings: list[str]) -> DatasetInfo | None:
    """:func:`dataset_info` of the set a model was trained on; when it cannot be read, the error if the set was
    ``named`` by the caller (then its failure is the answer), else None and a warning (only the checkpoint
    recorded it: what it cannot give stays missing)."""
    try:
        return dataset_info(dataset, data_dir, img_size=img_size, seed=section(checkpoint, "args").get("seed", 0))
    except DataError as e:
        if named:
            raise
        warnings.append(f"cannot read the class names or normalisation of {dataset}, which {path} was "
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
    name = datasets.ORIGINAL_DATASET_NAMES.get(name, name)
    if name in datasets.CIFAR_SPECS:
        spec = datasets.CIFAR_SPECS[name]
        return DatasetInfo(list(_CIFAR_CLASSES[name]), spec.mean, spec.std)
    if name == "tiny-imagenet":
        root = None if data_dir is None else Path(data_dir).expanduser() / "tiny-imagenet-200"
        classes = datasets.tiny_imagenet_classes(root) if root is not None and root.is_dir() else None
        return DatasetInfo(classes, datasets.IMAGENET_MEAN, datasets.IMAGENET_STD)
    if name == "folder" and data_dir is None:
        raise DataError("a folder data set's class names and mean/std come from its images: give its data dir")
    if name in datasets.FREE_SIZE_DATASETS:
        bundle = datasets.load_data(name, data_dir or ".", img_size=img_size, seed=seed)
        return DatasetInfo(list(bundle.classes), bundle.mean, bundle.std)
    raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(datasets.DATASETS)}")

