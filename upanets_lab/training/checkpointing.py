"""A run's checkpoints: what ``last.pth`` and ``best.pth`` hold, the :class:`Checkpointer` that writes them and
restores a run from one (``upanets_lab.checkpoints.read_checkpoint`` reads them, as every other format).

A checkpoint is a dict of tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``:

    model        the model's state dict, plain keys (no ``module.`` / ``_orig_mod.``)
    model_ema    with --model-ema, the weights' moving average (a state dict like ``model``), and
    ema_updates  how many updates it has averaged
    optimizer, scaler
                 their state dicts (``scaler`` is empty unless fp16 grad scaling ran); each optimizer group's
                 ``initial_lr`` is the base of the learning-rate schedule
    scheduler    where the schedule stands: ``base_lrs`` and ``last_epoch`` (epochs completed)
    epoch        epochs completed
    best_acc     best top-1 accuracy so far of the model selection (percent; -1 before the first evaluation):
                 on the validation split with --val-split, else the test set; of the EMA model with --model-ema
    best         the epoch of ``best_acc`` and what was measured then (the test accuracy with --val-split)
    epoch_state  None after a whole epoch; after a stop signal mid-epoch, ``ranks``: each process's position in
                 the epoch (the step reached, its running sums and its augmentation generator's state), and
                 what replaying the epoch exactly needs (batch size, seed, device type; ``world_size``)
    world_size   processes that trained it
    args         the run's flags (JSON-able)
    rng          Python, NumPy, torch and CUDA RNG states
    model_name   the registered model name (``models.create_model``); files written before it existed are
                 "upanets"
    model_config the model's ``config``; for UPANets filters, num_classes, blocks, img, head
                 (``UPANets(**model_config)``; checkpoints written before heads existed lack head, which was "exc")
    model_size   its parameters and GFLOPs per image (one eval-mode forward pass at the run's image size)
    data         the data set's name, where it was (``dir``), class names (index order), the normalisation mean
                 and std, and with --val-split the validation images' indices in the training set
    speed_choice the precision and memory layout it trained with, and how they were chosen (tuning.SpeedChoice)
    provenance   the git commit (and whether the tree had changes), torch, CUDA and cuDNN versions, the device

The last six are also in the run's args.json; checkpoints written before they existed lack them.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from upanets_lab import utils
from upanets_lab.checkpoints import CheckpointRecord, load_model_weights, save_checkpoint
from upanets_lab.errors import UserError
from upanets_lab.files import jsonable
from upanets_lab.training.engine import EpochState, Runtime, Trainer

LAST = "last.pth"
BEST = "best.pth"


@dataclass
class Selection:
    """Model selection so far: the best top-1 accuracy on the selection split (percent, -1 before the first
    evaluation), the epoch it was reached at, and with a validation split what the selected model scored on the
    test set then (``loss``, ``acc1``)."""

    best_acc: float = -1.0
    epoch: int | None = None
    test: dict[str, float] | None = None

    def update(self, acc: float, epoch: int) -> bool:
        """Take a new accuracy of ``epoch`` (1-based); return whether it is a new best."""
        if acc <= self.best_acc:
            return False
        self.best_acc, self.epoch, self.test = acc, epoch, None
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "test": self.test}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> Selection:
        best = checkpoint.get("best") or {}
        return cls(checkpoint["best_acc"], best.get("epoch"), best.get("test"))


def require_training_state(record: CheckpointRecord) -> None:
    """Refuse a checkpoint without the optimizer state that resuming needs (best.pth of ours has it; the
    original code's files do not)."""
    if not record.resumable:
        raise UserError(f"{record.path} holds weights only; it cannot be resumed (start a new run instead)")


@dataclass
class ResumePoint:
    """Where training continues: after ``epoch`` whole epochs, or inside the next one at ``epoch_state``, with
    the augmentation generator at ``augment_state`` (this process's, as the mid-epoch checkpoint saved it)."""

    epoch: int = 0
    selection: Selection = field(default_factory=Selection)
    epoch_state: EpochState | None = None
    augment_state: torch.Tensor | None = None


def epoch_position(state: EpochState, trainer: Trainer) -> dict[str, Any]:
    """One process's place inside an epoch, as a mid-epoch checkpoint keeps it for each process."""
    return {**state.state_dict(), "augment_rng": trainer.augment.generator_state()}


class Checkpointer:
    """Writes and restores the full training state of one run in ``folder`` (timm's CheckpointSaver, smaller).

    ``model`` is the bare model (not DDP- or compile-wrapped), so saved keys are plain.
    Only rank 0 calls :meth:`save`; every rank calls :meth:`restore`.
    """

    def __init__(self, folder: Path, model: nn.Module, trainer: Trainer, args: argparse.Namespace,
                 runtime: Runtime, metadata: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.model, self.trainer, self.args, self.runtime = model, trainer, args, runtime
        self.metadata = metadata  # JSON-able facts about the run that every checkpoint repeats

    @property
    def last(self) -> Path:
        return self.folder / LAST

    @property
    def best(self) -> Path:
        return self.folder / BEST

    def state(self, epoch: int, selection: Selection, positions: list[dict[str, Any]] | None = None
              ) -> dict[str, Any]:
        """The checkpoint after ``epoch`` whole epochs, or inside the next one at ``positions`` (every process's
        :func:`epoch_position`, in rank order)."""
        optimizer, ema = self.trainer.optimizer, self.trainer.ema
        return {
            "model": self.model.state_dict(),
            **({} if ema is None else {"model_ema": ema.module.state_dict(), "ema_updates": int(ema.n_averaged)}),
            "optimizer": optimizer.state_dict(),
            "scheduler": {"base_lrs": [group["initial_lr"] for group in optimizer.param_groups],
                          "last_epoch": epoch},
            "scaler": self.trainer.scaler.state_dict(),
            "epoch": epoch,
            "best_acc": selection.best_acc,
            "best": selection.to_dict(),
            "epoch_state": None if positions is None else {"ranks": positions, **self._replay_key()},
            "world_size": self.runtime.context.world_size,
            "args": jsonable(vars(self.args)),
            "rng": utils.rng_state(),
            **jsonable(self.metadata),
        }

    def save(self, epoch: int, selection: Selection, *, is_best: bool = False,
             positions: list[dict[str, Any]] | None = None) -> None:
        """Write ``last.pth`` (and ``best.pth`` when ``is_best``), each atomically."""
        save_checkpoint(self.state(epoch, selection, positions), self.last, *([self.best] if is_best else []))

    def restore(self, record: CheckpointRecord) -> ResumePoint:
        """Load ``record`` (a checkpoint :meth:`save` wrote) into the model, its EMA, the optimizer, scaler and
        RNGs."""
        path, checkpoint = record.path, record.contents
        require_training_state(record)
        load_model_weights(self.model, record.weights, path)
        try:
            self.trainer.optimizer.load_state_dict(checkpoint["optimizer"])
            if checkpoint["scaler"]:  # empty unless the run used fp16 grad scaling
                self.trainer.scaler.load_state_dict(checkpoint["scaler"])
            if self.trainer.ema is not None and record.ema_weights is not None:  # else the average starts now
                load_model_weights(self.trainer.ema.module, record.ema_weights, path)
                self.trainer.ema.n_averaged.fill_(checkpoint["ema_updates"])
            utils.set_rng_state(checkpoint["rng"])
            point = ResumePoint(checkpoint["epoch"], Selection.from_checkpoint(checkpoint))
            saved = checkpoint["epoch_state"]
            if saved is not None and self._can_replay(saved, checkpoint["world_size"]):
                # Checkpoints written before ``ranks`` existed hold the one process's position at the top level.
                position = saved["ranks"][self.runtime.context.rank] if "ranks" in saved else saved
                point.epoch_state = EpochState.from_state_dict(position, self.runtime.device)
                point.augment_state = position["augment_rng"]
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"{path} is not a complete training checkpoint of this repo "
                            f"({type(e).__name__}: {e}); resume from a {LAST} it wrote") from None
        return point

    def _replay_key(self) -> dict[str, Any]:
        return {"batch_size": self.args.batch_size, "seed": self.args.seed, "device_type": self.runtime.device.type}

    def _can_replay(self, saved: dict[str, Any], world_size: int) -> bool:
        """A mid-epoch position replays exactly only for the same batches and augmentation streams: the same
        batch size, seed, kind of device and number of processes (each resumes its own position); otherwise
        that epoch starts again."""
        same = all(saved[key] == value for key, value in self._replay_key().items())
        # Before ``ranks`` existed a checkpoint kept rank 0's position alone.
        return same and self.runtime.context.world_size == world_size and ("ranks" in saved or world_size == 1)
