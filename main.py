"""Train and evaluate UPANets.

    python main.py                                   # UPANets16 on CIFAR-10, the paper's recipe
    python main.py --dataset cifar100 --filters 32
    python main.py --resume auto                     # continue this run from its last.pth
    python main.py --evaluate --weights checkpoint/cifar10-upanets16/best.pth
    torchrun --nproc_per_node 4 main.py ...          # DistributedDataParallel, one process per GPU
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import data
import tuning
import utils
from checkpointing import (Checkpointer, ResumePoint, load_checkpoint, load_model_weights, require_training_state,
                           saved_normalization, saved_settings)
from engine import EpochState, Runtime, StopRequest, Stopped, Trainer, agree_across_ranks, evaluate, train_one_epoch
from models.upanets import HEADS, UPANets, check_config
from utils import DistributedContext, TrainingError


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train and evaluate UPANets", add_help=add_help)
    data.add_dataset_args(parser)
    # --dataset, --img-size, --filters, --blocks and --head default to None: see fill_settings.
    parser.add_argument("--filters", default=None, type=int,
                        help="base filters: 16, 32, 64 for UPANets16/32/64 (default: 16, or the evaluated "
                        "checkpoint's)")
    parser.add_argument("--blocks", default=None, type=int,
                        help="UPA blocks per stage, in units of 4 (default: 1, or the evaluated checkpoint's)")
    parser.add_argument("--head", default=None, choices=HEADS,
                        help="classifier head: exc, the paper's extreme connection (GAP + SPA of the stem and every "
                        "stage); exc-gap, the same pooled by GAP alone; last, GAP of the last stage only (default: "
                        "exc, or the evaluated checkpoint's)")
    parser.add_argument("--epochs", default=100, type=int, help="total epochs (cosine schedule spans them)")
    parser.add_argument("--batch-size", "--batch_size", default=100, type=int,
                        help="images per step and process; the global batch is this times the number of processes")
    parser.add_argument("--lr", default=0.1, type=float, help="initial learning rate")
    parser.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    parser.add_argument("--weight-decay", "--wd", default=5e-4, type=float, help="SGD weight decay")
    parser.add_argument("--workers", default=4, type=int, help="processes decoding image files")
    parser.add_argument("--stream", action="store_true",
                        help="decode image-file sets (folder, Tiny ImageNet) from disk every epoch instead of holding "
                        "them in memory (the default when they do not fit)")
    parser.add_argument("--seed", default=0, type=int, help="seed for initialisation, shuffling and augmentation")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                        help="mixed precision: auto = whichever of fp32 and bf16 (fp16 with grad scaling on GPUs "
                        "without bf16) trains fastest here, measured once and cached (tuning.py)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels_last memory format (default: whichever layout trains fastest here, measured "
                        "with --amp)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (with CUDA graphs on a single GPU)")
    parser.add_argument("--sync-bn", action="store_true", help="synchronised BatchNorm under torchrun")
    parser.add_argument("--dist-timeout", default=300, type=float, metavar="SECONDS",
                        help="under torchrun, how long a process waits for the others (joining the group, each "
                        "collective) before it fails, so that one failed or vanished process stops them all; "
                        "raise it if rank 0's first download of the data takes longer")
    parser.add_argument("--resume", "-r", default=None, metavar="PATH",
                        help="checkpoint to continue from, or 'auto' for this run's last.pth")
    parser.add_argument("--evaluate", action="store_true", help="only evaluate --weights on the test set")
    parser.add_argument("--weights", default=None, type=Path,
                        help="weights for --evaluate: this repo's checkpoints or the original code's ckpt.pth")
    parser.add_argument("--checkpoint-dir", default="./checkpoint", type=Path,
                        help="checkpoints go in <dir>/<run-name>/")
    parser.add_argument("--save-path", "--save_path", default="./results", type=Path,
                        help="metrics, curves and args go in <save-path>/<run-name>/")
    parser.add_argument("--run-name", default=None,
                        help="default: <dataset>-upanets<filters>[-blocks<blocks>][-<head> unless exc]")
    parser.add_argument("--overwrite", action="store_true", help="start this run over, replacing its checkpoints")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard event files into the run's --save-path folder")
    return parser


# What --dataset, --filters, --blocks and --head mean when they are left out and no checkpoint is evaluated.
DEFAULT_SETTINGS = {"dataset": "cifar10", "filters": 16, "blocks": 1, "head": "exc"}


def fill_settings(args: argparse.Namespace, weights: dict[str, Any] | None) -> dict[str, Any]:
    """Give the flags that were left out (None) among --dataset, --img-size, --filters, --blocks and --head the
    values of ``weights``, the checkpoint to evaluate, where it records them, else their defaults.

    Returns the values taken from the checkpoint. Flags given on the command line are kept, so a checkpoint
    that does not match them is refused with what it holds.
    """
    saved = {} if weights is None else saved_settings(weights, args.weights)
    taken = {}
    for key, default in DEFAULT_SETTINGS.items():
        if getattr(args, key) is None:
            if key in saved:
                taken[key] = saved[key]
            setattr(args, key, saved.get(key, default))
    if args.img_size is None and "img_size" in saved and args.dataset == saved["dataset"]:
        args.img_size = taken["img_size"] = saved["img_size"]
    return taken


def check_args(args: argparse.Namespace) -> None:
    """Reject nonsense flag values before any work starts."""
    utils.check_flag_ranges(positive={"--epochs": args.epochs, "--batch-size": args.batch_size,
                                      "--dist-timeout": args.dist_timeout},
                            non_negative={"--seed": args.seed, "--workers": args.workers})
    # The optimizer computes in float32: a larger value would overflow inside its first step.
    utils.check_flag_ranges(positive={"--lr": args.lr},
                            non_negative={"--momentum": args.momentum, "--weight-decay": args.weight_decay},
                            at_most=torch.finfo(torch.float32).max)
    if args.batch_size < 2 and not args.evaluate:
        raise TrainingError("--batch-size must be at least 2 for training (BatchNorm needs two samples a batch)")
    if args.img_size is not None and args.dataset not in ("folder", "synthetic"):
        raise TrainingError(f"--img-size applies to --dataset folder or synthetic, not {args.dataset}")
    try:
        # Classes and (for most sets) image size come with the data; check what the flags fix now.
        check_config(args.filters, 1, args.blocks, 32 if args.img_size is None else args.img_size)
    except ValueError as e:
        flag_names = {"UPANets filters": "--filters", "UPANets blocks": "--blocks", "UPANets img": "--img-size"}
        message = str(e)
        for name, flag in flag_names.items():
            message = message.replace(name, flag)
        raise TrainingError(message) from None
    if args.evaluate and args.weights is None:
        raise TrainingError("--evaluate needs --weights PATH (a checkpoint to evaluate)")
    if args.weights is not None and not args.evaluate:
        raise TrainingError("--weights is for --evaluate; use --resume to continue training from a checkpoint")
    if args.resume is not None and args.evaluate:
        raise TrainingError("--resume and --evaluate do not go together; evaluate a checkpoint with --weights")
    if args.sync_bn and args.device == "cpu":
        raise TrainingError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only)")


# ----------------------------------------------------------------------------- set-up


def default_run_name(args: argparse.Namespace) -> str:
    name = f"{args.dataset}-upanets{args.filters}"
    if args.blocks != 1:
        name += f"-blocks{args.blocks}"
    return name if args.head == "exc" else f"{name}-{args.head}"


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
            utils.check_writable(folder)
        last = checkpoints / "last.pth"
        restarted = context.restart > 0
        if restarted and last.is_file() and _of_this_job(load_checkpoint(last), context):
            return cls(checkpoints, results, last)
        if args.resume is None:
            # A restart before the first checkpoint finds what its own first start wrote (args.json, a metrics
            # row): no other run's files.
            own_files = restarted and _of_this_job(_read_json(results / "args.json"), context)
            for existing in (last, results / "metrics.jsonl"):
                if existing.exists() and not args.overwrite and not own_files:
                    raise TrainingError(
                        f"run '{args.run_name}' already exists ({existing}); pass --resume auto to continue it, "
                        "--overwrite to start it over, or choose another --run-name"
                    )
            return cls(checkpoints, results, None)
        path = last if args.resume == "auto" else Path(args.resume)
        if not path.is_file():
            raise TrainingError(f"--resume {args.resume}: no checkpoint at {path}")
        return cls(checkpoints, results, path)


def _of_this_job(record: Any, context: DistributedContext) -> bool:
    """Whether a checkpoint or args.json (a dict with "job") was written by this torchrun job."""
    return context.job is not None and isinstance(record, dict) and record.get("job") == context.job


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or None if it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class Run:
    """What evaluation and training share once the data and the model are set up."""

    runtime: Runtime
    speed: tuning.SpeedChoice
    bundle: data.DataBundle
    model: UPANets  # on its device and in its memory format; never wrapped
    criterion: nn.Module
    test_loader: data.DeviceLoader
    test_transform: data.DeviceTransform


def set_up(args: argparse.Namespace, context: DistributedContext, checkpoint: dict[str, Any] | None) -> Run:
    """The device; the data; the model; its precision and memory layout; the test loader.

    ``checkpoint`` is the one to resume or evaluate, whose precision and layout a run keeps when the flags allow.
    """
    device = utils.resolve_device(args.device, context)
    tuning.amp_candidates(args.amp, device)  # an --amp the device cannot run fails before the data loads
    utils.seed_everything(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    with utils.main_process_first(context):  # only rank 0 downloads
        bundle = data.load_data(args.dataset, args.data_dir, download=args.download, img_size=args.img_size,
                                in_memory=False if args.stream else None, workers=args.workers, seed=args.seed)
    context.print0(f"data: {args.dataset}, {len(bundle.train)} train / {len(bundle.test)} test images, "
                   f"{bundle.num_classes} classes, {bundle.img_size}x{bundle.img_size}")

    model = UPANets(args.filters, bundle.num_classes, args.blocks, bundle.img_size, head=args.head)
    if context.is_main:  # counting FLOPs runs a forward pass; the other ranks would print nothing anyway
        head = "" if args.head == "exc" else f", head={args.head}"
        print(f"model: UPANets{args.filters} (blocks={args.blocks}{head}), "
              f"{utils.count_parameters(model):,} parameters, "
              f"{utils.forward_flops(model, bundle.img_size) / 1e9:.3f} GFLOPs per image")
    speed = tuning.choose(model, amp_flag=args.amp, channels_last_flag=args.channels_last, device=device,
                          batch_size=args.batch_size, train=not args.evaluate, context=context,
                          stored=(checkpoint or {}).get("speed_choice"))
    context.print0(speed.describe())
    runtime = Runtime(device, amp_dtype=speed.amp_dtype, channels_last=speed.channels_last, context=context,
                      progress=context.is_main and not args.no_progress and sys.stderr.isatty())
    model.to(device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    test_loader = data.DeviceLoader(bundle.test, args.batch_size, shuffle=False, device=device,
                                    rank=context.rank, world_size=context.world_size, workers=args.workers)
    test_transform = data.DeviceTransform(bundle.mean, bundle.std, device=device)
    return Run(runtime, speed, bundle, model, nn.CrossEntropyLoss(), test_loader, test_transform)


def compile_if_asked(model: nn.Module, args: argparse.Namespace, runtime: Runtime) -> nn.Module:
    if not args.compile:
        return model
    return utils.compile_model(model, runtime.device, args.batch_size, distributed=runtime.context.enabled)


# ----------------------------------------------------------------------------- evaluate only


def evaluate_weights(args: argparse.Namespace, run: Run, checkpoint: dict[str, Any]) -> None:
    """``--evaluate``: the test loss and accuracy of ``--weights`` (loaded as ``checkpoint``)."""
    load_model_weights(run.model, checkpoint, args.weights)
    transform = run.test_transform
    normalization = saved_normalization(checkpoint, args.dataset)
    if normalization is not None:  # as the weights were trained: the original code's CIFAR statistics, say
        if "net" in checkpoint:
            run.runtime.context.print0("original code's checkpoint: normalising with its CIFAR mean/std")
        transform = data.DeviceTransform(*normalization, device=run.runtime.device)
    model = compile_if_asked(run.model, args, run.runtime)
    stats = evaluate(model, run.criterion, run.test_loader, transform, run.runtime)
    run.runtime.context.print0(
        f"evaluate {args.weights}: test loss {stats['loss']:.4f} | top-1 {stats['acc1']:.2f}% | "
        f"top-5 {stats['acc5']:.2f}% ({int(stats['images'])} images)")


# ----------------------------------------------------------------------------- train


def cosine_factor(epoch: int, epochs: int) -> float:
    """Cosine annealing from 1 to 0 over ``epochs``, as CosineAnnealingLR(T_max=epochs) stepped per epoch."""
    return 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def build_trainer(args: argparse.Namespace, run: Run) -> tuple[Trainer, torch.optim.lr_scheduler.LambdaLR]:
    """SGD with the flags' settings, a per-epoch cosine schedule, the AMP scaler and the train augmentation."""
    runtime, bundle = run.runtime, run.bundle
    optimizer = torch.optim.SGD(run.model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: cosine_factor(epoch, args.epochs))
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
    augment = data.DeviceTransform(bundle.mean, bundle.std, device=runtime.device, pad=bundle.pad, flip=True,
                                   seed=args.seed, rank=runtime.context.rank)
    return Trainer(run.model, run.criterion, optimizer, scaler, augment), scheduler


