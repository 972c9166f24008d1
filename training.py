"""A training run of ``main.py``: where it writes and what it resumes, its set-up (device, data, model, speed
choice), the recipe it trains with, and the epoch loop, whose evaluation selects the model that best.pth keeps.

    run = set_up(args, context, checkpoint=None)
    model = train(args, run, RunFolders.for_training(args, context), StopRequest(), checkpoint=None)
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import augment_ops
import datasets
import tuning
import utils
from augment import DeviceTransform, Mixing
from checkpointing import Checkpointer, ResumePoint, Selection, epoch_position, load_checkpoint
from distributed import DistributedContext, all_reduce_sum, gather_objects, main_process_first, resolve_device
from engine import EpochState, Runtime, Stopped, StopRequest, Trainer, agree_across_ranks, evaluate, train_one_epoch
from errors import UserError, one_line
from files import check_writable, read_json, write_json
from loading import DeviceLoader
from metrics import EpochLogger
from models.upanets import UPANets
from optimization import Schedule, build_ema, build_optimizer, set_lr


@dataclass(frozen=True)
class RunFolders:
    """Where a training run writes: checkpoints, and metrics/curves/args; and what it resumes from."""

    checkpoints: Path
    results: Path
    resume: Path | None

    @classmethod
    def for_training(cls, args: argparse.Namespace, context: DistributedContext = DistributedContext()) -> RunFolders:
        """Check the folders can be written and pick the checkpoint to resume, before any data is loaded.

        Refuses to clobber an existing run that is not being resumed. A group that torchrun restarted after a
        failure resumes the last.pth that this torchrun job wrote, whatever --resume and --overwrite say, since
        it holds the progress made before the crash; without one, it starts as the first start did.
        """
        checkpoints, results = args.checkpoint_dir / args.run_name, args.save_path / args.run_name
        for folder in (checkpoints, results):
            check_writable(folder)
        last = checkpoints / "last.pth"
        restarted = context.restart > 0
        if restarted and last.is_file() and _of_this_job(load_checkpoint(last), context):
            return cls(checkpoints, results, last)
        if args.resume is None:
            # A restart before the first checkpoint finds what its own first start wrote (args.json, a metrics
            # row): no other run's files.
            own_files = restarted and _of_this_job(read_json(results / "args.json"), context)
            for existing in (last, results / "metrics.jsonl"):
                if existing.exists() and not args.overwrite and not own_files:
                    raise UserError(
                        f"run '{args.run_name}' already exists ({existing}); pass --resume auto to continue it, "
                        "--overwrite to start it over, or choose another --run-name"
                    )
            return cls(checkpoints, results, None)
        path = last if args.resume == "auto" else Path(args.resume)
        if not path.is_file():
            raise UserError(f"--resume {args.resume}: no checkpoint at {path}")
        return cls(checkpoints, results, path)


def _of_this_job(record: Any, context: DistributedContext) -> bool:
    """Whether a checkpoint or args.json (a dict with "job") was written by this torchrun job."""
    return context.job is not None and isinstance(record, dict) and record.get("job") == context.job


# ----------------------------------------------------------------------------- set-up


@dataclass
class Run:
    """What evaluation and training share once the data and the model are set up."""

    runtime: Runtime
    speed: tuning.SpeedChoice
    bundle: datasets.DataBundle
    model: UPANets  # on its device and in its memory format; never wrapped
    criterion: nn.Module  # the evaluation loss: plain cross entropy
    test_loader: DeviceLoader
    test_transform: DeviceTransform
    val_loader: DeviceLoader | None = None  # with --val-split: the held-out training images
    val_split: datasets.ValidationSplit | None = None


def set_up(args: argparse.Namespace, context: DistributedContext, checkpoint: dict[str, Any] | None) -> Run:
    """The device; the data (and its validation split); the model; its precision and memory layout; the
    evaluation loaders.

    ``checkpoint`` is the one to resume or evaluate, whose precision and layout a run keeps when the flags allow.
    """
    device = resolve_device(args.device, context)
    # An --amp or --eval-amp the device cannot run fails before the data loads.
    tuning.amp_candidates(args.amp, device)
    if args.eval_amp != "train":
        tuning.amp_candidates(args.eval_amp, device, "--eval-amp")
    if args.sync_bn and device.type != "cuda":  # checked on the device --device auto resolves to
        raise UserError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    bundle, val, val_split = load_training_data(args, context)
    # Seeded here, after the steps that run only sometimes (a first download, decoding into a cold cache): the
    # model's initial weights, and every draw after them, are then the same however the data was found.
    utils.seed_everything(args.seed)
    model = UPANets(args.filters, bundle.num_classes, args.blocks, bundle.img_size, head=args.head)
    if context.is_main:  # counting FLOPs runs a forward pass; the other ranks would print nothing anyway
        head = "" if args.head == "exc" else f", head={args.head}"
        print(f"model: UPANets{args.filters} (blocks={args.blocks}{head}), "
              f"{utils.count_parameters(model):,} parameters, "
              f"{utils.forward_flops(model, bundle.img_size) / 1e9:.3f} GFLOPs per image")
    train = not args.evaluate
    speed = tuning.choose(model, amp_flag=args.amp if train else eval_amp_flag(args), device=device,
                          channels_last_flag=args.channels_last, batch_size=args.batch_size, train=train,
                          context=context, stored=(checkpoint or {}).get("speed_choice"))
    context.print0(speed.describe())
    runtime = Runtime(device, amp_dtype=speed.amp_dtype if train else None, channels_last=speed.channels_last,
                      context=context, progress=context.is_main and not args.no_progress and sys.stderr.isatty(),
                      eval_amp_dtype=eval_amp_dtype(args, speed))
    model.to(device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)

    def loader(split: datasets.ImageDataset | datasets.StreamingDataset) -> DeviceLoader:
        return DeviceLoader(split, args.batch_size, shuffle=False, device=device, rank=context.rank,
                            world_size=context.world_size, workers=args.workers)

    return Run(runtime, speed, bundle, model, nn.CrossEntropyLoss(), loader(bundle.test),
               DeviceTransform(bundle.mean, bundle.std, device=device),
               None if val is None else loader(val.test), val_split)


def load_training_data(args: argparse.Namespace, context: DistributedContext
                       ) -> tuple[datasets.DataBundle, datasets.DataBundle | None, datasets.ValidationSplit | None]:
    """The data set (rank 0 downloads and caches it first), and with --val-split its hold-out: (the bundle to
    train on, the bundle whose test split is the validation images, the split)."""
    with main_process_first(context):
        bundle = datasets.load_data(args.dataset, args.data_dir, download=args.download, img_size=args.img_size,
                                    in_memory=False if args.stream else None, workers=args.workers,
                                    seed=args.seed)
    val = val_split = None
    if args.val_split and not args.evaluate:
        bundle, val, val_split = datasets.split_validation(bundle, args.val_split, args.seed)
    held = f" ({len(val.test)} held out for validation)" if val is not None else ""
    context.print0(f"data: {args.dataset}, {len(bundle.train)} train{held} / {len(bundle.test)} test images, "
                   f"{bundle.num_classes} classes, {bundle.img_size}x{bundle.img_size}")
    return bundle, val, val_split


def eval_amp_flag(args: argparse.Namespace) -> str:
    """The --amp that --evaluate's speed choice may use: its training precision only with --eval-amp train."""
    return args.amp if args.eval_amp == "train" else args.eval_amp


