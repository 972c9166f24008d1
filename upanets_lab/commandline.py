"""What every script's command line shares: its parser (defaults shown, no abbreviations), the argument groups
that several scripts take, ``--config`` files, flag range checks, and the runner that turns a
:class:`~errors.UserError` into one ``error:`` line and exit code 2.

    parser = commandline.make_parser("Classify image files with a trained UPANets")
    commandline.add_device_args(parser.add_argument_group("speed"))
    ...
    return commandline.run_cli(lambda: main(parser.parse_args(argv)), memory_remedy=lambda: "use a smaller --batch-size")
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import sys
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from upanets_lab.data import catalog
from upanets_lab.errors import UserError, WriteError, describe_out_of_memory


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each flag's default, except where there is none to show (None, False) or the help text
    says it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one ``error: ...`` line and exit code 2, as every other error of
    the scripts; ``--help`` still shows the usage."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def make_parser(description: str, add_help: bool = True) -> ArgumentParser:
    """A parser that shows defaults, takes no abbreviations (``--epoch 1`` is an error, not ``--epochs``) and
    reports a bad flag in one line."""
    return ArgumentParser(description=description, add_help=add_help, allow_abbrev=False,
                          formatter_class=HelpFormatter)


def default_workers() -> int:
    """Decoding processes: the cores this process may use, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(4, cores)


# ----------------------------------------------------------------------------- argument groups

DEFAULT_DATA_DIR = Path("./data")


def dataset_name(value: str) -> str:
    """A ``--dataset`` value as one of catalog.DATASETS (the original code's names accepted), for argparse."""
    name = catalog.ORIGINAL_DATASET_NAMES.get(value, value)
    if name not in catalog.DATASETS:
        choices = ", ".join(catalog.DATASETS + tuple(catalog.ORIGINAL_DATASET_NAMES))
        raise argparse.ArgumentTypeError(f"unknown dataset {value!r} (choose from {choices})")
    return name


def add_dataset_args(group: argparse._ActionsContainer, *, download: bool = True,
                     dataset_help: str = "the checkpoint being read") -> None:
    """``--dataset`` and ``--data-dir`` (and ``--download``), as every script that reads a data set has them.

    ``--dataset`` defaults to None: the script fills it in from the checkpoint it reads, if any.
    """
    group.add_argument("--dataset", "--datasets", default=None, type=dataset_name,
                       help=f"one of {', '.join(catalog.DATASETS)} (the original names "
                       f"{', '.join(catalog.ORIGINAL_DATASET_NAMES)} are accepted too); default: the data set of "
                       f"{dataset_help}")
    group.add_argument("--data-dir", "--data_dir", default=None, type=Path,
                       help=f"where data sets live (default: {DEFAULT_DATA_DIR}, or for the data set a checkpoint "
                       "was trained on, where it was then)")
    if download:
        group.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                           help="download CIFAR / Tiny ImageNet when missing")


def add_img_size_arg(group: argparse._ActionsContainer, help: str) -> None:
    group.add_argument("--img-size", default=None, type=int, help=help)


def add_workers_arg(group: argparse._ActionsContainer) -> None:
    group.add_argument("--workers", default=default_workers(), type=int,
                       help="processes decoding image files (default: this machine's cores, at most 4)")


def add_device_args(group: argparse._ActionsContainer) -> None:
    group.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")


def add_batch_size_arg(group: argparse._ActionsContainer, default: int, help: str) -> None:
    group.add_argument("--batch-size", "--batch_size", default=default, type=int, help=help)


def add_progress_arg(group: argparse._ActionsContainer) -> None:
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_weights_choice_arg(group: argparse._ActionsContainer) -> None:
    group.add_argument("--raw-weights", action="store_true",
                       help="use the trained weights themselves where the checkpoint also holds their moving "
                       "average (--model-ema), which is used by default")


def add_checkpoint_args(group: argparse._ActionsContainer) -> None:
    """``--weights`` and the flags that supply what a checkpoint lacks (predict.py and export.py)."""
    group.add_argument("--weights", required=True, type=Path,
                       help="a checkpoint of main.py (best.pth, last.pth) or the original code's ckpt.pth")
    group.add_argument("--classes", default=None,
                       help="class names in output order, comma-separated or a text file with one per line "
                       "(default: the checkpoint's, else the --dataset's)")
    add_img_size_arg(group, "the model's image size; read from the checkpoint, so needed only for weights "
                     "that do not say, and checked against it otherwise")
    add_dataset_args(group, download=False, dataset_help="the checkpoint; needed only for checkpoints without "
                     "class names or mean/std (a folder set also needs --data-dir)")
    add_weights_choice_arg(group)


# ----------------------------------------------------------------------------- --config


# Flags that say what one invocation does rather than how a run trains: read from the command line only, so
# that the args.json of a resumed or evaluated run repeats its recipe, not its resumption.
INVOCATION_FLAGS = frozenset({"config", "resume", "evaluate", "weights", "overwrite"})