def run_metadata(run: Run) -> dict[str, Any]:
    """What using the model needs besides its weights, and how it was trained: in args.json and every checkpoint."""
    model, bundle = run.model, run.bundle
    return {
        "model_config": model.config,
        "data": {"dataset": bundle.name, "classes": list(bundle.classes), "mean": list(bundle.mean),
                 "std": list(bundle.std)},
        "speed_choice": run.speed.to_dict(),
        "job": run.runtime.context.job,  # with --overwrite, a restarted torchrun job resumes only its own last.pth
    }


class TrainLossLog:
    """``--tensorboard``'s training loss every few steps: the mean over the steps since the last sync point.

    Called at sync points only (``train_one_epoch``'s ``on_sync``), where reading the sums adds no wait.
    """

    def __init__(self, tensorboard: utils.TensorBoardLogger, state: EpochState, first_step: int) -> None:
        self.tensorboard, self.first_step = tensorboard, first_step  # first_step: the run's steps before this epoch
        self.loss_sum, self.seen = state.loss_sum.item(), state.seen.item()

    def __call__(self, state: EpochState) -> None:
        loss_sum, seen = state.loss_sum.item(), state.seen.item()
        self.tensorboard.log_train_loss((loss_sum - self.loss_sum) / (seen - self.seen), self.first_step + state.step)
        self.loss_sum, self.seen = loss_sum, seen


