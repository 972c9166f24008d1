"""Training helpers: atomic file writes, metrics logs and plots, seeding, compilation, distributed set-up."""
from __future__ import annotations

import contextlib
import copy
import csv
import errno
import glob
import json
import math
import os
import random
import re
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.distributed as dist


class TrainingError(Exception):
    """A problem the user can fix (bad checkpoint, bad flag value, ...), with a one-line message."""


def check_flag_ranges(*, positive: Mapping[str, float] = {}, non_negative: Mapping[str, float] = {},
                      at_most: float = math.inf) -> None:
    """Raise a TrainingError naming the first flag (``{"--lr": 0.1}``) whose value is out of range (above
    ``at_most`` included) or not finite."""
    for flag, value in positive.items():
        if not (value > 0 and math.isfinite(value)):
            kind = "integer" if isinstance(value, int) else "number"
            raise TrainingError(f"{flag} must be a positive {kind}, got {value}")
    for flag, value in non_negative.items():
        if not (value >= 0 and math.isfinite(value)):
            raise TrainingError(f"{flag} must be >= 0, got {value}")
    for flag, value in {**positive, **non_negative}.items():
        if value > at_most:
            raise TrainingError(f"{flag} must be at most {at_most:.4g}, got {value:g}")


def run_cli(run: Callable[[], int | None], *, memory_remedy: Callable[[], str],
            after_failure: Callable[[], str] = lambda: "") -> int:
    """A script's exit code: ``run()``'s (None for 0), or 2 with one line on stderr for what the user can fix.

    That is a TrainingError (DataError included), a failed write (a full disk, a read-only folder), another
    file error, or memory running out, which ``memory_remedy`` says how to avoid; ``after_failure`` may add
    how to go on (e.g. a resume hint). Both are asked for once the failure has happened, when the run's
    settings are known.
    """
    try:
        return run() or 0
    except TrainingError as e:
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


def describe_out_of_memory(error: BaseException) -> str | None:
    """"out of memory on the CPU/GPU (a request for N GiB)" if ``error`` says memory ran out, else None."""
    text = str(error)
    if isinstance(error, torch.OutOfMemoryError):
        where = "the GPU"
    elif isinstance(error, MemoryError) or "can't allocate memory" in text:  # the latter: torch's CPU allocator
        where = "the CPU"
    else:
        return None
    # torch's CPU allocator gives bytes, its CUDA allocator and NumPy a size with a unit.
    in_bytes = re.search(r"tried to allocate (\d+) bytes", text)
    with_unit = re.search(r"(?:Tried to allocate|Unable to allocate) ([0-9.]+ [KMGTP]?i?B)", text)
    size = f"{int(in_bytes.group(1)) / 2**30:,.2f} GiB" if in_bytes else with_unit and with_unit.group(1)
    return f"out of memory on {where}" + (f" (a request for {size})" if size else "")


def one_line(e: BaseException) -> str:
    """``Type: message`` of an exception on one line, for messages that quote a library's error."""
    return " ".join(f"{type(e).__name__}: {e}".split())


# ----------------------------------------------------------------------------- files

# Files the run writes get the permissions open() would give them, not mkstemp's private 0600.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write ``path`` through a file object that replaces it only once everything is on disk.

    The data goes to a uniquely named temporary file in the same folder, which is flushed, fsynced and
    renamed over ``path``: readers see the old file or the new one, never a mix. If the block raises,
    the temporary file is removed and ``path`` keeps its bytes; temporary files left by a killed writer
    are removed by a later write of the same path once they are an hour old (a younger one may be another
    process's write in progress). OS errors (a full disk, a read-only folder) are raised as WriteErrors
    that name ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.????????.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if stale.stat().st_mtime < time.time() - 3600:
                    stale.unlink()
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _naming(e, path) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as e:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _naming(e, path) from None
        raise


class WriteError(OSError):
    """Writing a file failed (a full disk, a read-only folder); ``filename`` is the file, ``strerror`` why."""


def _naming(error: OSError, path: Path) -> WriteError:
    """``error`` as a WriteError naming ``path`` (a write to a full disk reports no file name)."""
    return WriteError(error.errno, error.strerror or str(error), str(path))


def check_writable(folder: str | os.PathLike) -> None:
    """Raise TrainingError unless ``folder`` exists writable or could be created, leaving nothing behind.

    Tried for real, with a folder made and removed in its nearest existing parent: permission bits do not
    tell (root passes os.access almost everywhere, yet cannot make folders in /proc or on a read-only mount).
    """
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".upanets-write-test-", dir=existing))
    except OSError as e:
        reason = "not a folder" if not existing.is_dir() else e.strerror or one_line(e)
        raise TrainingError(f"cannot write to {folder}: {existing} is not a writable folder ({reason})") from None


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON-able Python (paths to str), for ``args.json`` and checkpoints."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# ----------------------------------------------------------------------------- metrics


