"""Train and evaluate UPANets.

    python main.py                                   # UPANets16 on CIFAR-10, the paper's recipe
    python main.py --dataset cifar100 --filters 32
    python main.py --resume auto                     # continue this run from its last.pth
    python main.py --evaluate --weights checkpoint/cifar10-upanets16/best.pth
    torchrun --nproc_per_node 4 main.py ...          # DistributedDataParallel, one process per GPU
"""
from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

import data
import utils
from models.upanets import UPANets, check_config, extract_state_dict, describe_state_dict
from utils import DistributedContext, TrainingError

# Steps between host-device synchronisations (progress bar, non-finite loss and stop-signal checks).
SYNC_EVERY = 50


def _dataset_name(value: str) -> str:
    name = data.ORIGINAL_DATASET_NAMES.get(value, value)
    if name not in data.DATASETS:
        choices = ", ".join(data.DATASETS + tuple(data.ORIGINAL_DATASET_NAMES))
        raise argparse.ArgumentTypeError(f"unknown dataset {value!r} (choose from {choices})")
    return name


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train and evaluate UPANets", add_help=add_help)
    parser.add_argument("--dataset", "--datasets", default="cifar10", type=_dataset_name,
                        help=f"one of {', '.join(data.DATASETS)} (the original names cifar_10, cifar_100, "
                        "tiny_imgnet are accepted too)")
    parser.add_argument("--data-dir", "--data_dir", default="./data", type=Path, help="where data sets live")
    parser.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                        help="download CIFAR / Tiny ImageNet when missing")
    parser.add_argument("--img-size", default=None, type=int,
                        help="image size for --dataset folder/synthetic (default 32); CIFAR is 32, Tiny ImageNet 64")
    parser.add_argument("--filters", default=16, type=int, help="base filters: 16, 32, 64 for UPANets16/32/64")
    parser.add_argument("--blocks", default=1, type=int, help="UPA blocks per stage, in units of 4")
    parser.add_argument("--epochs", default=100, type=int, help="total epochs (cosine schedule spans them)")
    parser.add_argument("--batch-size", "--batch_size", default=100, type=int,
                        help="images per step and process; the global batch is this times the number of processes")
    parser.add_argument("--lr", default=0.1, type=float, help="initial learning rate")
    parser.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    parser.add_argument("--weight-decay", "--wd", default=5e-4, type=float, help="SGD weight decay")
    parser.add_argument("--workers", default=4, type=int, help="processes decoding image files")
    parser.add_argument("--seed", default=0, type=int, help="seed for initialisation, shuffling and augmentation")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                        help="mixed precision: auto = bf16 on GPUs that support it (else fp16 with grad scaling) "
                        "and on CPUs with AMX; fp32 elsewhere")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels_last memory format (default: on for CPUs, where it ran faster, "
                        "off for GPUs, where it was slower for UPANets at batch 100 on an H200)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (with CUDA graphs on a single GPU)")
    parser.add_argument("--sync-bn", action="store_true", help="synchronised BatchNorm under torchrun")
    parser.add_argument("--resume", "-r", default=None, metavar="PATH",
                        help="checkpoint to continue from, or 'auto' for this run's last.pth")
    parser.add_argument("--evaluate", action="store_true", help="only evaluate --weights on the test set")
    parser.add_argument("--weights", default=None, type=Path,
                        help="weights for --evaluate: this repo's checkpoints or the original code's ckpt.pth")
    parser.add_argument("--checkpoint-dir", default="./checkpoint", type=Path, help="checkpoints go in <dir>/<run-name>/")
    parser.add_argument("--save-path", "--save_path", default="./results", type=Path,
                        help="metrics, curves and args go in <save-path>/<run-name>/")
    parser.add_argument("--run-name", default=None, help="default: <dataset>-upanets<filters>[-blocks<blocks>]")
    parser.add_argument("--overwrite", action="store_true", help="start this run over, replacing its checkpoints")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Reject nonsense flag values before any work starts."""
    positive = {"--epochs": args.epochs, "--batch-size": args.batch_size}
    for flag, value in positive.items():
        if value < 1:
            raise TrainingError(f"{flag} must be a positive integer, got {value}")
    if args.batch_size < 2 and not args.evaluate:
        raise TrainingError("--batch-size must be at least 2 for training (BatchNorm needs two samples a batch)")
    if args.seed < 0:
        raise TrainingError(f"--seed must be >= 0, got {args.seed}")
    if not args.lr > 0 or not math.isfinite(args.lr):
        raise TrainingError(f"--lr must be a positive number, got {args.lr}")
    for flag, value in {"--momentum": args.momentum, "--weight-decay": args.weight_decay}.items():
        if not value >= 0 or not math.isfinite(value):
            raise TrainingError(f"{flag} must be a non-negative number, got {value}")
    if args.workers < 0:
        raise TrainingError(f"--workers must be >= 0, got {args.workers}")
    if args.img_size is not None and args.dataset not in ("folder", "synthetic"):
        raise TrainingError(f"--img-size applies to --dataset folder or synthetic, not {args.dataset}")
    try:
        # Classes and (for most sets) image size come with the data; check what the flags fix now.
        check_config(args.filters, 1, args.blocks, args.img_size or 32)
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
    if args.weights is not None and not args.weights.is_file():
        raise TrainingError(f"--weights {args.weights}: no such file")
    if args.resume is not None and args.evaluate:
        raise TrainingError("--resume and --evaluate do not go together; evaluate a checkpoint with --weights")
    if args.sync_bn and args.device == "cpu":
        raise TrainingError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only)")


# ----------------------------------------------------------------------------- set-up


def resolve_device(name: str, context: DistributedContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainingError(f"--device {name!r} is not a device name (try cpu or cuda)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if context.enabled:
            device = torch.device("cuda", context.local_rank)
    return device


def default_run_name(args: argparse.Namespace) -> str:
    name = f"{args.dataset}-upanets{args.filters}"
    return name if args.blocks == 1 else f"{name}-blocks{args.blocks}"


def resolve_resume(args: argparse.Namespace, run_checkpoint_dir: Path, run_dir: Path) -> Path | None:
    """The checkpoint to resume from; refuses to clobber an existing run that is not being resumed."""
    last = run_checkpoint_dir / "last.pth"
    if args.resume is None:
        for existing in (last, run_dir / "metrics.jsonl"):
            if existing.exists() and not args.overwrite:
                raise TrainingError(
                    f"run '{args.run_name}' already exists ({existing}); pass --resume auto to continue it, "
                    "--overwrite to start it over, or choose another --run-name"
                )
        return None
    path = last if args.resume == "auto" else Path(args.resume)
    if not path.is_file():
        raise TrainingError(f"--resume {args.resume}: no checkpoint at {path}")
    return path


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


# ----------------------------------------------------------------------------- train / evaluate


@dataclass
class EpochState:
    """Running sums of one training epoch, kept on the device and saved in mid-epoch checkpoints."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: torch.Tensor
    step: int = 0

    @classmethod
    def zeros(cls, device: torch.device) -> EpochState:
        return cls(*(torch.zeros((), dtype=torch.float64, device=device) for _ in range(3)))

    def state_dict(self) -> dict[str, Any]:
        return {"loss_sum": self.loss_sum.cpu(), "correct": self.correct.cpu(), "seen": self.seen.cpu(), "step": self.step}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device) -> EpochState:
        return cls(state["loss_sum"].to(device), state["correct"].to(device), state["seen"].to(device), state["step"])


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loader: data.DeviceLoader,
    transform: Callable[[torch.Tensor], torch.Tensor],
    state: EpochState,
    *,
    epoch: int,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
    context: DistributedContext,
    stop: StopRequest,
    progress: bool,
) -> bool:
    """Train from ``state.step`` to the end of the epoch; return False if a stop signal cut it short."""
    model.train()
    device = state.loss_sum.device
    first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
    bar = tqdm(total=len(loader), initial=state.step, desc=f"epoch {epoch + 1} train", disable=not progress,
               leave=False, dynamic_ncols=True)
    for images, labels in loader.iter_from(state.step):
        inputs = _prepare(images, transform, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(inputs)
            loss = criterion(outputs, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        loss = loss.detach()
        first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(loss),
                                     torch.full_like(first_bad_step, state.step), first_bad_step)
        state.loss_sum += loss * labels.numel()
        state.correct += (outputs.argmax(1) == labels).sum()
        state.seen += labels.numel()
        state.step += 1
        bar.update()

        at_sync = state.step % SYNC_EVERY == 0 or state.step == len(loader)
        # A single process may stop at any step; under torchrun the ranks check in together at sync points.
        if at_sync or (stop.signum is not None and not context.enabled):
            bad_step = int(first_bad_step)
            stopping, any_bad = _agree(stop, bad_step >= 0, context)
            if any_bad:  # checked before a stop saves: never a checkpoint of weights a non-finite loss ruined
                where = f"step {bad_step + 1}" if bad_step >= 0 else "a step of another process"
                raise TrainingError(
                    f"training loss became non-finite at epoch {epoch + 1}, {where}; stopped without "
                    "saving (the last checkpoint is kept). Try a lower --lr or --amp off"
                )
            if at_sync:
                bar.set_postfix(loss=f"{state.loss_sum.item() / state.seen.item():.3f}",
                                acc=f"{100 * state.correct.item() / state.seen.item():.2f}%")
            if stopping and state.step < len(loader):
                bar.close()
                return False
    bar.close()
    return True


def _prepare(images: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor],
             channels_last: bool) -> torch.Tensor:
    inputs = transform(images)
    return inputs.contiguous(memory_format=torch.channels_last) if channels_last else inputs


