"""The training checkpoint format: what ``last.pth`` and ``best.pth`` hold, writer beside reader.

A checkpoint is a dict of tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``:

    model        the model's state dict, plain keys (no ``module.`` / ``_orig_mod.``)
    optimizer, scheduler, scaler
                 their state dicts (``scaler`` is empty unless fp16 grad scaling ran)
    epoch        epochs completed
    best_acc     best test top-1 accuracy so far (percent; -1 before the first evaluation)
    epoch_state  None after a whole epoch; after a stop signal mid-epoch, the step reached, the epoch's running
                 sums, the augmentation RNG state and what replaying the epoch exactly needs
    world_size   processes that trained it
    args         the run's flags (JSON-able)
    rng          Python, NumPy, torch and CUDA RNG states
    model_config the UPANets arguments: filters, num_classes, blocks, img, head (``UPANets(**model_config)``;
                 checkpoints written before heads existed lack head, which was "exc")
    data         the data set's name, class names (index order), and the normalisation mean and std
    speed_choice the precision and memory layout it trained with, and how they were chosen (tuning.SpeedChoice)

The last three are also in the run's args.json; checkpoints written before they existed lack them.

The original code's ``{'net', 'acc', 'epoch'}`` files hold weights only; :func:`load_model_weights`
reads them too. :func:`inference_spec` turns any of these files into what predict.py and export.py need.
"""
from __future__ import annotations

import argparse
import io
import os
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import data
import utils
from engine import EpochState, Runtime, Trainer
from models.upanets import UPANets, config_repr, config_reprs, describe_state_dict, extract_state_dict
from utils import TrainingError

LAST = "last.pth"
BEST = "best.pth"