METRIC_FIELDS = (
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "best_acc",
    "lr",
    "epoch_seconds",
    "train_images_per_second",
)


class MetricsLogger:
    """Per-epoch metrics as ``metrics.jsonl`` and ``metrics.csv``, and ``curves.png``, in ``run_dir``.

    Rows of epochs past ``start_epoch`` (left by a run that stopped after
    logging but before its checkpoint) are dropped, so a resumed run never
    shows an epoch twice. Nothing is written before the first new epoch is
    logged, so a run that fails early leaves the previous files as they were.
    The plot's title is the folder's name, which ``main.py`` makes the run's name.
    """

    def __init__(self, run_dir: str | os.PathLike, start_epoch: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self.csv_path = self.run_dir / "metrics.csv"
        self.plot_path = self.run_dir / "curves.png"
        self.rows: list[dict[str, Any]] = []
        if start_epoch > 0 and self.jsonl_path.is_file():
            with open(self.jsonl_path) as f:
                rows = [json.loads(line) for line in f if line.strip()]
            self.rows = [row for row in rows if row.get("epoch", math.inf) <= start_epoch]
        # Importing pyplot takes about half a second of a 2-core CPU: done beside the first epoch, whose
        # steps mostly run outside the GIL, rather than after it.
        self._pyplot = threading.Thread(target=pyplot, daemon=True)
        self._pyplot.start()

    def log(self, row: Mapping[str, Any]) -> None:
        self.rows.append({field: row[field] for field in METRIC_FIELDS})
        self._rewrite()
        self.plot()

    def _rewrite(self) -> None:
        with atomic_write(self.jsonl_path, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in self.rows)
        with atomic_write(self.csv_path, "w") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)

    def plot(self) -> None:
        """Redraw ``curves.png`` from scratch (a new figure each time, so lines never pile up)."""
        self._pyplot.join()
        plt = pyplot()
        from matplotlib.ticker import MaxNLocator

        epochs = [row["epoch"] for row in self.rows]
        fig, (ax_loss, ax_acc) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
        for split, color in (("train", "tab:blue"), ("test", "tab:red")):
            ax_loss.plot(epochs, [row[f"{split}_loss"] for row in self.rows], color=color, marker=".", label=split)
            ax_acc.plot(epochs, [row[f"{split}_acc"] for row in self.rows], color=color, marker=".", label=split)
        ax_loss.set_ylabel("loss")
        ax_acc.set_ylabel("top-1 accuracy (%)")
        ax_acc.set_xlabel("epoch")
        ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5 ticks on short runs
        ax_loss.set_title(self.run_dir.name)
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        save_figure(fig, self.plot_path, dpi=100)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int) -> None:
    """Write a matplotlib figure to ``path`` as PNG through :func:`atomic_write`, then close it."""
    try:
        with atomic_write(path) as f:
            fig.savefig(f, format="png", dpi=dpi)
    finally:
        pyplot().close(fig)