def train(args: argparse.Namespace, run: Run, folders: RunFolders, stop: StopRequest,
          checkpoint: dict[str, Any] | None) -> nn.Module:
    """Resume from ``checkpoint`` or start, then train the epochs, evaluating and saving after each.

    Returns the bare model.
    """
    runtime, context, model = run.runtime, run.runtime.context, run.model
    trainer, scheduler = build_trainer(args, run)
    metadata = run_metadata(run)
    checkpointer = Checkpointer(folders.checkpoints, model, trainer, scheduler, args, runtime, metadata)
    start = ResumePoint()
    if checkpoint is not None:
        start = checkpointer.restore(checkpoint, folders.resume)
        context.print0(f"resumed from {folders.resume} at epoch {start.epoch + 1}"
                       + (f", step {start.epoch_state.step}" if start.epoch_state else ""))
    # The schedule is a function of --epochs, so a run resumed with more epochs stretches it to the new total.
    for group, base_lr in zip(trainer.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * cosine_factor(scheduler.last_epoch, args.epochs)

    if args.sync_bn and context.enabled:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # swaps the BatchNorm layers in place
    eval_model = trainer.model = compile_if_asked(model, args, runtime)
    if context.enabled:
        trainer.model = nn.parallel.DistributedDataParallel(
            eval_model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    train_loader = data.DeviceLoader(run.bundle.train, args.batch_size, shuffle=True, device=runtime.device,
                                     seed=args.seed, rank=context.rank, world_size=context.world_size,
                                     workers=args.workers)
    metrics = utils.MetricsLogger(folders.results, start.epoch) if context.is_main else None
    if context.is_main:
        utils.write_json(folders.results / "args.json", {**vars(args), **metadata})
    steps = len(train_loader)
    tensorboard = None
    if args.tensorboard and context.is_main:
        start_step = start.epoch * steps + (start.epoch_state.step if start.epoch_state else 0)
        tensorboard = utils.TensorBoardLogger(folders.results, start_step)
        tensorboard.log_flags({**vars(args), **metadata}, start_step)
    stop.install()  # before the "training" line: a signal sent once it is printed always gets a checkpoint
    epochs = f"{args.epochs} epoch{'s' if args.epochs > 1 else ''}"
    context.print0(f"training {args.run_name} for {epochs} on {runtime.device} "
                   f"(amp={run.speed.amp}, channels_last={runtime.channels_last}, "
                   f"processes={context.world_size}, global batch {args.batch_size * context.world_size})")

    best_acc, epoch_state = start.best_acc, start.epoch_state
    for epoch in range(start.epoch, args.epochs):
        train_loader.set_epoch(epoch)
        if epoch_state is None:
            trainer.augment.set_epoch(epoch)
            epoch_state = EpochState.zeros(runtime.device)
        started = time.perf_counter()
        images_before = epoch_state.seen.item()
        on_sync = None if tensorboard is None else TrainLossLog(tensorboard, epoch_state, epoch * steps)
        if not train_one_epoch(trainer, train_loader, epoch_state, runtime, epoch=epoch, stop=stop, on_sync=on_sync):
            if context.is_main:
                checkpointer.save(epoch, best_acc, epoch_state=epoch_state)
            raise Stopped(stop.exit_code, f"stopped by signal {stop.signum} at epoch {epoch + 1}, step "
                          f"{epoch_state.step}; continue by running the same command with --resume auto")
        train_seconds = time.perf_counter() - started
        train_loss_sum, train_correct, train_seen = utils.all_reduce_sum(
            torch.stack([epoch_state.loss_sum, epoch_state.correct, epoch_state.seen]), context).tolist()
        if context.enabled:  # DDP syncs BatchNorm statistics only at the next forward: evaluate and save rank 0's
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, 0)
        stats = evaluate(eval_model, run.criterion, run.test_loader, run.test_transform, runtime)
        if not math.isfinite(stats["loss"]):  # the last step's update can ruin weights after a finite training loss
            raise TrainingError(
                f"test loss became non-finite after epoch {epoch + 1}, step {epoch_state.step}; stopped without "
                "saving (the last checkpoint is kept). Try a lower --lr or --amp off"
            )
        lr = trainer.optimizer.param_groups[0]["lr"]
        scheduler.step()
        is_best = stats["acc1"] > best_acc
        best_acc = max(best_acc, stats["acc1"])
        if context.is_main:
            # Logged before the checkpoint is saved: a crash between the two then costs a row that the resumed
            # run drops and logs again (rows past the checkpoint's epoch), never a row of a saved epoch.
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss_sum / train_seen,
                "train_acc": 100 * train_correct / train_seen,
                "test_loss": stats["loss"],
                "test_acc": stats["acc1"],
                "best_acc": best_acc,
                "lr": lr,
                "epoch_seconds": time.perf_counter() - started,
                "train_images_per_second": (train_seen - images_before * context.world_size) / train_seconds,
            }
            metrics.log(row)
            if tensorboard is not None:
                tensorboard.log_metrics(row, (epoch + 1) * steps)
            print(f"epoch {epoch + 1}/{args.epochs} | train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% "
                  f"| test loss {row['test_loss']:.4f} acc {row['test_acc']:.2f}% top-5 {stats['acc5']:.2f}% | "
                  f"best {best_acc:.2f}% | lr {lr:.4g} | {row['epoch_seconds']:.1f}s, "
                  f"{row['train_images_per_second']:.0f} img/s")
            checkpointer.save(epoch + 1, best_acc, is_best=is_best)
        epoch_state = None
        if agree_across_ranks(stop, False, context)[0]:
            raise Stopped(stop.exit_code, f"stopped by signal {stop.signum} after epoch {epoch + 1}; "
                          "continue by running the same command with --resume auto")
    if tensorboard is not None:
        tensorboard.close()
    context.print0(f"done: best test accuracy {best_acc:.2f}%; checkpoints in {folders.checkpoints}, "
                   f"metrics in {folders.results}")
    return model