def eval_amp_dtype(args: argparse.Namespace, speed: tuning.SpeedChoice) -> torch.dtype | None:
    """Evaluation's autocast precision: None (fp32) unless --eval-amp asks for the training one or another."""
    return speed.amp_dtype if args.eval_amp == "train" else tuning.autocast_dtype(args.eval_amp)


def compile_if_asked(model: nn.Module, args: argparse.Namespace, runtime: Runtime) -> nn.Module:
    if not args.compile:
        return model
    return tuning.compile_model(model, runtime.device, args.batch_size, distributed=runtime.context.enabled)


def run_metadata(run: Run) -> dict[str, Any]:
    """What using the model needs besides its weights, and how and where it was trained: in args.json and every
    checkpoint (commandline.parse_args skips these keys when an args.json is a --config)."""
    model, bundle = run.model, run.bundle
    data = {"dataset": bundle.name, "classes": list(bundle.classes), "mean": list(bundle.mean),
            "std": list(bundle.std)}
    if run.val_split is not None:
        data["val_split"] = run.val_split.record()
    return {
        "model_config": model.config,
        "data": data,
        "speed_choice": run.speed.to_dict(),
        "job": run.runtime.context.job,  # with --overwrite, a restarted torchrun job resumes only its own last.pth
        "provenance": utils.provenance(run.runtime.device),
    }


