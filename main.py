"""Train and evaluate UPANets.

    python main.py                                   # UPANets16 on CIFAR-10, the paper's recipe
    python main.py --dataset cifar100 --filters 32
    python main.py --recipe modern --val-split 5000  # torchvision's recipe, best.pth chosen on 5,000 held-out images
    python main.py --resume auto                     # continue this run from its last.pth
    python main.py --config results/RUN/args.json --run-name again   # RUN's recipe once more
    python main.py --evaluate --weights checkpoint/cifar10-upanets16/best.pth
    torchrun --nproc_per_node 4 main.py ...          # DistributedDataParallel, one process per GPU
"""
from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from models import create_model, list_models, model_entry
from models.upanets import HEADS, check_config
from upanets_lab import commandline, utils
from upanets_lab.checkpoints import CheckpointRecord, load_model_weights, read_checkpoint
from upanets_lab.data import augment, augment_ops, catalog
from upanets_lab.errors import UserError, one_line
from upanets_lab.inference import trained
from upanets_lab.training import logs, loop, optimization, recipes, tuning
from upanets_lab.training.checkpointing import require_training_state
from upanets_lab.training.distributed import cleanup_distributed, init_distributed, share_failure
from upanets_lab.training.engine import Stopped, StopRequest, evaluate


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = commandline.make_parser("Train and evaluate UPANets", add_help=add_help)
    add_data_args(parser.add_argument_group("data"))
    add_model_args(parser.add_argument_group("model"))
    add_optimisation_args(parser.add_argument_group("optimisation (defaults marked 'recipe' come from --recipe)"))
    add_augmentation_args(parser.add_argument_group("augmentation (on the device, per image; defaults from --recipe)"))
    add_evaluation_args(parser.add_argument_group("evaluation"))
    add_speed_args(parser.add_argument_group("speed"))
    add_output_args(parser.add_argument_group("output"))
    add_distributed_args(parser.add_argument_group("distributed (under torchrun)"))
    return parser


def add_data_args(group: argparse._ActionsContainer) -> None:
    commandline.add_dataset_args(group, dataset_help="the evaluated checkpoint, else cifar10")
    commandline.add_img_size_arg(group, "image size for --dataset folder/synthetic (default: the evaluated checkpoint's, "
                         "else 32); CIFAR is 32, Tiny ImageNet 64")
    commandline.add_workers_arg(group)
    group.add_argument("--stream", action="store_true",
                       help="decode image-file sets (folder, Tiny ImageNet) from disk every epoch instead of holding "
                       "them in memory (the default when they do not fit)")
    group.add_argument("--val-split", default=0, type=float, metavar="N",
                       help="hold out N training images (a count, or a fraction below 1), class-balanced and seeded, "
                       "to select best.pth on instead of the test set, which is then measured for the selected "
                       "model; 0: select on the test set, as the paper does")


def registered_model(name: str) -> str:
    """``--model``: a registered name, or one line naming the nearest ones (for argparse)."""
    try:
        return model_entry(name).name
    except (ValueError, ImportError) as e:  # an unknown name; a library's prefix whose library is missing
        raise argparse.ArgumentTypeError(str(e)) from None


def add_model_args(group: argparse._ActionsContainer) -> None:
    # --dataset, --img-size, --filters, --blocks and --head default to None: see trained.fill_settings.
    group.add_argument("--model", default=None, type=registered_model, metavar="NAME",
                       help=f"the registered model to train: {', '.join(list_models())}; or any torchvision "
                       "classifier as torchvision:NAME, any timm model as timm:NAME (default: upanets, whose "
                       "--filters 16 is the paper's UPANets16, or the evaluated checkpoint's)")
    group.add_argument("--pretrained", action="store_true", default=None,
                       help="start a torchvision:NAME or timm:NAME model from its pretrained weights, read from the "
                       "local torch hub or Hugging Face cache (never downloaded here)")
    group.add_argument("--list-models", nargs="?", const="*", default=None, metavar="PATTERN",
                       help="print the registered models matching PATTERN (default: all) with their parameters and "
                       "GFLOPs for --dataset's classes and image size, then exit")
    group.add_argument("--filters", default=None, type=int,
                       help="base filters: 16, 32, 64 for UPANets16/32/64 (default: 16, or the evaluated "
                       "checkpoint's)")
    group.add_argument("--blocks", default=None, type=int,
                       help="UPA blocks per stage, in units of 4 (default: 1, or the evaluated checkpoint's)")
    group.add_argument("--head", default=None, choices=HEADS,
                       help="classifier head: exc, the paper's extreme connection (GAP + SPA of the stem and every "
                       "stage); exc-gap, the same pooled by GAP alone; last, GAP of the last stage only (default: "
                       "exc, or the evaluated checkpoint's)")