# ----------------------------------------------------------------------------- main


def main(args: argparse.Namespace) -> nn.Module:
    """Train (or with --evaluate, evaluate) as the flags say; return the model (unwrapped, on its device)."""
    # The checkpoint to evaluate is read first: it says which model (and data set) the flags left out mean.
    weights = load_checkpoint(args.weights) if args.evaluate and args.weights is not None else None
    from_weights = fill_settings(args, weights)
    check_args(args)
    context = utils.init_distributed("cuda" if args.device.startswith("cuda") or (
        args.device == "auto" and torch.cuda.is_available()) else "cpu", timeout=args.dist_timeout)
    stop = StopRequest()
    try:
        if args.evaluate:
            if from_weights:
                context.print0(f"from {args.weights}: " + " ".join(
                    f"--{key.replace('_', '-')} {value}" for key, value in from_weights.items()))
            run = set_up(args, context, weights)
            evaluate_weights(args, run, weights)
            return run.model
        args.run_name = args.run_name or default_run_name(args)
        folders = RunFolders.for_training(args, context)  # a bad folder fails before any work
        if context.restart > 0:
            context.print0(f"restart {context.restart} under torchrun: " + (
                f"resuming from {folders.resume}" if folders.resume else "no checkpoint yet, starting from epoch 1"))
        # Read before the data: a bad file fails at once, and its precision and layout carry over.
        checkpoint = None
        if folders.resume is not None:
            checkpoint = load_checkpoint(folders.resume)
            require_training_state(checkpoint, folders.resume)
        run = set_up(args, context, checkpoint)
        return train(args, run, folders, stop, checkpoint)
    except Stopped:
        raise
    except Exception as e:
        # Shared before this process's exit breaks the others' collectives, so that they end with its message;
        # a collective of this process that broke because another one failed first ends with that one's.
        own = str(e) if isinstance(e, TrainingError) else utils.one_line(e)
        first = utils.share_failure(context, own)
        if first is not None and isinstance(e, RuntimeError):
            raise TrainingError(first) from None
        raise
    finally:
        stop.restore()
        utils.cleanup_distributed(context)


