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

from models import config_of, create_model, model_entry
from models.upanets import UPANets
from upanets_lab import utils
from upanets_lab.checkpoints import CheckpointRecord, load_model_weights, read_checkpoint
from upanets_lab.data import augment_ops, sources
from upanets_lab.data.augment import DeviceTransform, Mixing
from upanets_lab.data.loading import DeviceLoader
from upanets_lab.errors import UserError, one_line
from upanets_lab.files import check_writable, read_json, write_json
from upanets_lab.training import engine, tuning
from upanets_lab.training.checkpointing import Checkpointer, ResumePoint, Selection, epoch_position
from upanets_lab.training.distributed import (
    DistributedContext,
    all_reduce_sum,
    gather_objects,
    main_process_first,
    resolve_device,
)
from upanets_lab.training.engine import (
    EpochState,
    Runtime,
    Stopped,
    StopRequest,
    Trainer,
    agree_across_ranks,
    evaluate,
)
from upanets_lab.training.logs import EpochLogger
from upanets_lab.training.optimization import Schedule, build_ema, build_optimizer, set_lr


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
        if restarted and last.is_file() and _of_this_job(read_checkpoint(last).contents, context):
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
    bundle: sources.DataBundle
    model: nn.Module  # on its device and in its memory format; never wrapped
    model_config: dict[str, Any]  # what rebuilds it (models.config_of)
    model_size: dict[str, float]  # params, and GFLOPs of one eval-mode forward pass on one image
    criterion: nn.Module  # the evaluation loss: plain cross entropy
    test_loader: DeviceLoader
    test_transform: DeviceTransform
    val_loader: DeviceLoader | None = None  # with --val-split: the held-out training images
    val_split: sources.ValidationSplit | None = None


def set_up(args: argparse.Namespace, context: DistributedContext, checkpoint: CheckpointRecord | None,
           start_from: CheckpointRecord | None = None) -> Run:
    """The device; the data (and its validation split); the model; its precision and memory layout; the
    evaluation loaders.

    ``checkpoint`` is the one to resume or evaluate, whose precision and layout a run keeps when the flags allow;
    ``start_from`` (--weights of a new training run) gives the model its weights instead of a random start.
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
    options = model_options(args)
    try:
        model = create_model(args.model, num_classes=bundle.num_classes, img_size=bundle.img_size, **options)
    except (ValueError, FileNotFoundError, ImportError) as e:  # pretrained weights not in the cache, say
        raise UserError(f"--model {args.model}: {e}") from None
    config = config_of(model, bundle.num_classes, bundle.img_size, **options)
    if start_from is not None:
        weights, which = start_from.chosen_weights(args.raw_weights)
        load_model_weights(model, weights, start_from.path)
        context.print0(f"starting from the {'EMA ' if which == 'ema' else ''}weights of {start_from.path}")
    size = model_size(args.model, model, bundle.img_size)
    context.print0(f"model: {describe_model(args.model, model)}, {size['params']:,} parameters, "
                   f"{size['gflops']:.3f} GFLOPs per image")
    train = not args.evaluate
    speed = tuning.choose(model, amp_flag=args.amp if train else eval_amp_flag(args), device=device,
                          channels_last_flag=args.channels_last, batch_size=args.batch_size, train=train,
                          context=context, stored=None if checkpoint is None else checkpoint.contents.get("speed_choice"),
                          name=None if isinstance(model, UPANets) else args.model, config=config)
    context.print0(speed.describe())
    runtime = Runtime(device, amp_dtype=speed.amp_dtype if train else None, channels_last=speed.channels_last,
                      context=context, progress=context.is_main and not args.no_progress and sys.stderr.isatty(),
                      eval_amp_dtype=eval_amp_dtype(args, speed))
    model.to(device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)

    def loader(split: sources.ImageDataset | sources.StreamingDataset) -> DeviceLoader:
        return DeviceLoader(split, args.batch_size, shuffle=False, device=device, rank=context.rank,
                            world_size=context.world_size, workers=args.workers)

    return Run(runtime, speed, bundle, model, config, size, nn.CrossEntropyLoss(), loader(bundle.test),
               DeviceTransform(bundle.mean, bundle.std, device=device),
               None if val is None else loader(val.test), val_split)


def model_size(name: str, model: nn.Module, img: int) -> dict[str, float]:
    """Parameters and GFLOPs per image; counting runs a forward pass (on a copy on the meta device: no memory,
    no kernels), so a model that cannot take ``img`` x ``img`` images fails here, in one line."""
    try:
        gflops = utils.forward_flops(model, img) / 1e9
    except Exception as e:  # a library's model with a fixed input size (a ViT at 224), say
        raise UserError(f"--model {name} does not run on {img}x{img} images ({one_line(e)}); choose another model "
                        "or --img-size where the data set takes one") from None
    return {"params": utils.count_parameters(model), "gflops": gflops}


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model flags (--filters, --blocks, --head) that ``--model`` takes, as its builder's arguments."""
    return {key: getattr(args, key) for key in MODEL_FLAGS if key in model_entry(args.model).options}