def add_optimisation_args(group: argparse._ActionsContainer) -> None:
    group.add_argument("--recipe", default="paper", choices=tuple(recipes.RECIPES),
                       help="presets of the flags marked 'recipe': paper (the UPANets paper's), modern "
                       "(torchvision's new recipe), fast (airbench's techniques); see docs/recipes.md")
    group.add_argument("--epochs", default=100, type=int, help="total epochs (the schedule spans them)")
    commandline.add_batch_size_arg(group, 100, "images per step and process; the global batch is this times the number "
                           "of processes")
    group.add_argument("--opt", default=None, choices=optimization.OPTIMIZERS, help="optimizer (recipe; paper: sgd)")
    group.add_argument("--lr", default=0.1, type=float, help="base learning rate")
    group.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    group.add_argument("--weight-decay", "--wd", default=5e-4, type=float, help="weight decay")
    group.add_argument("--norm-weight-decay", default=None, type=float,
                       help="weight decay of normalisation layers and biases (recipe; paper: as --weight-decay)")
    group.add_argument("--lr-warmup-epochs", default=None, type=int, help="epochs of warmup (recipe; paper: 0)")
    group.add_argument("--lr-warmup-method", default=None, choices=optimization.WARMUP_METHODS,
                       help="warmup from --lr-warmup-decay times the rate: linear, or constant (recipe; paper: "
                       "linear)")
    group.add_argument("--lr-warmup-decay", default=None, type=float,
                       help="the warmup's first rate as a fraction of --lr (recipe; paper: 0.01)")
    group.add_argument("--lr-min", default=None, type=float, help="the cosine's floor (recipe; paper: 0)")
    group.add_argument("--clip-grad-norm", default=None, type=float,
                       help="clip the gradients' norm to this; 0: no clipping (recipe; paper: 0)")
    group.add_argument("--label-smoothing", default=None, type=float,
                       help="cross entropy's label smoothing (recipe; paper: 0)")
    group.add_argument("--model-ema", action=argparse.BooleanOptionalAction, default=None,
                       help="keep an exponential moving average of the weights (and BatchNorm statistics), evaluated "
                       "every epoch, saved in checkpoints and used by --evaluate, predict.py, export.py and "
                       "landscape.py; best.pth selects on it (recipe; paper: off)")
    group.add_argument("--model-ema-steps", default=None, type=int,
                       help="steps between EMA updates (recipe; paper: 32)")
    group.add_argument("--model-ema-decay", default=None, type=float,
                       help="EMA decay per update, adjusted as torchvision's for the global batch, --model-ema-steps "
                       "and --epochs (recipe; paper: 0.99998)")
    group.add_argument("--seed", default=0, type=int, help="seed for initialisation, shuffling and augmentation")


def add_augmentation_args(group: argparse._ActionsContainer) -> None:
    group.add_argument("--auto-augment", default=None, choices=("none", *augment_ops.POLICIES),
                       help="per-image auto-augmentation: ta_wide (TrivialAugmentWide), ra (RandAugment), cifar10 "
                       "(AutoAugment's CIFAR-10 policy) (recipe; paper: none)")
    group.add_argument("--ra-magnitude", default=None, type=int, help="RandAugment's magnitude bin (recipe: 9)")
    group.add_argument("--ra-num-ops", default=None, type=int, help="RandAugment's ops per image (recipe: 2)")
    group.add_argument("--random-erase", default=None, type=float,
                       help="probability of RandomErasing each image (recipe; paper: 0)")
    group.add_argument("--mixup-alpha", default=None, type=float, help="MixUp's Beta(alpha, alpha) (recipe; paper: 0)")
    group.add_argument("--cutmix-alpha", default=None, type=float,
                       help="CutMix's Beta(alpha, alpha); with both, one of the two per batch (recipe; paper: 0)")
    group.add_argument("--alternating-flip", action=argparse.BooleanOptionalAction, default=None,
                       help="airbench's flips: each epoch flips exactly the images the previous one did not "
                       "(recipe; paper: random flips)")