def cli(argv: Iterable[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        def run() -> None:
            main(args)

        return utils.run_cli(run, memory_remedy=lambda: memory_remedy(args), after_failure=lambda: resume_hint(args))
    except Stopped as e:
        print(e, file=sys.stderr)
        return e.exit_code


def memory_remedy(args: argparse.Namespace) -> str:
    """The flags that shrink what a run holds in memory."""
    flags = [f"--batch-size (now {args.batch_size})"]
    if not args.evaluate:  # the weights evaluated fix the model and its image size
        if args.dataset in ("folder", "synthetic"):  # the sets whose image size is a flag
            flags.append("--img-size")
        flags.append(f"--filters (now {args.filters})")
    listed = flags[0] if len(flags) == 1 else f"{', '.join(flags[:-1])} or {flags[-1]}"
    remedy = f"use a smaller {listed}"
    if args.dataset in ("folder", "tiny-imagenet") and not args.stream:
        remedy += ", or --stream to read the images from disk each epoch"
    return remedy


def resume_hint(args: argparse.Namespace) -> str:
    """How to continue after fixing the problem, when this run has a checkpoint to continue from."""
    if args.evaluate or args.run_name is None or not (args.checkpoint_dir / args.run_name / "last.pth").is_file():
        return ""
    return ", then continue with --resume auto"


if __name__ == "__main__":
    code = cli()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skips the interpreter's teardown, which frees torch's and torch._dynamo's module objects one by one:
    # about a second on a 2-core CPU, at the end of every run, for nothing (files are closed, ranks cleaned up).
    os._exit(code)