def save_checkpoint(state: dict[str, Any], *paths: str | os.PathLike) -> None:
    """``torch.save`` to each path through :func:`utils.atomic_write`: a process killed mid-write leaves the
    previous file intact.

    The checkpoint is serialised in memory, once for all paths: torch's file writer reports a full disk as a
    RuntimeError ("unexpected pos"), while a plain write raises the OSError that names the problem and the path.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for path in paths:
        with utils.atomic_write(path) as f:
            f.write(buffer.getbuffer())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors for bad files.

    ``weights_only`` refuses pickles that would run code on load.
    """
    path = Path(path)
    if path.is_dir():
        raise TrainingError(f"{path} is a folder; give a checkpoint file in it, such as {path / 'best.pth'}")
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is many lines of advice; the one that matters follows "WeightsUnpickler error:".
        details = [" ".join(part.split()) for part in str(e).partition("WeightsUnpickler error:")[2].split("\n\n")]
        reason = next((part for part in details if part), type(e).__name__)
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if unsafe:
            raise TrainingError(
                f"refusing to load {path}: unpickling it would import {unsafe.group(1)}, which can run code; "
                "only checkpoints of tensors and plain Python values are accepted"
            ) from None
        raise TrainingError(
            f"cannot read checkpoint {path}: the file is truncated, corrupt or not a PyTorch checkpoint "
            f"({reason})"
        ) from None
    except Exception as e:  # a damaged or foreign file can fail with almost any exception type
        raise TrainingError(
            f"cannot read checkpoint {path}: the file is truncated, corrupt or not a PyTorch checkpoint "
            f"({type(e).__name__})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise TrainingError(f"{path} is not a checkpoint: expected a dict, got {type(checkpoint).__name__}")
    return checkpoint


def load_model_weights(model: nn.Module, checkpoint: dict[str, Any], source: Path) -> None:
    """Load a checkpoint's weights into ``model`` strictly, or say in one line why they do not fit."""
    try:
        state_dict = extract_state_dict(checkpoint)
    except ValueError as e:
        raise TrainingError(f"{source}: {e}") from None
    try:
        model.load_state_dict(state_dict)
    except RuntimeError:
        expected = model.config
        try:
            found = describe_state_dict(state_dict)
        except ValueError:
            raise TrainingError(f"{source} does not hold UPANets weights (expected {config_repr(expected)})") from None
        remedies = []
        if any(expected[key] != value for key, value in found.items() if key != "head"):
            remedies.append("match --filters/--blocks/--dataset to the checkpoint")
        if found["head"] != expected["head"]:
            remedies.append(f"pass --head {found['head']}")
        held, built = config_reprs(found, expected)
        raise TrainingError(f"{source} holds {held} but this run builds {built}; "
                            f"{' and '.join(remedies) or 'the file is damaged'}") from None


def require_training_state(checkpoint: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint without the optimizer state that resuming needs (best.pth of ours has it; the
    original code's files do not)."""
    if "optimizer" not in checkpoint:
        raise TrainingError(f"{path} holds weights only; it cannot be resumed (start a new run instead)")


@dataclass
class ResumePoint:
    """Where training continues: after ``epoch`` whole epochs, or inside the next one at ``epoch_state``."""

    epoch: int = 0
    best_acc: float = -1.0
    epoch_state: EpochState | None = None


class Checkpointer:
    """Writes and restores the full training state of one run in ``folder`` (timm's CheckpointSaver, smaller).

    ``model`` is the bare model (not DDP- or compile-wrapped), so saved keys are plain.
    Only rank 0 calls :meth:`save`; every rank calls :meth:`restore`.
    """

    def __init__(self, folder: Path, model: nn.Module, trainer: Trainer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, args: argparse.Namespace, runtime: Runtime,
                 metadata: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.model, self.trainer, self.scheduler, self.args, self.runtime = model, trainer, scheduler, args, runtime
        self.metadata = metadata  # JSON-able facts about the run that every checkpoint repeats

    @property
    def last(self) -> Path:
        return self.folder / LAST

    @property
    def best(self) -> Path:
        return self.folder / BEST

    def state(self, epoch: int, best_acc: float, epoch_state: EpochState | None = None) -> dict[str, Any]:
        """The checkpoint after ``epoch`` whole epochs, or mid-epoch at ``epoch_state``."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.trainer.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.trainer.scaler.state_dict(),
            "epoch": epoch,
            "best_acc": best_acc,
            "epoch_state": None if epoch_state is None else {
                **epoch_state.state_dict(), "augment_rng": self.trainer.augment.generator.get_state(),
                **self._replay_key()},
            "world_size": self.runtime.context.world_size,
            "args": utils.jsonable(vars(self.args)),
            "rng": utils.rng_state(),
            **utils.jsonable(self.metadata),
        }

    def save(self, epoch: int, best_acc: float, *, is_best: bool = False,
             epoch_state: EpochState | None = None) -> None:
        """Write ``last.pth`` (and ``best.pth`` when ``is_best``), each atomically."""
        save_checkpoint(self.state(epoch, best_acc, epoch_state), self.last, *([self.best] if is_best else []))

    def restore(self, checkpoint: dict[str, Any], path: Path) -> ResumePoint:
        """Load ``checkpoint`` (read from ``path``), which :meth:`save` wrote, into the model, optimizer,
        scheduler, scaler and RNGs."""
        require_training_state(checkpoint, path)
        load_model_weights(self.model, checkpoint, path)
        try:
            self.trainer.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            if checkpoint["scaler"]:  # empty unless the run used fp16 grad scaling
                self.trainer.scaler.load_state_dict(checkpoint["scaler"])
            utils.set_rng_state(checkpoint["rng"])
            point = ResumePoint(checkpoint["epoch"], checkpoint["best_acc"])
            saved = checkpoint["epoch_state"]
            if saved is not None and self._can_replay(saved, checkpoint["world_size"]):
                point.epoch_state = EpochState.from_state_dict(saved, self.runtime.device)
                self.trainer.augment.generator.set_state(saved["augment_rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise TrainingError(f"{path} is not a complete training checkpoint of this repo "
                                f"({type(e).__name__}: {e}); resume from a {LAST} it wrote") from None
        return point

    def _replay_key(self) -> dict[str, Any]:
        return {"batch_size": self.args.batch_size, "seed": self.args.seed, "device_type": self.runtime.device.type}

    def _can_replay(self, saved: dict[str, Any], world_size: int) -> bool:
        """A mid-epoch position replays exactly only for the same batches and augmentation stream, which a
        single process on the same kind of device reproduces; otherwise that epoch starts again."""
        same = all(saved[key] == value for key, value in self._replay_key().items())
        return same and self.runtime.context.world_size == 1 == world_size


# ----------------------------------------------------------------------------- inference


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
        raise TrainingError(f"{path} does not hold UPANets weights") from None


# What the original code trained, by (classes, image size): its checkpoints hold nothing else to go by.
_ORIGINAL_CODE_DATASETS = {(10, 32): "cifar10", (100, 32): "cifar100", (200, 64): "tiny-imagenet"}


def saved_settings(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    """The ``dataset``, ``filters``, ``blocks``, ``head`` and (for the sets whose image size is a flag)
    ``img_size`` that a checkpoint was trained with, as far as it says: what main.py's flags of those names
    must be to rebuild its model. For the original code's files, the data set their class count and image
    size imply."""
    config = saved_model_config(checkpoint, path)
    dataset = section(checkpoint, "data").get("dataset") or section(checkpoint, "args").get("dataset")
    dataset = data.ORIGINAL_DATASET_NAMES.get(dataset, dataset)
    if dataset is None and "net" in checkpoint:
        dataset = _ORIGINAL_CODE_DATASETS.get((config["num_classes"], config.get("img")))
    settings = {"dataset": dataset, "filters": config.get("filters"), "blocks": config.get("blocks"),
                "head": config.get("head", "exc")}  # checkpoints written before heads existed hold the ExC head
    if dataset in ("folder", "synthetic"):
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
        return data.ORIGINAL_CIFAR_NORMALIZATION
    return None



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
        """(mean, std), or a TrainingError saying what to pass when the checkpoint does not say."""
        if self.mean is None or self.std is None:
            raise TrainingError(f"{self.source} does not say how its inputs were normalised; pass --dataset NAME, "
                                "the data set it was trained on (with --data-dir for a folder)")
        return self.mean, self.std

    def metadata(self) -> dict[str, Any]:
        """JSON-able facts that exported models carry, so that they can be used without this repo."""
        return {"classes": self.classes, "img_size": self.img_size, "mean": self.mean, "std": self.std,
                "input": "float32 (N, 3, img_size, img_size) RGB, (pixels / 255 - mean) / std",
                "output": "logits (N, len(classes))"}


def inference_spec(path: str | os.PathLike, *, classes: Sequence[str] | None = None, img_size: int | None = None,
                   dataset: str | None = None, data_dir: str | os.PathLike | None = None) -> InferenceSpec:
    """Turn a checkpoint (this repo's, older ones of ours, or the original code's) into an :class:`InferenceSpec`.

    The checkpoint's own facts come first; the arguments fill in what it lacks: the model configuration from
    its ``model_config``, else from the weights' shapes (``img_size``, if given, must agree); class names from
    ``classes``, else the checkpoint, else ``dataset`` (or the dataset recorded in its args, or for the original
    code's files the one its class count and image size imply), else "0".."N-1" with a warning; mean/std from
    the checkpoint, else the original code's CIFAR normalisation for its CIFAR checkpoints, else the dataset's.
    """
    path = Path(path)
    checkpoint = load_checkpoint(path)
    config = saved_model_config(checkpoint, path)
    if "img" not in config:  # only the ExC head's weights are sized by the image
        if img_size is None:
            raise TrainingError(f"{path} does not say which image size its model takes; pass --img-size")
        config["img"] = img_size
    elif img_size is not None and img_size != config["img"]:
        raise TrainingError(f"{path} holds a model for {config['img']}x{config['img']} images, "
                            f"not --img-size {img_size}")
    try:
        model = UPANets(**config)
    except (TypeError, ValueError) as e:
        raise TrainingError(f"{path}: {config} does not build a UPANets ({e})") from None
    load_model_weights(model, checkpoint, path)
    model.eval()

    num_classes, warnings = model.num_classes, []
    saved, args = section(checkpoint, "data"), section(checkpoint, "args")
    original = "net" in checkpoint
    named = dataset is not None
    if classes is not None and len(classes) != num_classes:
        raise TrainingError(f"--classes names {len(classes)} classes but the model in {path} has {num_classes} "
                            "outputs")
    dataset = data.ORIGINAL_DATASET_NAMES.get(dataset, dataset)
    if dataset is None:
        dataset = saved_settings(checkpoint, path).get("dataset")
        if dataset is not None and original:  # the original code's files record no data set: a guess
            warnings.append(f"{path} is the original code's checkpoint of a {num_classes}-class model for "
                            f"{model.img}x{model.img} images: taking it for {dataset} (pass --dataset otherwise)")
    names = list(classes) if classes is not None else saved.get("classes")
    mean, std = saved_normalization(checkpoint, dataset) or (None, None)
    if dataset is not None and (names is None or mean is None):
        try:
            info = data.dataset_info(dataset, data_dir, img_size=model.img, seed=args.get("seed", 0))
        except data.DataError as e:
            if named:  # asked for: its failure is the answer
                raise
            info = None  # only recorded in the checkpoint: what it cannot give stays missing
            warnings.append(f"cannot read the class names or normalisation of {dataset}, which {path} was "
                            f"trained on ({e})")
        if info is not None:
            names = names if names is not None else info.classes
            if mean is None:
                mean, std = info.mean, info.std
        if classes is None and names is not None and len(names) != num_classes:
            raise TrainingError(f"{dataset} has {len(names)} classes but the model in {path} has {num_classes} "
                                "outputs; pass the --dataset it was trained on, or --classes")
    if names is None:
        names = [str(i) for i in range(num_classes)]
        warnings.append(f"{path} names no classes: calling them 0..{num_classes - 1} (pass --classes or --dataset)")
    return InferenceSpec(path, model, [str(name) for name in names], None if mean is None else tuple(mean),
                         None if std is None else tuple(std), warnings)