def add_evaluation_args(group: argparse._ActionsContainer) -> None:
    group.add_argument("--evaluate", action="store_true", help="only evaluate --weights on the test set")
    group.add_argument("--weights", default=None, type=Path,
                       help="a checkpoint (this repo's, the original code's or pytorch-cifar's ckpt.pth) to evaluate "
                       "with --evaluate, or to start a training run from (its model, and its weights instead of a "
                       "random initialisation)")
    commandline.add_weights_choice_arg(group)
    group.add_argument("--tta", default=None, choices=augment.TTA_MODES,
                       help="test-time augmentation of every evaluation: the mean logits over flipped (and 1-pixel "
                       "translated) views, as airbench (recipe; paper: none)")
    group.add_argument("--eval-amp", default="off", choices=(*tuning.EVAL_AMP_FLAGS, "train"),
                       help="evaluation precision: fp32 (off), an autocast precision, or train's (as --amp chose); "
                       "reported accuracies then depend on the machine")


def add_speed_args(group: argparse._ActionsContainer) -> None:
    commandline.add_device_args(group)
    group.add_argument("--amp", default="auto", choices=tuning.AMP_FLAGS,
                       help="mixed precision of training: auto = whichever of fp32 and bf16 (fp16 with grad scaling "
                       "on GPUs without bf16) trains fastest here, measured once and cached; options within 10%% of "
                       "the fastest are a tie, which fp32 wins (upanets_lab/training/tuning.py)")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="channels_last memory format (default: whichever layout trains fastest here, measured "
                       "with --amp; NCHW when within 10%%)")
    group.add_argument("--compile", action="store_true", help="torch.compile the model (with CUDA graphs on one GPU)")


def add_output_args(group: argparse._ActionsContainer) -> None:
    group.add_argument("--config", "-c", default=None, type=Path,
                       help="a YAML file (or a run's args.json) of flag values to start from; flags given here "
                       "override it")
    group.add_argument("--checkpoint-dir", default=Path("./checkpoint"), type=Path,
                       help="checkpoints go in <dir>/<run-name>/")
    group.add_argument("--save-path", "--save_path", default=Path("./results"), type=Path,
                       help="metrics, curves and args.json (the resolved flags, every start's command line, the "
                       "run's status) go in <save-path>/<run-name>/")
    group.add_argument("--run-name", default=None,
                       help="default: <dataset>-<model>[-blocks<blocks>][-<head> unless exc], the model named "
                       "upanets<filters> for --model upanets")
    group.add_argument("--resume", "-r", default=None, metavar="PATH",
                       help="checkpoint to continue from, or 'auto' for this run's last.pth")
    group.add_argument("--overwrite", action="store_true", help="start this run over, replacing its checkpoints")
    commandline.add_progress_arg(group)
    group.add_argument("--tensorboard", action="store_true",
                       help="also write TensorBoard event files into the run's --save-path folder")


def add_distributed_args(group: argparse._ActionsContainer) -> None:
    group.add_argument("--sync-bn", action="store_true", help="synchronised BatchNorm (CUDA only)")
    group.add_argument("--dist-timeout", default=300, type=float, metavar="SECONDS",
                       help="how long a process waits for the others (joining the group, each collective) before "
                       "it fails, so that one failed or vanished process stops them all; raise it if rank 0's "
                       "first download of the data takes longer")


# ----------------------------------------------------------------------------- checks