def parse_args(parser: argparse.ArgumentParser, argv: Iterable[str] | None, namespace: argparse.Namespace,
               record_keys: Collection[str] = ()) -> argparse.Namespace:
    """``parser.parse_args(argv)`` into ``namespace``, with the values of a ``--config FILE`` as defaults.

    The file is YAML (JSON is YAML too, so a run's args.json is one): a mapping from flag names (``batch_size``
    or ``batch-size``) to values. Flags on the command line override it. Keys that are no flag raise a
    UserError naming them, except ``record_keys`` (what a script writes into args.json beside its flags);
    a value of the wrong type or out of a flag's choices raises one naming the key.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    config = parser.parse_known_args(argv)[0].config  # only --config is needed now; the rest is parsed below
    if config is not None:
        parser.set_defaults(**read_config(config, parser, record_keys))
    return parser.parse_args(argv, namespace)


def read_config(path: Path, parser: argparse.ArgumentParser, record_keys: Collection[str] = ()) -> dict[str, Any]:
    """The flag values of a config file, checked against ``parser``'s flags (see :func:`parse_args`)."""
    import yaml  # imported only when a config file is given

    try:
        content = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise UserError(f"--config {path}: not YAML or JSON ({' '.join(str(e).split())})") from None
    if not isinstance(content, Mapping):
        raise UserError(f"--config {path}: expected a mapping of flag names to values, "
                        f"got {type(content).__name__}")
    actions = {action.dest: action for action in parser._actions if action.dest != "help"}
    values = {str(key).replace("-", "_"): value for key, value in content.items()}
    unknown = [key for key in values if key not in actions and key not in record_keys]
    if unknown:
        raise UserError(f"--config {path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                        f"(keys are {parser.prog}'s flags, e.g. batch_size; see --help)")
    return {key: config_value(actions[key], value, path) for key, value in values.items()
            if key in actions and key not in INVOCATION_FLAGS}


def config_value(action: argparse.Action, value: Any, path: Path) -> Any:
    """A config file's ``value`` for ``action``'s flag, typed as the command line would type it."""
    where = f"--config {path}: {action.dest}"
    if value is None:
        if action.default is not None:
            raise UserError(f"{where} must have a value (its default is {action.default})")
        return None
    if action.nargs == 0:  # store_true and --x/--no-x flags
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(value, (bool, list, dict)):
        raise UserError(f"{where} must be one value, got {value!r}")
    if action.type is int and not isinstance(value, int):
        raise UserError(f"{where} must be an integer, got {value!r}")
    try:
        typed = action.type(str(value)) if action.type is not None else str(value)
    except argparse.ArgumentTypeError as e:  # the flag's own check, which says what it takes
        raise UserError(f"{where}: {e}") from None
    except (TypeError, ValueError):
        raise UserError(f"{where} must be {_kind(action)}, got {value!r}") from None
    if action.choices is not None and typed not in action.choices:
        raise UserError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return typed


def _kind(action: argparse.Action) -> str:
    return {int: "an integer", float: "a number"}.get(action.type, "a value")


# ----------------------------------------------------------------------------- checks and the runner


def check_flag_ranges(*, positive: Mapping[str, float] = {}, non_negative: Mapping[str, float] = {},
                      at_most: float = math.inf) -> None:
    """Raise a UserError naming the first flag (``{"--lr": 0.1}``) whose value is out of range (above
    ``at_most`` included) or not finite."""
    for flag, value in positive.items():
        if not (value > 0 and math.isfinite(value)):
            kind = "integer" if isinstance(value, int) else "number"
            raise UserError(f"{flag} must be a positive {kind}, got {value}")
    for flag, value in non_negative.items():
        if not (value >= 0 and math.isfinite(value)):
            raise UserError(f"{flag} must be >= 0, got {value}")
    for flag, value in {**positive, **non_negative}.items():
        if value > at_most:
            raise UserError(f"{flag} must be at most {at_most:.4g}, got {value:g}")


def check_probabilities(values: Mapping[str, float]) -> None:
    """Raise a UserError naming the first flag whose value is not a probability in [0, 1]."""
    for flag, value in values.items():
        if not 0 <= value <= 1:
            raise UserError(f"{flag} must be a probability in [0, 1], got {value}")


def run_cli(run: Callable[[], int | None], *, memory_remedy: Callable[[], str],
            after_failure: Callable[[], str] = lambda: "") -> int:
    """A script's exit code: ``run()``'s (None for 0), or 2 with one line on stderr for what the user can fix.

    That is a UserError (DataError included), a failed write (a full disk, a read-only folder), another
    file error, or memory running out, which ``memory_remedy`` says how to avoid; ``after_failure`` may add
    how to go on (e.g. a resume hint). Both are asked for once the failure has happened, when the run's
    settings are known.
    """
    try:
        return run() or 0
    except UserError as e:
        message = str(e)
    except WriteError as e:
        remedy = "give a file, not a folder" if e.errno == errno.EISDIR else "free space or fix the permissions"
        message = f"cannot write {e.filename}: {e.strerror}; {remedy}{after_failure()}"
    except OSError as e:  # reading: a folder or file that cannot be listed or opened
        message = f"cannot use {e.filename or 'a file'}: {e.strerror or e}{after_failure()}"
    except (RuntimeError, MemoryError) as e:
        out_of_memory = describe_out_of_memory(e)
        if out_of_memory is None:
            raise
        message = f"{out_of_memory}; {memory_remedy()}{after_failure()}"
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"error: {message}", file=sys.stderr)
    return 2