# The flags that are options of some models (UPANets': filters, blocks, head; torchvision's and timm's pretrained).
MODEL_FLAGS = ("filters", "blocks", "head", "pretrained")


def describe_model(name: str, model: nn.Module) -> str:
    """``UPANets16 (blocks=1)`` for UPANets (with a head other than the paper's), else the registered name."""
    if not isinstance(model, UPANets):
        return name
    head = "" if model.head == "exc" else f", head={model.head}"
    return f"UPANets{model.filters} (blocks={model.blocks}{head})"


def load_training_data(args: argparse.Namespace, context: DistributedContext
                       ) -> tuple[sources.DataBundle, sources.DataBundle | None, sources.ValidationSplit | None]:
    """The data set (rank 0 downloads and caches it first), and with --val-split its hold-out: (the bundle to
    train on, the bundle whose test split is the validation images, the split)."""
    with main_process_first(context):
        bundle = sources.load_data(args.dataset, args.data_dir, download=args.download, img_size=args.img_size,
                                    in_memory=False if args.stream else None, workers=args.workers,
                                    seed=args.seed)
    val = val_split = None
    if args.val_split and not args.evaluate:
        bundle, val, val_split = sources.split_validation(bundle, args.val_split, args.seed)
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


def run_metadata(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    """What using the model needs besides its weights, and how and where it was trained: in args.json and every
    checkpoint (logs.METADATA_KEYS; commandline.parse_args skips them when an args.json is a --config)."""
    bundle = run.bundle
    data = {"dataset": bundle.name, "dir": str(Path(args.data_dir).expanduser().resolve()),
            "classes": list(bundle.classes), "mean": list(bundle.mean), "std": list(bundle.std)}
    if run.val_split is not None:
        data["val_split"] = run.val_split.record()
    return {
        "model_name": args.model,
        "model_config": run.model_config,
        "model_size": run.model_size,
        "data": data,
        "speed_choice": run.speed.to_dict(),
        "job": run.runtime.context.job,  # with --overwrite, a restarted torchrun job resumes only its own last.pth
        "provenance": utils.provenance(run.runtime.device),
    }




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
          checkpoint: CheckpointRecord | None) -> nn.Module:
    """Resume from ``checkpoint`` or start, then train the epochs, evaluating, logging and saving after each.

    Returns the bare model.
    """
    context = run.runtime.context
    setup = prepare(args, run, folders, checkpoint)
    trainer, start = setup.trainer, setup.start
    selection, state, augment_state = start.selection, start.epoch_state, start.augment_state
    stop.install()  # before the "training" line: a signal sent once it is printed always gets a checkpoint
    context.print0(training_line(args, run))
    with setup.recording():
        for epoch in range(start.epoch, args.epochs):
            started = time.perf_counter()
            state, lr = begin_epoch(args, setup, epoch, state, augment_state)
            images_before = state.seen.item()
            on_sync = None if setup.logger is None else setup.logger.train_loss_log(state, epoch)
            if not engine.train_one_epoch(trainer, setup.loader, state, run.runtime, epoch=epoch, stop=stop,
                                          on_sync=on_sync):
                save_position(setup, epoch, state, selection)
                raise Stopped(stop.exit_code, f"stopped by signal {stop.signum} at epoch {epoch + 1}, step "
                              f"{state.step}; continue by running the same command with --resume auto")
            trained = epoch_metrics(state, images_before, started, lr, context)
            scores, is_best = evaluate_epoch(args, run, setup.models, selection, epoch, state.step)
            # The checkpoint's optimizer holds the rate of the epoch it resumes at, as a scheduler stepped per epoch.
            set_lr(trainer.optimizer, setup.schedule, epoch + 1)
            if setup.logger is not None:  # rank 0
                # Logged before the checkpoint is saved: a crash between the two then costs a row that the resumed
                # run drops and logs again (rows past the checkpoint's epoch), never a row of a saved epoch.
                setup.logger.log({"epoch": epoch + 1, **trained, **scores, "best_acc": selection.best_acc,
                                       "epoch_seconds": time.perf_counter() - started})
                setup.checkpointer.save(epoch + 1, selection, is_best=is_best)
            state = augment_state = None
            if agree_across_ranks(stop, False, context)[0]:
                raise Stopped(stop.exit_code, f"stopped by signal {stop.signum} after epoch {epoch + 1}; continue "
                              "by running the same command with --resume auto")
    context.print0(f"done: {describe_selection(run, selection)}; checkpoints in {folders.checkpoints}, "
                   f"metrics in {folders.results}")
    return run.model