# The keys of args.json beside the flags: run_metadata's (which every checkpoint repeats), and RunRecord's.
METADATA_KEYS = ("model_config", "data", "speed_choice", "job", "provenance")
RECORD_KEYS = (*METADATA_KEYS, "command", "status")


# ----------------------------------------------------------------------------- the recipe


def build_trainer(args: argparse.Namespace, run: Run) -> Trainer:
    """The optimizer, loss, AMP scaler, augmentation and EMA that the flags (and --recipe) set."""
    runtime, bundle, model = run.runtime, run.bundle, run.model
    optimizer = build_optimizer(model, args.opt, lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay, norm_weight_decay=args.norm_weight_decay)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
    auto_augment = None
    if args.auto_augment != "none":
        auto_augment = augment_ops.AutoAugment(args.auto_augment, num_ops=args.ra_num_ops,
                                               magnitude=args.ra_magnitude)
    mixing = None
    if args.mixup_alpha or args.cutmix_alpha:
        mixing = Mixing(args.mixup_alpha, args.cutmix_alpha, bundle.num_classes)
    augment = DeviceTransform(bundle.mean, bundle.std, device=runtime.device, pad=bundle.pad, flip=True,
                              seed=args.seed, rank=runtime.context.rank, auto_augment=auto_augment,
                              random_erase=args.random_erase, mixing=mixing,
                              alternating_flip=len(bundle.train) if args.alternating_flip else 0)
    ema = None
    if args.model_ema:
        ema = build_ema(model, args.model_ema_decay, steps=args.model_ema_steps, batch_size=args.batch_size,
                        world_size=runtime.context.world_size, epochs=args.epochs)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    return Trainer(model, criterion, optimizer, scaler, augment, ema=ema, ema_steps=args.model_ema_steps,
                   clip_grad_norm=args.clip_grad_norm or None, bare=model)


def schedule_of(args: argparse.Namespace) -> Schedule:
    return Schedule(args.epochs, args.lr_warmup_epochs, args.lr_warmup_method, args.lr_warmup_decay, args.lr_min)


def wrap_for_training(model: nn.Module, args: argparse.Namespace, runtime: Runtime) -> tuple[nn.Module, nn.Module]:
    """(the module a train step calls, the one evaluation calls): with --sync-bn under torchrun the BatchNorm
    layers become SyncBatchNorm (in place), then torch.compile and DistributedDataParallel as the flags say."""
    context = runtime.context
    if args.sync_bn and context.enabled:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # swaps the BatchNorm layers in place
    eval_model = compile_if_asked(model, args, runtime)
    if not context.enabled:
        return eval_model, eval_model
    ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(eval_model, device_ids=ids), eval_model


# ----------------------------------------------------------------------------- evaluation and selection


def evaluate_epoch(args: argparse.Namespace, run: Run, models: dict[str, nn.Module], selection: Selection,
                   epoch: int, step: int) -> tuple[dict[str, float], bool]:
    """Evaluate after ``epoch`` (0-based; ``step`` its last step) and update the model selection.

    ``models`` maps a metrics prefix to a model: "" for the trained one, "ema_" for its average. Every model
    is evaluated on the selection split (the validation images with --val-split, else the test set), and with
    --val-split also on the test set when the selected model (the EMA one when there is one) reaches a new best.
    Returns the metrics (``{prefix}{split}_loss``, ``_acc``, ``_acc5``) and whether it is a new best.
    """
    context = run.runtime.context
    if context.enabled:  # DDP syncs BatchNorm statistics only at the next forward: evaluate and save rank 0's
        for model in models.values():
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, 0)
    split = "val" if run.val_loader is not None else "test"
    selected = "ema_" if "ema_" in models else ""
    scores = measure(args, run, models, split, epoch, step)
    is_best = selection.update(scores[f"{selected}{split}_acc"], epoch + 1)
    if is_best and split == "val":
        tested = measure(args, run, models, "test", epoch, step)
        scores.update(tested)
        selection.test = {"loss": tested[f"{selected}test_loss"], "acc1": tested[f"{selected}test_acc"]}
    return scores, is_best


