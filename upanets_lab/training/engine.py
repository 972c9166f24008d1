"""The train and eval steps: what ``main.py`` runs, ``benchmarks/benchmark.py`` times and the other scripts reuse.

    runtime = Runtime(torch.device("cuda"), amp_dtype=torch.bfloat16)
    trainer = Trainer(model, nn.CrossEntropyLoss(), optimizer, scaler, augment)
    state = EpochState.zeros(runtime.device)
    for images, labels in loader:                 # uint8 batches on the device
        train_step(trainer, images, labels, state, runtime)
    stats = evaluate(model, criterion, test_loader, test_transform, runtime)   # fp32 unless eval_amp_dtype is set
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from upanets_lab.data.augment import DeviceTransform, tta_logits
from upanets_lab.data.loading import DeviceLoader
from upanets_lab.errors import UserError
from upanets_lab.training.distributed import DistributedContext, all_reduce_sum

# Steps between host-device synchronisations (progress bar, non-finite loss and stop-signal checks).
SYNC_EVERY = 50


@dataclass
class Runtime:
    """Where and how the steps run: device, autocast precision of training and of evaluation (fp32 unless asked
    for: reported accuracies must not depend on which precision trains fastest on a machine), memory format,
    processes, progress bars."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    context: DistributedContext = field(default_factory=DistributedContext)
    progress: bool = False
    eval_amp_dtype: torch.dtype | None = None
    autocast: torch.autocast = field(init=False, repr=False)
    eval_autocast: torch.autocast = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # One context manager for every step; it is entered once per step, never nested.
        self.autocast = torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        self.eval_autocast = torch.autocast(self.device.type, dtype=self.eval_amp_dtype,
                                            enabled=self.eval_amp_dtype is not None)

    def inputs(self, images: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """A uint8 batch as the model's input: transformed, in the model's memory format."""
        return self.in_layout(transform(images))

    def in_layout(self, inputs: torch.Tensor) -> torch.Tensor:
        """A float batch in the model's memory format."""
        return inputs.contiguous(memory_format=torch.channels_last) if self.channels_last else inputs


@dataclass
class Trainer:
    """What a train step updates: ``model`` is the module it calls (DDP- or compile-wrapped, or not)."""

    model: nn.Module
    criterion: nn.Module  # takes class indices or, under MixUp/CutMix, probabilities
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    augment: DeviceTransform  # uint8 batch -> augmented, normalised float batch (and MixUp/CutMix)
    ema: AveragedModel | None = None  # the weights' moving average, updated every ema_steps steps
    ema_steps: int = 1
    clip_grad_norm: float | None = None
    bare: nn.Module | None = None  # the model without DDP or compile wrappers, which the EMA averages
    ema_copies: bool = False  # during the learning-rate warmup the EMA copies the weights instead of averaging

    def train_through(self, model: nn.Module) -> None:
        """Call ``model`` in the steps from now on: the bare model wrapped by DDP or torch.compile."""
        self.model = model

    def set_warmup(self, warmup: bool) -> None:
        """Whether the epoch about to start is one of the learning-rate warmup's, whose EMA updates copy."""
        self.ema_copies = warmup

    def update_ema(self, step: int) -> None:
        """Average the weights into the EMA model after the optimizer step of ``step`` (0-based in its epoch), on
        every ema_steps-th step, as torchvision's reference does (which restarts the average after each update
        of the warmup, so that the average begins with the weights the warmup ends with)."""
        if self.ema is not None and step % self.ema_steps == 0:
            self.ema.update_parameters(self.bare if self.bare is not None else self.model)
            if self.ema_copies:
                self.ema.n_averaged.fill_(0)


@dataclass
class EpochState:
    """Running sums of one training epoch, kept on the device and saved in mid-epoch checkpoints."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: torch.Tensor
    step: int = 0
    # The first step of this process whose loss was not finite, -1 if none; read at sync points only.
    first_bad_step: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.first_bad_step is None:
            self.first_bad_step = torch.full((), -1, dtype=torch.long, device=self.loss_sum.device)

    @classmethod
    def zeros(cls, device: torch.device) -> EpochState:
        return cls(*(torch.zeros((), dtype=torch.float64, device=device) for _ in range(3)))

    def record(self, loss: torch.Tensor, outputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one step's detached loss and predictions, without a host sync."""
        self.first_bad_step = torch.where((self.first_bad_step < 0) & ~torch.isfinite(loss),
                                          torch.full_like(self.first_bad_step, self.step), self.first_bad_step)
        self.loss_sum += loss * labels.numel()
        self.correct += (outputs.argmax(1) == labels).sum()
        self.seen += labels.numel()
        self.step += 1

    def state_dict(self) -> dict[str, Any]:
        return {"loss_sum": self.loss_sum.cpu(), "correct": self.correct.cpu(), "seen": self.seen.cpu(),
                "step": self.step}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device) -> EpochState:
        return cls(state["loss_sum"].to(device), state["correct"].to(device), state["seen"].to(device), state["step"])