def check_args(args: argparse.Namespace) -> None:
    """Reject nonsense flag values before any work starts."""
    commandline.check_flag_ranges(positive={"--epochs": args.epochs, "--batch-size": args.batch_size,
                                    "--dist-timeout": args.dist_timeout},
                          non_negative={"--seed": args.seed, "--workers": args.workers, "--val-split": args.val_split})
    # The optimizer computes in float32: a larger value would overflow inside its first step.
    commandline.check_flag_ranges(positive={"--lr": args.lr},
                          non_negative={"--momentum": args.momentum, "--weight-decay": args.weight_decay},
                          at_most=torch.finfo(torch.float32).max)
    if args.batch_size < 2 and not args.evaluate:
        raise UserError("--batch-size must be at least 2 for training (BatchNorm needs two samples a batch)")
    try:
        # Classes and (for most sets) image size come with the data; check what the flags fix now (UPANets').
        if args.filters is not None or args.blocks is not None:
            check_config(args.filters or 16, 1, args.blocks or 1, 32 if args.img_size is None else args.img_size)
    except ValueError as e:
        message = str(e).replace("UPANets filters", "--filters").replace("UPANets blocks", "--blocks")
        raise UserError(message) from None
    if args.evaluate and args.weights is None:
        raise UserError("--evaluate needs --weights PATH (a checkpoint to evaluate)")
    if args.resume is not None and args.evaluate:
        raise UserError("--resume and --evaluate do not go together; evaluate a checkpoint with --weights")
    check_recipe(args)


def check_recipe(args: argparse.Namespace) -> None:
    """Reject values of the recipe flags (after --recipe filled them in) that no training could use."""
    commandline.check_flag_ranges(non_negative={
        "--mixup-alpha": args.mixup_alpha, "--cutmix-alpha": args.cutmix_alpha, "--lr-min": args.lr_min,
        "--clip-grad-norm": args.clip_grad_norm, "--lr-warmup-epochs": args.lr_warmup_epochs,
        **({} if args.norm_weight_decay is None else {"--norm-weight-decay": args.norm_weight_decay})},
        positive={"--model-ema-steps": args.model_ema_steps, "--ra-num-ops": args.ra_num_ops})
    commandline.check_probabilities({"--random-erase": args.random_erase, "--lr-warmup-decay": args.lr_warmup_decay})
    if not 0 <= args.label_smoothing < 1:
        raise UserError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if not 0 < args.model_ema_decay < 1:
        raise UserError(f"--model-ema-decay must be between 0 and 1, got {args.model_ema_decay}")
    if not 0 <= args.ra_magnitude < 31:
        raise UserError(f"--ra-magnitude must be a bin in [0, 31), got {args.ra_magnitude}")
    if not args.evaluate and args.lr_warmup_epochs >= args.epochs:
        raise UserError(f"--lr-warmup-epochs {args.lr_warmup_epochs} must be fewer than --epochs {args.epochs} "
                        "(the cosine needs an epoch)")
    if args.lr_min >= args.lr:
        raise UserError(f"--lr-min {args.lr_min:g} must be below --lr {args.lr:g}")


# ----------------------------------------------------------------------------- evaluate only


def evaluate_weights(args: argparse.Namespace, run: loop.Run, checkpoint: CheckpointRecord) -> None:
    """``--evaluate``: the test loss and accuracy of ``--weights`` (read as ``checkpoint``; its EMA weights
    where it holds them, unless --raw-weights)."""
    weights, which = checkpoint.chosen_weights(args.raw_weights)
    load_model_weights(run.model, weights, args.weights)
    context = run.runtime.context
    if which == "ema":
        context.print0(f"{args.weights}: evaluating its EMA weights (--raw-weights for the trained ones)")
    transform = run.test_transform
    normalization = checkpoint.normalization(args.dataset)
    if normalization is not None:  # as the weights were trained: the original code's CIFAR statistics, say
        if checkpoint.format == "original":
            context.print0("original code's checkpoint: normalising with its CIFAR mean/std")
        elif checkpoint.format == "pytorch-cifar":
            context.print0("pytorch-cifar's checkpoint: normalising with its CIFAR mean/std")
        transform = augment.DeviceTransform(*normalization, device=run.runtime.device)
    model = loop.compile_if_asked(run.model, args, run.runtime)
    stats = evaluate(model, run.criterion, run.test_loader, transform, run.runtime, tta=args.tta)
    context.print0(
        f"evaluate {args.weights}: test loss {stats['loss']:.4f} | top-1 {stats['acc1']:.2f}% | "
        f"top-5 {stats['acc5']:.2f}% ({int(stats['images'])} images)"
        + (f"; the checkpoint recorded {recorded:.2f}%" if (recorded := recorded_accuracy(checkpoint)) is not None
           else ""))