def pyplot() -> Any:
    """matplotlib.pyplot drawing off-screen (Agg), however the machine's display is set up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Each metrics.jsonl field's TensorBoard tag: the train and test curves of a quantity share a section.
TENSORBOARD_TAGS = {
    "epoch": "epoch",
    "train_loss": "loss/train",
    "test_loss": "loss/test",
    "train_acc": "accuracy/train",
    "test_acc": "accuracy/test",
    "best_acc": "accuracy/best",
    "lr": "lr",
    "epoch_seconds": "speed/epoch_seconds",
    "train_images_per_second": "speed/train_images_per_second",
}
TRAIN_STEPS_TAG = "loss/train_steps"


class TensorBoardLogger:
    """TensorBoard event files in ``run_dir``: every metrics row, the training loss every few steps, the flags.

    Steps count optimizer steps (batches per process), so runs with the same batch size line up; a metrics row
    is logged at the step that ends its epoch. When TensorBoard reads the folder, it drops what earlier
    processes logged after ``start_step``, the step this one resumes from (everything, for a run started over
    at 0): a resumed run never shows a step twice. Every write is flushed: a run stopped by a signal keeps all
    it logged.
    """

    def __init__(self, run_dir: str | os.PathLike, start_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported only when asked for: it adds start-up time

        # TensorBoard drops the steps from purge_step on; the step resumed from ended the last saved epoch.
        self.writer = SummaryWriter(str(run_dir), purge_step=start_step + 1 if start_step else 0)

    def log_flags(self, flags: Mapping[str, Any], step: int) -> None:
        rows = "\n".join(f"| {key} | `{json.dumps(value)}` |" for key, value in jsonable(flags).items())
        self.writer.add_text("flags", f"| flag | value |\n| --- | --- |\n{rows}", step)
        self.writer.flush()

    def log_metrics(self, row: Mapping[str, Any], step: int) -> None:
        for field, tag in TENSORBOARD_TAGS.items():
            self.writer.add_scalar(tag, row[field], step)
        self.writer.flush()

    def log_train_loss(self, loss: float, step: int) -> None:
        self.writer.add_scalar(TRAIN_STEPS_TAG, loss, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    with atomic_write(path, "w") as f:
        f.write(json.dumps(jsonable(data), indent=2) + "\n")


# ----------------------------------------------------------------------------- compilation


def compile_model(model: torch.nn.Module, device: torch.device, batch_size: int,
                  distributed: bool = False) -> torch.nn.Module:
    """``torch.compile`` as ``main.py --compile`` applies it, for batches of ``batch_size`` images.

    At batch 100 a GPU step is bound by kernel launches, which CUDA graphs ("reduce-overhead")
    remove; under DDP the gradient all-reduce hooks stay outside graphs, so it keeps the default mode.
    Batches of another size run eagerly (see :class:`CompiledForBatch`).
    """
    mode = "reduce-overhead" if device.type == "cuda" and not distributed else None
    return CompiledForBatch(model, torch.compile(model, mode=mode), batch_size)


class CompiledForBatch(torch.nn.Module):
    """``compiled`` for batches of ``batch_size`` images, the eager ``model`` (the same parameters) for others.

    An epoch's last batch is usually smaller: compiling (and capturing CUDA graphs) again for its shape, in
    training and in evaluation, cost more than that one step eager, and made a compiled epoch take minutes.
    Train and eval mode still compile once each.
    """

    def __init__(self, model: torch.nn.Module, compiled: torch.nn.Module, batch_size: int) -> None:
        super().__init__()
        self.model, self.compiled, self.batch_size = model, compiled, batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.compiled if x.shape[0] == self.batch_size else self.model)(x)


# ----------------------------------------------------------------------------- model figures


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: torch.nn.Module, image_size: int) -> int:
    """FLOPs of one eval-mode forward pass on one image (a multiply-add counts 2), by torch.utils.flop_counter.

    Counted on a copy on the meta device: only shapes matter, and no kernel runs (on a CPU, a real first
    forward pass costs seconds of one-time set-up).
    """
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(torch.zeros(1, 3, image_size, image_size, device="meta"))
    return counter.get_total_flops()


# ----------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    restart: int = 0  # how many times torchrun has restarted the group (--max-restarts) before this start
    store: dist.Store | None = None  # the store of this start of the group, when distributed
    job: str | None = None  # names the torchrun job, the same in every start of the group; None outside torchrun

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def print0(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on rank 0 only, so a line appears once however many processes run."""
        if self.is_main:
            print(*args, **kwargs)


def resolve_device(name: str, context: DistributedContext = DistributedContext()) -> torch.device:
    """``--device``: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...; under torchrun, this rank's GPU."""
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


