"""Training helpers: checkpoints, metrics logs and plots, seeding, distributed set-up."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import pickle
import random
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


class TrainingError(Exception):
    """A problem the user can fix (bad checkpoint, bad flag value, ...), with a one-line message."""


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` with ``torch.save`` atomically: a temp file in the same folder, fsync, rename.

    A process killed mid-write leaves the previous file at ``path`` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
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


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors for bad files.

    ``weights_only`` refuses pickles that would run code on load.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is many lines of advice; the one that matters follows "WeightsUnpickler error:".
        details = [" ".join(part.split()) for part in str(e).partition("WeightsUnpickler error:")[2].split("\n\n")]
        reason = next((part for part in details if part), type(e).__name__)
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if unsafe:
            raise TrainingError(
                f"refusing to load {path}: unpickling it would import {unsafe.group(1)}, which can run code; "
                "only checkpoints of tensors and plain Python values are accepted"
            ) from None
        raise TrainingError(
            f"cannot read checkpoint {path}: the file is truncated, corrupt or not a PyTorch checkpoint "
            f"({reason})"
        ) from None
    except Exception as e:  # a damaged or foreign file can fail with almost any exception type
        raise TrainingError(
            f"cannot read checkpoint {path}: the file is truncated, corrupt or not a PyTorch checkpoint "
            f"({type(e).__name__})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise TrainingError(f"{path} is not a checkpoint: expected a dict, got {type(checkpoint).__name__}")
    return checkpoint


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


def plain(value: Any) -> Any:
    """``value`` as plain JSON-able Python (paths to str), for ``args.json`` and checkpoints."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
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
        _atomic_write_text(self.jsonl_path, "".join(json.dumps(row) + "\n" for row in self.rows))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        _atomic_write_text(self.csv_path, buffer.getvalue())

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
        tmp = self.plot_path.with_name(f".{self.plot_path.name}.tmp.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, self.plot_path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    _atomic_write_text(Path(path), json.dumps(plain(data), indent=2) + "\n")


# ----------------------------------------------------------------------------- precision


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU has AMX bf16 tiles, where bf16 autocast is a real speed-up.

    Without them (AVX-512 bf16 alone) bf16 convolutions ran slower than fp32.
    """
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_bf16" in f.read().split()
    except OSError:
        return False


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` on ``device``, or None for full fp32."""
    if amp == "off":
        return None
    if device.type == "cuda":
        # Native bf16 needs compute capability 8.0 (Ampere); older GPUs only emulate it, slowly.
        bf16_ok = torch.cuda.get_device_capability(device) >= (8, 0)
        if amp == "auto":
            return torch.bfloat16 if bf16_ok else torch.float16
        if amp == "bf16" and not bf16_ok:
            raise TrainingError("--amp bf16: this GPU has no bf16 support; use --amp fp16 or off")
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cpu":
        if amp == "fp16":
            raise TrainingError("--amp fp16 needs a CUDA GPU; on the CPU use --amp bf16 or off")
        if amp == "auto":
            return torch.bfloat16 if cpu_has_amx_bf16() else None
        return torch.bfloat16
    if amp == "auto":
        return None
    raise TrainingError(f"--amp {amp} is supported on cuda and cpu, not {device.type}")


def compile_model(model: torch.nn.Module, device: torch.device, distributed: bool = False) -> torch.nn.Module:
    """``torch.compile`` as ``main.py --compile`` applies it.

    At batch 100 a GPU step is bound by kernel launches, which CUDA graphs ("reduce-overhead")
    remove; under DDP the gradient all-reduce hooks stay outside graphs, so it keeps the default mode.
    """
    mode = "reduce-overhead" if device.type == "cuda" and not distributed else None
    return torch.compile(model, mode=mode)


def resolve_channels_last(channels_last: bool | None, device: torch.device) -> bool:
    """``--channels-last``, where unset (None) on for CPUs and off elsewhere.

    On the CPU, oneDNN's convolutions run faster on channels_last. On an H200 at batch 100 it
    made eager steps slower (they are bound by kernel launches), as measured before the layer
    norm and SPA kept that layout through the backward pass; that has not been re-measured.
    """
    return device.type == "cpu" if channels_last is None else channels_last


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