def print_models(pattern: str, dataset: str, img_size: int | None) -> None:
    """``--list-models``: name, parameters and GFLOPs per image of each registered model matching ``pattern``."""
    names = list_models(pattern)
    if not names:
        raise UserError(f"no registered model matches {pattern!r}; the models are {', '.join(list_models())}")
    num_classes, img = catalog.classes_and_size(dataset, img_size)
    print(f"{'model':<20} {'params':>12} {'GFLOPs':>8}   ({dataset}: {num_classes} classes, {img}x{img})")
    for name in names:
        with torch.device("meta"):  # counted without memory or kernels
            model = create_model(name, num_classes=num_classes, img_size=img)
        try:
            gflops = f"{utils.forward_flops(model, img) / 1e9:>8.3f}"
        except Exception as e:  # a library's model with a fixed input size
            gflops = f"{'-':>8}   (does not run on {img}x{img}: {type(e).__name__})"
        print(f"{name:<20} {utils.count_parameters(model):>12,} {gflops}")


def recorded_accuracy(checkpoint: CheckpointRecord) -> float | None:
    """The test accuracy a weights-only file of the original code or pytorch-cifar says it reached (``acc``)."""
    acc = checkpoint.contents.get("acc") if checkpoint.format in ("original", "pytorch-cifar") else None
    return float(acc) if isinstance(acc, (int, float)) else None


# ----------------------------------------------------------------------------- main


def default_run_name(args: argparse.Namespace) -> str:
    """<dataset>-<model>, the model named by its filters for upanets, then the options other than the defaults."""
    options = model_entry(args.model).options
    name = f"{args.dataset}-" + (f"upanets{args.filters}" if args.model == "upanets" else
                                 args.model.replace(":", "-"))  # torchvision:resnet50 -> torchvision-resnet50
    if "blocks" in options and args.blocks != 1:
        name += f"-blocks{args.blocks}"
    return name if "head" not in options or args.head == "exc" else f"{name}-{args.head}"


def check_model_flags(args: argparse.Namespace, given: set[str]) -> None:
    """Refuse --filters, --blocks or --head, when given, for a --model that has no such option."""
    options = model_entry(args.model).options
    for flag in sorted(given - set(options)):
        taking = [name for name in list_models() if flag in model_entry(name).options] or [
            "torchvision:NAME", "timm:NAME"]
        raise UserError(f"--{flag} is an option of --model {' or '.join(taking)}, not of {args.model}"
                        + (f" (whose options are --{', --'.join(options)})" if options else ""))


def resolve(args: argparse.Namespace) -> tuple[CheckpointRecord | None, dict[str, Any], dict[str, Any]]:
    """Fill in the flags left out (from the checkpoint to evaluate, then the defaults and --recipe) and check
    them all: (the checkpoint to evaluate, if any, the settings taken from it, those taken from --recipe)."""
    # The checkpoint to evaluate is read first: it says which model (and data set) the flags left out mean.
    weights = read_checkpoint(args.weights) if args.weights is not None else None
    given = {flag for flag in loop.MODEL_FLAGS if getattr(args, flag) is not None}
    if weights is not None and args.model is not None and args.model != weights.model and (
            model_entry(args.model).family != "upanets" or model_entry(weights.model).family != "upanets"):
        raise UserError(f"{args.weights} holds {weights.model} weights, not {args.model}; pass --model "
                        f"{weights.model}, or leave --model out")
    from_weights = trained.fill_settings(args, weights)
    check_model_flags(args, given)
    from_recipe = recipes.resolve_recipe(args)
    check_args(args)
    return weights, from_weights, from_recipe