def measure(args: argparse.Namespace, run: Run, models: dict[str, nn.Module], split: str, epoch: int,
            step: int) -> dict[str, float]:
    """Loss, top-1 and top-5 of each model on ``split`` (val or test); a non-finite loss stops the run."""
    loader = run.val_loader if split == "val" else run.test_loader
    scores = {}
    for prefix, model in models.items():
        stats = evaluate(model, run.criterion, loader, run.test_transform, run.runtime, tta=args.tta, desc=split)
        if not math.isfinite(stats["loss"]):  # the last step's update can ruin weights after a finite training loss
            name = {"val": "validation", "test": "test"}[split]
            raise UserError(
                f"{name} loss became non-finite after epoch {epoch + 1}, step {step}; stopped without "
                "saving (the last checkpoint is kept). Try a lower --lr or --amp off"
            )
        scores.update({f"{prefix}{split}_loss": stats["loss"], f"{prefix}{split}_acc": stats["acc1"],
                       f"{prefix}{split}_acc5": stats["acc5"]})
    return scores


# ----------------------------------------------------------------------------- the epoch loop


def train(args: argparse.Namespace, run: Run, folders: RunFolders, stop: StopRequest,
          checkpoint: dict[str, Any] | None) -> nn.Module:
    """Resume from ``checkpoint`` or start, then train the epochs, evaluating and saving after each.

    Returns the bare model.
    """
    runtime, context, model = run.runtime, run.runtime.context, run.model
    trainer = build_trainer(args, run)
    metadata = run_metadata(run)
    checkpointer = Checkpointer(folders.checkpoints, model, trainer, args, runtime, metadata)
    start = resume(checkpointer, checkpoint, folders.resume, context, metadata)
    trainer.model, eval_model = wrap_for_training(model, args, runtime)
    train_loader = DeviceLoader(run.bundle.train, args.batch_size, shuffle=True, device=runtime.device,
                                seed=args.seed, rank=context.rank, world_size=context.world_size,
                                workers=args.workers)
    loop = EpochLoop(args, run, trainer, checkpointer, train_loader, stop,
                     {"": eval_model, **({} if trainer.ema is None else {"ema_": trainer.ema.module})})
    record = None
    if context.is_main:
        record = RunRecord(folders, args, metadata)
        loop.logger = epoch_logger(args, run, folders, metadata, start, len(train_loader))
    stop.install()  # before the "training" line: a signal sent once it is printed always gets a checkpoint
    context.print0(f"training {args.run_name} for {args.epochs} epoch{'s' if args.epochs > 1 else ''} on "
                   f"{runtime.device} (amp={run.speed.amp}, channels_last={runtime.channels_last}, "
                   f"processes={context.world_size}, global batch {args.batch_size * context.world_size}); "
                   f"evaluation in {'fp32' if runtime.eval_amp_dtype is None else runtime.eval_amp_dtype}")
    with record.tracking() if record is not None else contextlib.nullcontext():
        selection = loop.train(start)
    context.print0(f"done: {describe_selection(run, selection)}; checkpoints in {folders.checkpoints}, "
                   f"metrics in {folders.results}")
    return model