@dataclass
class TrainingSetup:
    """What the epoch loop works with: the trainer and its schedule, the training loader, the models evaluated
    (a metrics prefix each: "" the trained one, "ema_" its average), where the run starts, and rank 0's
    checkpointer, record and logger."""

    trainer: Trainer
    schedule: Schedule
    loader: DeviceLoader
    models: dict[str, nn.Module]
    start: ResumePoint
    checkpointer: Checkpointer
    record: RunRecord | None
    logger: EpochLogger | None

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Rank 0's args.json says ``running`` while the block runs, then how it ended; the logger closes."""
        try:
            with self.record.tracking() if self.record is not None else contextlib.nullcontext():
                yield
        finally:
            if self.logger is not None:
                self.logger.close()


def prepare(args: argparse.Namespace, run: Run, folders: RunFolders,
            checkpoint: CheckpointRecord | None) -> TrainingSetup:
    """The trainer (restored from ``checkpoint`` when resuming), the wrapped models, the loader and the records."""
    runtime, context = run.runtime, run.runtime.context
    trainer = build_trainer(args, run)
    metadata = run_metadata(args, run)
    checkpointer = Checkpointer(folders.checkpoints, run.model, trainer, args, runtime, metadata)
    start = resume(checkpointer, checkpoint, context, metadata)
    train_model, eval_model = wrap_for_training(run.model, args, runtime)
    trainer.train_through(train_model)
    loader = DeviceLoader(run.bundle.train, args.batch_size, shuffle=True, device=runtime.device, seed=args.seed,
                          rank=context.rank, world_size=context.world_size, workers=args.workers)
    models = {"": eval_model, **({} if trainer.ema is None else {"ema_": trainer.ema.module})}
    record = RunRecord(folders, args, metadata) if context.is_main else None
    logger = epoch_logger(args, run, folders, metadata, start, len(loader)) if context.is_main else None
    return TrainingSetup(trainer, schedule_of(args), loader, models, start, checkpointer, record, logger)


def begin_epoch(args: argparse.Namespace, setup: TrainingSetup, epoch: int, state: EpochState | None,
                augment_state: torch.Tensor | None) -> tuple[EpochState, float]:
    """Set what changes from epoch to epoch from ``epoch`` alone, on every path (a mid-epoch resume passes its
    ``state`` and augmentation generator state): the sampler's order, the augmentation's and mixing's draws,
    the flips' parity, the learning rate, the EMA's warmup. Returns the epoch's running sums and its rate."""
    trainer = setup.trainer
    setup.loader.set_epoch(epoch)
    trainer.augment.set_epoch(epoch, augment_state)
    trainer.set_warmup(epoch < args.lr_warmup_epochs)
    lr = set_lr(trainer.optimizer, setup.schedule, epoch)
    return (EpochState.zeros(trainer.augment.device) if state is None else state), lr


def save_position(setup: TrainingSetup, epoch: int, state: EpochState, selection: Selection) -> None:
    """A stop signal inside ``epoch``: rank 0 saves every process's position in it."""
    positions = gather_objects(epoch_position(state, setup.trainer), setup.checkpointer.runtime.context)
    if setup.record is not None:
        setup.checkpointer.save(epoch, selection, positions=positions)


def epoch_metrics(state: EpochState, images_before: float, started: float, lr: float,
                  context: DistributedContext) -> dict[str, float]:
    """An epoch's training metrics, summed over the processes (``images_before``: this process's images before a
    resumed position, which its images/s leaves out)."""
    seconds = time.perf_counter() - started
    loss_sum, correct, seen = all_reduce_sum(torch.stack([state.loss_sum, state.correct, state.seen]),
                                             context).tolist()
    return {"train_loss": loss_sum / seen, "train_acc": 100 * correct / seen, "lr": lr,
            "train_images_per_second": (seen - images_before * context.world_size) / seconds}


def training_line(args: argparse.Namespace, run: Run) -> str:
    runtime, context = run.runtime, run.runtime.context
    return (f"training {args.run_name} for {args.epochs} epoch{'s' if args.epochs > 1 else ''} on "
            f"{runtime.device} (amp={run.speed.amp}, channels_last={runtime.channels_last}, "
            f"processes={context.world_size}, global batch {args.batch_size * context.world_size}); "
            f"evaluation in {'fp32' if runtime.eval_amp_dtype is None else runtime.eval_amp_dtype}")


def resume(checkpointer: Checkpointer, checkpoint: CheckpointRecord | None, context: DistributedContext,
           metadata: dict[str, Any]) -> ResumePoint:
    """Restore ``checkpoint`` when there is one: where the run continues."""
    if checkpoint is None:
        return ResumePoint()
    saved_split = checkpoint.contents.get("data", {}).get("val_split")
    if saved_split != metadata["data"].get("val_split"):
        raise UserError(f"{checkpoint.path} was trained with another validation split ({describe_split(saved_split)}) "
                        f"than this run's ({describe_split(metadata['data'].get('val_split'))}); resume with the "
                        "--val-split and --seed it was trained with")
    start = checkpointer.restore(checkpoint)
    context.print0(f"resumed from {checkpoint.path} at epoch {start.epoch + 1}"
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
                  "peak_memory_mb": utils.peak_memory_mb(),
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