def init_distributed(device_type: str, timeout: float = 300) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in RANK/WORLD_SIZE/LOCAL_RANK (NCCL on CUDA, gloo on CPU).

    Without those variables (plain ``python main.py``) this is a single process. ``timeout`` (seconds) bounds
    every wait for the other processes, in joining the group and in each collective: a process whose peers
    failed or vanished stops then instead of after torch's default of 30 minutes.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistributedContext()
    # One process has no store to name its job in; torchrun's run id names it, unless left at "none".
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    context = DistributedContext(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        restart=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        job=None if run_id in (None, "none") else run_id,
    )
    if context.world_size > 1:
        if device_type == "cuda":
            torch.cuda.set_device(context.local_rank)
        limit = timedelta(seconds=timeout)
        try:
            store, _, _ = next(dist.rendezvous("env://", timeout=limit))
            # The agent's store outlives restarts: the first start to get here names the job for all of them.
            job = store.compare_set(_JOB_KEY, "", uuid.uuid4().hex).decode()
            store = _fresh_store(store, context, limit)
        except dist.DistError as e:
            raise TrainingError(
                f"process {context.rank} of {context.world_size} could not reach the others within {timeout:g} s "
                f"({one_line(e)}); one of them failed or never started (see its message), or --dist-timeout is "
                "too short"
            ) from None
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", store=store,
                                rank=context.rank, world_size=context.world_size, timeout=limit)
        context = replace(context, store=store, job=job)
    return context


# The keys under which rank 0 names the store prefix of the group's current start, and the first start the job.
_GROUP_KEY = "upanets/group"
_JOB_KEY = "upanets/job"


def _fresh_store(store: dist.Store, context: DistributedContext, timeout: timedelta) -> dist.Store:
    """``store`` under a prefix that only this start of the group writes to.

    torchrun's agent keeps one store for all restarts of a group, holding what the crashed start wrote: the
    addresses of its processes. A restarted process that read one before its new owner replaced it connected
    to a dead process and failed, or, where such connections are dropped rather than refused, waited out the
    timeout. So rank 0 names a new prefix, and every other rank checks that the name it read is not a stale
    one with a nonce of its own, which only a live rank 0 answers.
    """
    if context.is_main:
        name = uuid.uuid4().hex
        store.set(_GROUP_KEY, name)
        joined = [f"{name}/joined/{rank}" for rank in range(1, context.world_size)]
        store.wait(joined)
        for key in joined:
            store.set(f"{name}/welcome/{store.get(key).decode()}", "")
        return dist.PrefixStore(name, store)
    nonce, name = uuid.uuid4().hex, None
    deadline = time.monotonic() + timeout.total_seconds()
    while time.monotonic() < deadline:  # polled: a store.wait that times out logs warnings on every retry
        latest = store.get(_GROUP_KEY).decode()
        if latest != name:  # the first name read, or a new one that rank 0 wrote over a stale one
            name = latest
            store.set(f"{name}/joined/{context.rank}", nonce)
        if store.check([f"{name}/welcome/{nonce}"]):
            return dist.PrefixStore(name, store)
        time.sleep(0.05)
    raise dist.DistStoreError("rank 0 never answered")


def share_failure(context: DistributedContext, message: str) -> str | None:
    """Leave this process's one-line failure ``message`` for the others, unless another process failed first:
    then return that one's message.

    A process whose collective broke because another one failed can so end with the cause, which the broken
    connection does not tell.
    """
    if context.store is None:
        return None
    entry = f"process {context.rank} of {context.world_size} failed: {message}"
    try:
        first = context.store.compare_set("upanets/failure", "", entry).decode()
    except RuntimeError:  # the store went away with the process that hosted it
        return None
    return None if first == entry else first


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (in place) when running distributed."""
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@contextlib.contextmanager
def main_process_first(context: DistributedContext) -> Iterator[None]:
    """Let rank 0 run the block (a download, a cache write) before the other ranks do."""
    if context.enabled and not context.is_main:
        dist.barrier()
    try:
        yield
    finally:  # also when rank 0 fails: the others then meet the same error instead of waiting forever
        if context.enabled and context.is_main:
            dist.barrier()


def cleanup_distributed(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