class EpochLoop:
    """The epochs of a run: train, evaluate (selecting the model), log and save after each; ``models`` maps
    a metrics prefix to a model to evaluate (see :func:`evaluate_epoch`); ``logger`` is rank 0's."""

    def __init__(self, args: argparse.Namespace, run: Run, trainer: Trainer, checkpointer: Checkpointer,
                 loader: DeviceLoader, stop: StopRequest, models: dict[str, nn.Module]) -> None:
        self.args, self.run, self.trainer, self.checkpointer = args, run, trainer, checkpointer
        self.loader, self.stop, self.models = loader, stop, models
        self.schedule = schedule_of(args)
        self.logger: EpochLogger | None = None

    def train(self, start: ResumePoint) -> Selection:
        """Train from ``start`` to the last epoch; return the model selection."""
        selection, state, augment_state = start.selection, start.epoch_state, start.augment_state
        try:
            for epoch in range(start.epoch, self.args.epochs):
                started = time.perf_counter()
                trained, step = self.train_epoch(epoch, state, augment_state, selection)
                self.end_epoch(epoch, step, started, trained, selection)
                state = augment_state = None
                if agree_across_ranks(self.stop, False, self.run.runtime.context)[0]:
                    raise Stopped(self.stop.exit_code, f"stopped by signal {self.stop.signum} after epoch "
                                  f"{epoch + 1}; continue by running the same command with --resume auto")
        finally:
            if self.logger is not None:
                self.logger.close()
        return selection

    def train_epoch(self, epoch: int, state: EpochState | None, augment_state: torch.Tensor | None,
                    selection: Selection) -> tuple[dict[str, float], int]:
        """Train ``epoch`` (from ``state`` and ``augment_state``, a resumed mid-epoch position); return its training
        metrics and its last step. A stop signal saves every process's position and raises Stopped.

        Whatever changes from epoch to epoch (the sampler's order, the augmentation's and mixing's draws, the
        flips' parity, the learning rate, the EMA's warmup) is set here from ``epoch`` alone, on every path."""
        trainer, context = self.trainer, self.run.runtime.context
        self.loader.set_epoch(epoch)
        trainer.augment.set_epoch(epoch, augment_state)
        if state is None:
            state = EpochState.zeros(self.run.runtime.device)
        lr = set_lr(trainer.optimizer, self.schedule, epoch)
        trainer.ema_copies = epoch < self.args.lr_warmup_epochs
        started, images_before = time.perf_counter(), state.seen.item()
        on_sync = None if self.logger is None else self.logger.train_loss_log(state, epoch)
        if not train_one_epoch(trainer, self.loader, state, self.run.runtime, epoch=epoch, stop=self.stop,
                               on_sync=on_sync):
            positions = gather_objects(epoch_position(state, trainer), context)
            if context.is_main:
                self.checkpointer.save(epoch, selection, positions=positions)
            raise Stopped(self.stop.exit_code, f"stopped by signal {self.stop.signum} at epoch {epoch + 1}, step "
                          f"{state.step}; continue by running the same command with --resume auto")
        seconds = time.perf_counter() - started
        loss_sum, correct, seen = all_reduce_sum(torch.stack([state.loss_sum, state.correct, state.seen]),
                                                 context).tolist()
        return {"train_loss": loss_sum / seen, "train_acc": 100 * correct / seen, "lr": lr,
                "train_images_per_second": (seen - images_before * context.world_size) / seconds}, state.step

    def end_epoch(self, epoch: int, step: int, started: float, trained: dict[str, float],
                  selection: Selection) -> None:
        """Evaluate after ``epoch`` (whose last step was ``step``, begun at ``started``), then (rank 0) log its
        metrics and save the checkpoints."""
        scores, is_best = evaluate_epoch(self.args, self.run, self.models, selection, epoch, step)
        # The checkpoint's optimizer holds the rate of the epoch it resumes at, as a scheduler stepped per epoch.
        set_lr(self.trainer.optimizer, self.schedule, epoch + 1)
        if self.logger is not None:
            # Logged before the checkpoint is saved: a crash between the two then costs a row that the resumed
            # run drops and logs again (rows past the checkpoint's epoch), never a row of a saved epoch.
            self.logger.log({"epoch": epoch + 1, **trained, **scores, "best_acc": selection.best_acc,
                             "epoch_seconds": time.perf_counter() - started})
            self.checkpointer.save(epoch + 1, selection, is_best=is_best)


