"""Training helpers: atomic file writes, metrics logs and plots, seeding, compilation, distributed set-up."""
from __future__ import annotations

import contextlib
import csv
import glob
import json
import math
import os
import random
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.distributed as dist


class TrainingError(Exception):
    """A problem the user can fix (bad checkpoint, bad flag value, ...), with a one-line message."""


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
    are removed by the next write of the same path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.????????.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def check_writable(folder: str | os.PathLike) -> None:
    """Raise TrainingError unless ``folder`` exists writable or could be created, without creating it."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise TrainingError(f"cannot write to {folder}: {existing} is not a writable folder")


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
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [row["epoch"] for row in self.rows]
        fig, (ax_loss, ax_acc) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
        for split, color in (("train", "tab:blue"), ("test", "tab:red")):
            ax_loss.plot(epochs, [row[f"{split}_loss"] for row in self.rows], color=color, marker=".", label=split)
            ax_acc.plot(epochs, [row[f"{split}_acc"] for row in self.rows], color=color, marker=".", label=split)
        ax_loss.set_ylabel("loss")
        ax_acc.set_ylabel("top-1 accuracy (%)")
        ax_acc.set_xlabel("epoch")
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        try:
            with atomic_write(self.plot_path) as f:
                fig.savefig(f, format="png", dpi=100)
        finally:
            plt.close(fig)


def write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    with atomic_write(path, "w") as f:
        f.write(json.dumps(jsonable(data), indent=2) + "\n")


# ----------------------------------------------------------------------------- compilation


def compile_model(model: torch.nn.Module, device: torch.device, distributed: bool = False) -> torch.nn.Module:
    """``torch.compile`` as ``main.py --compile`` applies it.

    At batch 100 a GPU step is bound by kernel launches, which CUDA graphs ("reduce-overhead")
    remove; under DDP the gradient all-reduce hooks stay outside graphs, so it keeps the default mode.
    """
    mode = "reduce-overhead" if device.type == "cuda" and not distributed else None
    return torch.compile(model, mode=mode)


# ----------------------------------------------------------------------------- model figures


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: torch.nn.Module, image_size: int) -> int:
    """FLOPs of one eval-mode forward pass on one image (a multiply-add counts 2), by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    param = next(model.parameters())
    x = torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return counter.get_total_flops()


# ----------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

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


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in RANK/WORLD_SIZE/LOCAL_RANK (NCCL on CUDA, gloo on CPU).

    Without those variables (plain ``python main.py``) this is a single process.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistributedContext()
    context = DistributedContext(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )
    if context.world_size > 1:
        if device_type == "cuda":
            torch.cuda.set_device(context.local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return context


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