def _agree(stop: StopRequest, bad: bool, context: DistributedContext) -> tuple[bool, bool]:
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


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    criterion: nn.Module,
    loader: data.DeviceLoader,
    transform: Callable[[torch.Tensor], torch.Tensor],
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
    context: DistributedContext,
    progress: bool,
) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (percent) over the whole test set, all-reduced across processes."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1, top-5, images
    for images, labels in tqdm(loader, desc="test", disable=not progress, leave=False, dynamic_ncols=True):
        inputs = _prepare(images, transform, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(inputs)
            loss = criterion(outputs, labels)
        top5 = outputs.topk(min(5, outputs.shape[1]), dim=1).indices
        hits = top5 == labels[:, None]
        sums[0] += loss.double() * labels.numel()
        sums[1] += hits[:, 0].sum()
        sums[2] += hits.any(1).sum()
        sums[3] += labels.numel()
    utils.all_reduce_sum(sums, context)
    loss_sum, top1, top5_hits, count = sums.tolist()
    return {"loss": loss_sum / count, "acc1": 100 * top1 / count, "acc5": 100 * top5_hits / count, "images": count}


def cosine_factor(epoch: int, epochs: int) -> float:
    """Cosine annealing from 1 to 0 over ``epochs``, as CosineAnnealingLR(T_max=epochs) stepped per epoch."""
    return 0.5 * (1 + math.cos(math.pi * epoch / epochs))


# ----------------------------------------------------------------------------- main


def main(args: argparse.Namespace) -> nn.Module:
    """Train (or with --evaluate, evaluate) as the flags say; return the model (unwrapped, on its device)."""
    check_args(args)
    context = utils.init_distributed("cuda" if args.device.startswith("cuda") or (
        args.device == "auto" and torch.cuda.is_available()) else "cpu")
    stop = StopRequest()
    try:
        return _run(args, context, stop)
    finally:
        stop.restore()
        utils.cleanup_distributed(context)


def _run(args: argparse.Namespace, context: DistributedContext, stop: StopRequest) -> nn.Module:
    device = resolve_device(args.device, context)
    amp_dtype = utils.resolve_amp(args.amp, device)
    channels_last = utils.resolve_channels_last(args.channels_last, device)
    args.run_name = args.run_name or default_run_name(args)
    run_checkpoint_dir = args.checkpoint_dir / args.run_name
    run_dir = args.save_path / args.run_name
    resume_path = None if args.evaluate else resolve_resume(args, run_checkpoint_dir, run_dir)
    if not args.evaluate:  # a read-only location fails now, not after an epoch of work
        for folder in (run_checkpoint_dir, run_dir):
            utils.check_writable(folder)
    progress = context.is_main and not args.no_progress and sys.stderr.isatty()
    log = print if context.is_main else (lambda *a, **k: None)

    utils.seed_everything(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    with utils.main_process_first(context):  # only rank 0 downloads
        bundle = data.load_data(args.dataset, args.data_dir, download=args.download, img_size=args.img_size,
                                workers=args.workers, seed=args.seed)
    log(f"data: {args.dataset}, {len(bundle.train)} train / {len(bundle.test)} test images, "
        f"{bundle.num_classes} classes, {bundle.img_size}x{bundle.img_size}")

    model = UPANets(args.filters, bundle.num_classes, args.blocks, bundle.img_size)
    if context.is_main:  # counting FLOPs runs a forward pass; the other ranks would print nothing anyway
        log(f"model: UPANets{args.filters} (blocks={args.blocks}), {utils.count_parameters(model):,} parameters, "
            f"{utils.forward_flops(model, bundle.img_size) / 1e9:.3f} GFLOPs per image")
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    criterion = nn.CrossEntropyLoss()
    test_loader = data.DeviceLoader(bundle.test, args.batch_size, shuffle=False, device=device,
                                    rank=context.rank, world_size=context.world_size, workers=args.workers)
    test_transform = data.DeviceTransform(bundle.mean, bundle.std, device=device)
    eval_kwargs = dict(device=device, amp_dtype=amp_dtype, channels_last=channels_last, context=context,
                       progress=progress)

    if args.evaluate:
        checkpoint = utils.load_checkpoint(args.weights)
        load_model_weights(model, checkpoint, args.weights)
        if "net" in checkpoint and args.dataset in ("cifar10", "cifar100"):
            # The original code normalised both CIFARs with one mean/std: its weights expect those inputs.
            log("original code's checkpoint: normalising with its CIFAR mean/std")
            test_transform = data.DeviceTransform(*data.ORIGINAL_CIFAR_NORMALIZATION, device=device)
        eval_model = _maybe_compile(model, args, device, context)
        stats = evaluate(eval_model, criterion, test_loader, test_transform, **eval_kwargs)
        log(f"evaluate {args.weights}: test loss {stats['loss']:.4f} | top-1 {stats['acc1']:.2f}% | "
            f"top-5 {stats['acc5']:.2f}% ({int(stats['images'])} images)")
        return model

    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: cosine_factor(epoch, args.epochs))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    start_epoch, best_acc, epoch_state = 0, -1.0, None

    transform = data.DeviceTransform(bundle.mean, bundle.std, device=device, pad=bundle.pad, flip=True,
                                     seed=args.seed, rank=context.rank)
    if resume_path is not None:
        checkpoint = utils.load_checkpoint(resume_path)
        if "optimizer" not in checkpoint:
            raise TrainingError(f"{resume_path} holds weights only; it cannot be resumed (start a new run instead)")
        load_model_weights(model, checkpoint, resume_path)
        try:
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            if checkpoint["scaler"]:  # empty unless the run used fp16 grad scaling
                scaler.load_state_dict(checkpoint["scaler"])
            utils.set_rng_state(checkpoint["rng"])
            start_epoch, best_acc = checkpoint["epoch"], checkpoint["best_acc"]
            saved = checkpoint["epoch_state"]
            # A mid-epoch position replays exactly only for the same batches and augmentation stream, which
            # a single process on the same kind of device reproduces; otherwise that epoch starts again.
            if saved is not None and context.world_size == 1 == checkpoint["world_size"] and (
                    saved["batch_size"], saved["seed"], saved["device_type"]) == (
                    args.batch_size, args.seed, device.type):
                epoch_state = EpochState.from_state_dict(saved, device)
                transform.generator.set_state(saved["augment_rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise TrainingError(f"{resume_path} is not a complete training checkpoint of this repo "
                                f"({type(e).__name__}: {e}); resume from a last.pth it wrote") from None
        log(f"resumed from {resume_path} at epoch {start_epoch + 1}"
            + (f", step {epoch_state.step}" if epoch_state else ""))
    # The schedule is a function of --epochs, so a run resumed with more epochs stretches it to the new total.
    for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * cosine_factor(scheduler.last_epoch, args.epochs)

    if args.sync_bn and context.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    eval_model = train_model = _maybe_compile(model, args, device, context)
    if context.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            eval_model, device_ids=[device.index] if device.type == "cuda" else None)

    train_loader = data.DeviceLoader(bundle.train, args.batch_size, shuffle=True, device=device, seed=args.seed,
                                     rank=context.rank, world_size=context.world_size, workers=args.workers)
    logger = utils.MetricsLogger(run_dir, start_epoch) if context.is_main else None
    if context.is_main:
        utils.write_json(run_dir / "args.json", vars(args))
    stop.install()  # before the "training" line: a signal sent once it is printed always gets a checkpoint
    log(f"training {args.run_name} for {args.epochs} epochs on {device} "
        f"(amp={amp_dtype or 'off'}, channels_last={channels_last}, processes={context.world_size}, "
        f"global batch {args.batch_size * context.world_size})")

    def checkpoint_state(epoch: int, state: EpochState | None) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "best_acc": best_acc,
            "epoch_state": None if state is None else {
                **state.state_dict(), "augment_rng": transform.generator.get_state(),
                "batch_size": args.batch_size, "seed": args.seed, "device_type": device.type},
            "world_size": context.world_size,
            "args": utils.plain(vars(args)),
            "rng": utils.rng_state(),
        }

    for epoch in range(start_epoch, args.epochs):
        train_loader.set_epoch(epoch)
        if epoch_state is None:
            transform.set_epoch(epoch)
            epoch_state = EpochState.zeros(device)
        started = time.perf_counter()
        images_before = epoch_state.seen.item()
        finished = train_one_epoch(train_model, criterion, optimizer, scaler, train_loader, transform, epoch_state,
                                   epoch=epoch, amp_dtype=amp_dtype, channels_last=channels_last, context=context,
                                   stop=stop, progress=progress)
        if not finished:
            if context.is_main:
                utils.save_checkpoint(checkpoint_state(epoch, epoch_state), run_checkpoint_dir / "last.pth")
            raise Stopped(stop.exit_code, f"stopped by signal {stop.signum} at epoch {epoch + 1}, step "
                          f"{epoch_state.step}; continue by running the same command with --resume auto")
        train_seconds = time.perf_counter() - started
        train_sums = utils.all_reduce_sum(torch.stack([epoch_state.loss_sum, epoch_state.correct,
                                                       epoch_state.seen]), context)
        train_loss, train_correct, train_seen = train_sums.tolist()
        images_trained = (train_seen - images_before * context.world_size)
        if context.enabled:  # DDP syncs BatchNorm statistics only at the next forward: evaluate and save rank 0's
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, 0)
        stats = evaluate(eval_model, criterion, test_loader, test_transform, **eval_kwargs)
        if not math.isfinite(stats["loss"]):  # the last step's update can ruin weights after a finite training loss
            raise TrainingError(
                f"test loss became non-finite after epoch {epoch + 1}, step {epoch_state.step}; stopped without "
                "saving (the last checkpoint is kept). Try a lower --lr or --amp off"
            )
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        is_best = stats["acc1"] > best_acc
        best_acc = max(best_acc, stats["acc1"])
        epoch_state = None
        if context.is_main:
            state = checkpoint_state(epoch + 1, None)
            utils.save_checkpoint(state, run_checkpoint_dir / "last.pth")
            if is_best:
                utils.save_checkpoint(state, run_checkpoint_dir / "best.pth")
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss / train_seen,
                "train_acc": 100 * train_correct / train_seen,
                "test_loss": stats["loss"],
                "test_acc": stats["acc1"],
                "best_acc": best_acc,
                "lr": lr,
                "epoch_seconds": time.perf_counter() - started,
                "train_images_per_second": images_trained / train_seconds,
            }
            logger.log(row)
            log(f"epoch {epoch + 1}/{args.epochs} | train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% | "
                f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.2f}% top-5 {stats['acc5']:.2f}% | "
                f"best {best_acc:.2f}% | lr {lr:.4g} | {row['epoch_seconds']:.1f}s, "
                f"{row['train_images_per_second']:.0f} img/s")
        if _agree(stop, False, context)[0]:
            raise Stopped(stop.exit_code, f"stopped by signal {stop.signum} after epoch {epoch + 1}; "
                          "continue by running the same command with --resume auto")
    log(f"done: best test accuracy {best_acc:.2f}%; checkpoints in {run_checkpoint_dir}, metrics in {run_dir}")
    return model


def _maybe_compile(model: nn.Module, args: argparse.Namespace, device: torch.device,
                   context: DistributedContext) -> nn.Module:
    return utils.compile_model(model, device, distributed=context.enabled) if args.compile else model


def cli(argv: Iterable[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        main(args)
    except Stopped as e:
        print(e, file=sys.stderr)
        return e.exit_code
    except (TrainingError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or a read-only folder, met while saving or logging
        print(f"error: cannot write {e.filename or 'a file'}: {e.strerror or e}; free space or fix the "
              "permissions, then continue with --resume auto", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