def resume(checkpointer: Checkpointer, checkpoint: dict[str, Any] | None, path: Path | None,
           context: DistributedContext, metadata: dict[str, Any]) -> ResumePoint:
    """Restore ``checkpoint`` (read from ``path``) when there is one: where the run continues."""
    if checkpoint is None:
        return ResumePoint()
    saved_split = (checkpoint.get("data") or {}).get("val_split")
    if saved_split != metadata["data"].get("val_split"):
        raise UserError(f"{path} was trained with another validation split ({describe_split(saved_split)}) than "
                        f"this run's ({describe_split(metadata['data'].get('val_split'))}); resume with the "
                        "--val-split and --seed it was trained with")
    start = checkpointer.restore(checkpoint, path)
    context.print0(f"resumed from {path} at epoch {start.epoch + 1}"
                   + (f", step {start.epoch_state.step}" if start.epoch_state else ""))
    return start


def describe_split(record: dict[str, Any] | None) -> str:
    return "none" if record is None else f"{record['images']} images, seed {record['seed']}"


def describe_selection(run: Run, selection: Selection) -> str:
    """The end of the ``done:`` line: the best accuracy, and with --val-split the selected model's test accuracy."""
    if run.val_loader is None:
        return f"best test accuracy {selection.best_acc:.2f}%"
    test = "" if selection.test is None else (f"; test accuracy at the best validation epoch "
                                              f"{selection.test['acc1']:.2f}% (epoch {selection.epoch})")
    return f"best validation accuracy {selection.best_acc:.2f}% at epoch {selection.epoch}{test}"


class RunRecord:
    """A run's ``args.json``, written by rank 0: the resolved flags, the metadata (:func:`run_metadata`), the
    command line of every start of the run (``command``: a resumed run adds its own) and its ``status``:
    ``running`` (with the process id and host, so that a reader can tell a crashed run), then ``done``,
    ``stopped`` or ``failed``. A --config of it repeats the recipe (commandline.parse_args skips the record keys).
    """

    def __init__(self, folders: RunFolders, args: argparse.Namespace, metadata: dict[str, Any]) -> None:
        self.path = folders.results / "args.json"
        earlier = read_json(self.path) if folders.resume is not None else None
        commands = earlier.get("command") if isinstance(earlier, dict) else None
        self.record = {**vars(args), **metadata,
                       "command": [*(commands if isinstance(commands, list) else []), shlex.join(sys.orig_argv)]}

    def write(self, state: str, message: str | None = None) -> None:
        status = {"state": state, "pid": os.getpid(), "host": socket.gethostname(),
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json(self.path, {**self.record, "status": {**status, **({"message": message} if message else {})}})

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        """``running`` while the block runs, then how it ended."""
        self.write("running")
        try:
            yield
        except BaseException as e:
            # Best effort: a full disk, say, must not hide the failure that is being recorded.
            with contextlib.suppress(OSError):
                if isinstance(e, Stopped):
                    self.write("stopped", str(e))
                else:
                    self.write("failed", str(e) if isinstance(e, UserError) else one_line(e))
            raise
        self.write("done")


def epoch_logger(args: argparse.Namespace, run: Run, folders: RunFolders, metadata: dict[str, Any],
                 start: ResumePoint, steps: int) -> EpochLogger:
    """Rank 0's epoch logger, from where the run starts (``steps``: optimizer steps per epoch)."""
    fields = metric_fields(run, ema=args.model_ema)
    first_step = start.epoch * steps + (start.epoch_state.step if start.epoch_state else 0)
    return EpochLogger(folders.results, args.epochs, fields, steps, start_epoch=start.epoch, first_step=first_step,
                       tensorboard=args.tensorboard, flags={**vars(args), **metadata})


def metric_fields(run: Run, ema: bool) -> tuple[str, ...]:
    """The metrics rows' fields: the paper's, with validation and EMA columns where the run has them."""
    splits = ("val", "test") if run.val_loader is not None else ("test",)
    evaluated = [f"{prefix}{split}_{quantity}" for prefix in ("", *(("ema_",) if ema else ()))
                 for split in splits for quantity in ("loss", "acc")]
    return ("epoch", "train_loss", "train_acc", *evaluated, "best_acc", "lr", "epoch_seconds",
            "train_images_per_second")