def train_step(trainer: Trainer, images: torch.Tensor, labels: torch.Tensor, state: EpochState,
               runtime: Runtime, indices: torch.Tensor | None = None) -> None:
    """One optimizer step on a uint8 batch (``indices``: the images' places in the training set, which
    alternating flips need): augment and mix, forward and loss under autocast, scaled backward, gradient
    clipping, update, EMA.

    Under MixUp/CutMix the loss takes the mixed targets and accuracy counts each image's dominant label.
    """
    inputs, targets, hits_of = trainer.augment.mix(trainer.augment(images, indices), labels, state.step)
    inputs = runtime.in_layout(inputs)
    with runtime.autocast:
        outputs = trainer.model(inputs)
        loss = trainer.criterion(outputs, targets)
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scaler.scale(loss).backward()
    if trainer.clip_grad_norm is not None:
        trainer.scaler.unscale_(trainer.optimizer)
        nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.clip_grad_norm)
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.update_ema(state.step)
    state.record(loss.detach(), outputs, hits_of)


# ----------------------------------------------------------------------------- stop signals


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag that the training loop checks between steps.

    A second signal restores the default handler, so pressing Ctrl-C twice still stops at once.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():  # Python allows handlers only there
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        signal.signal(signum, signal.SIG_DFL)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)


class Stopped(Exception):
    """Raised after a resumable checkpoint was written because a stop signal arrived."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def agree_across_ranks(stop: StopRequest, bad: bool, context: DistributedContext) -> tuple[bool, bool]:
    """(stop, non-finite loss) as every process sees it: true on one rank is true on all."""
    if not context.enabled:
        return stop.signum is not None, bad
    flags = torch.tensor([float(stop.signum is not None), float(bad)])
    if torch.distributed.get_backend() == "nccl":
        flags = flags.cuda()
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    stopping, any_bad = (bool(flag) for flag in flags.tolist())
    if stopping and stop.signum is None:  # another rank got the signal
        stop.signum = signal.SIGTERM
    return stopping, any_bad


# ----------------------------------------------------------------------------- epochs


def train_one_epoch(trainer: Trainer, loader: DeviceLoader, state: EpochState, runtime: Runtime, *,
                    epoch: int, stop: StopRequest, on_sync: Callable[[EpochState], None] | None = None) -> bool:
    """Train from ``state.step`` to the end of the epoch; return False if a stop signal cut it short.

    ``on_sync`` is called with ``state`` at every sync point, where reading its sums waits for no device work.
    """
    trainer.model.train()
    context = runtime.context
    with tqdm(total=len(loader), initial=state.step, desc=f"epoch {epoch + 1} train", disable=not runtime.progress,
              leave=False, dynamic_ncols=True) as bar:
        for images, labels, indices in loader.iter_from(state.step, with_indices=True):
            train_step(trainer, images, labels, state, runtime, indices)
            bar.update()

            at_sync = state.step % SYNC_EVERY == 0 or state.step == len(loader)
            # A single process may stop at any step; under torchrun the ranks check in together at sync points.
            if at_sync or (stop.signum is not None and not context.enabled):
                bad_step = int(state.first_bad_step)
                stopping, any_bad = agree_across_ranks(stop, bad_step >= 0, context)
                if any_bad:  # checked before a stop saves: never a checkpoint of weights a non-finite loss ruined
                    where = f"step {bad_step + 1}" if bad_step >= 0 else "a step of another process"
                    raise UserError(
                        f"training loss became non-finite at epoch {epoch + 1}, {where}; stopped without "
                        "saving (the last checkpoint is kept). Try a lower --lr or --amp off"
                    )
                if at_sync:
                    bar.set_postfix(loss=f"{state.loss_sum.item() / state.seen.item():.3f}",
                                    acc=f"{100 * state.correct.item() / state.seen.item():.2f}%")
                    if on_sync is not None:
                        on_sync(state)
                if stopping and state.step < len(loader):
                    return False
    return True


def eval_step(model: nn.Module, criterion: nn.Module, images: torch.Tensor, labels: torch.Tensor,
              transform: Callable[[torch.Tensor], torch.Tensor], sums: torch.Tensor, runtime: Runtime,
              tta: str = "none") -> None:
    """Add a uint8 batch's summed loss, top-1 hits, top-5 hits and image count to ``sums`` (float64, on the device).

    ``tta``: the test-time views whose logits are averaged (augment.TTA_MODES).
    """
    inputs = runtime.inputs(images, transform)
    with runtime.eval_autocast:
        outputs = tta_logits(model, inputs, tta)
        loss = criterion(outputs, labels)
    top5 = outputs.topk(min(5, outputs.shape[1]), dim=1).indices
    hits = top5 == labels[:, None]
    sums[0] += loss.double() * labels.numel()
    sums[1] += hits[:, 0].sum()
    sums[2] += hits.any(1).sum()
    sums[3] += labels.numel()


@torch.inference_mode()
def evaluate(model: nn.Module, criterion: nn.Module, loader: DeviceLoader,
             transform: Callable[[torch.Tensor], torch.Tensor], runtime: Runtime, *, tta: str = "none",
             desc: str = "test") -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (percent) over the whole split, all-reduced across processes."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=runtime.device)  # loss, top-1, top-5, images
    for images, labels in tqdm(loader, desc=desc, disable=not runtime.progress, leave=False, dynamic_ncols=True):
        eval_step(model, criterion, images, labels, transform, sums, runtime, tta)
    all_reduce_sum(sums, runtime.context)
    loss_sum, top1, top5_hits, count = sums.tolist()
    return {"loss": loss_sum / count, "acc1": 100 * top1 / count, "acc5": 100 * top5_hits / count, "images": count}