def main(args: argparse.Namespace) -> nn.Module:
    """Train (or with --evaluate, evaluate) as the flags say; return the model (unwrapped, on its device)."""
    weights, from_weights, from_recipe = resolve(args)
    context = init_distributed("cuda" if args.device.startswith("cuda") or (
        args.device == "auto" and torch.cuda.is_available()) else "cpu", timeout=args.dist_timeout)
    stop = StopRequest()
    try:
        if from_weights:
            context.print0(f"from {args.weights}: " + " ".join(
                f"--{key.replace('_', '-')} {value}" for key, value in from_weights.items()))
        if args.evaluate:
            run = loop.set_up(args, context, weights)
            evaluate_weights(args, run, weights)
            return run.model
        args.run_name = args.run_name or default_run_name(args)
        folders = loop.RunFolders.for_training(args, context)  # a bad folder fails before any work
        if context.restart > 0:
            context.print0(f"restart {context.restart} under torchrun: " + (
                f"resuming from {folders.resume}" if folders.resume else "no checkpoint yet, starting from epoch 1"))
        context.print0(recipes.describe(args, from_recipe))
        # Read before the data: a bad file fails at once, and its precision and layout carry over.
        checkpoint = None
        if folders.resume is not None:
            checkpoint = read_checkpoint(folders.resume)
            require_training_state(checkpoint)
        run = loop.set_up(args, context, checkpoint, start_from=weights if checkpoint is None else None)
        return loop.train(args, run, folders, stop, checkpoint)
    except Stopped:
        raise
    except Exception as e:
        # Shared before this process's exit breaks the others' collectives, so that they end with its message;
        # a collective of this process that broke because another one failed first ends with that one's.
        own = str(e) if isinstance(e, UserError) else one_line(e)
        first = share_failure(context, own)
        if first is not None and isinstance(e, RuntimeError):
            raise UserError(first) from None
        raise
    finally:
        stop.restore()
        cleanup_distributed(context)


def cli(argv: Iterable[str] | None = None) -> int:
    """``python main.py``: the exit code of :func:`main` run on the command line ``argv``."""
    parser, args = get_args_parser(), argparse.Namespace()

    def run() -> None:
        commandline.parse_args(parser, argv, args, record_keys=logs.RECORD_KEYS)
        if args.list_models is not None:
            print_models(args.list_models, args.dataset or "cifar10", args.img_size)
        else:
            main(args)

    try:
        return commandline.run_cli(run, memory_remedy=lambda: memory_remedy(args),
                                   after_failure=lambda: resume_hint(args))
    except Stopped as e:
        print(e, file=sys.stderr)
        return e.exit_code


def memory_remedy(args: argparse.Namespace) -> str:
    """The flags that shrink what a run holds in memory."""
    flags = [f"--batch-size (now {args.batch_size})"]
    if not args.evaluate:  # the weights evaluated fix the model and its image size
        if args.dataset in catalog.FREE_SIZE_DATASETS:
            flags.append("--img-size")
        if args.filters is not None:  # a UPANets' width
            flags.append(f"--filters (now {args.filters})")
    listed = flags[0] if len(flags) == 1 else f"{', '.join(flags[:-1])} or {flags[-1]}"
    remedy = f"use a smaller {listed}"
    if args.dataset in ("folder", "tiny-imagenet") and not args.stream:
        remedy += ", or --stream to read the images from disk each epoch"
    return remedy


def resume_hint(args: argparse.Namespace) -> str:
    """How to continue after fixing the problem, when this run has a checkpoint to continue from."""
    if getattr(args, "evaluate", True) or args.run_name is None:
        return ""
    if not (args.checkpoint_dir / args.run_name / "last.pth").is_file():
        return ""
    return ", then continue with --resume auto"


if __name__ == "__main__":
    code = cli()
    # The interpreter's last garbage collections walk every object that torch and torch._dynamo made: most of a
    # second on a 2-core CPU, at the end of every run. Frozen, those objects are skipped; the atexit hooks (of
    # anything imported beside main.py) and the closing of files still run.
    gc.freeze()
    sys.exit(code)
