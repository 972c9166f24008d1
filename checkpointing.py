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
    model_config the UPANets arguments: filters, num_classes, blocks, img
    data         the data set's name, class names (index order), and the normalisation mean and std
    speed_choice the precision and memory layout it trained with, and how they were chosen (tuning.SpeedChoice)

The last three are also in the run's args.json; checkpoints written before they existed lack them.

The original code's ``{'net', 'acc', 'epoch'}`` files hold weights only; :func:`load_model_weights`
reads them too.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import utils
from engine import EpochState, Runtime, Trainer
from models.upanets import describe_state_dict, extract_state_dict
from utils import TrainingError

LAST = "last.pth"
BEST = "best.pth"


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`utils.atomic_write`: a process killed mid-write leaves the previous file intact."""
    with utils.atomic_write(path) as f:
        torch.save(state, f)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors for bad files.

    ``weights_only`` refuses pickles that would run code on load.
    """
    path = Path(path)
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
        expected = f"UPANets(filters={model.filters}, num_classes={model.num_classes}, blocks={model.blocks}, img={model.img})"
        try:
            found = describe_state_dict(state_dict)
        except ValueError:
            raise TrainingError(f"{source} does not hold UPANets weights (expected {expected})") from None
        raise TrainingError(
            f"{source} holds UPANets({', '.join(f'{k}={v}' for k, v in found.items())}) "
            f"but this run builds {expected}; match --filters/--blocks/--dataset to the checkpoint"
        ) from None


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
        state = self.state(epoch, best_acc, epoch_state)
        save_checkpoint(state, self.last)
        if is_best:
            save_checkpoint(state, self.best)

    def restore(self, checkpoint: dict[str, Any], path: Path) -> ResumePoint:
        """Load ``checkpoint`` (read from ``path``), which :meth:`save` wrote, into the model, optimizer,
        scheduler, scaler and RNGs."""
        if "optimizer" not in checkpoint:
            raise TrainingError(f"{path} holds weights only; it cannot be resumed (start a new run instead)")
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
