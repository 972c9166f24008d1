"""Small general helpers: seeding and RNG states, model size figures, and where a result came from."""
from __future__ import annotations

import copy
import random
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout whose commit provenance records


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def peak_memory_mb() -> float:
    """The most memory this process has held so far, in MiB: the GPU's allocator peak where CUDA is in use, else
    the process's peak resident set (Linux and macOS report it in different units)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def provenance(device: torch.device) -> dict[str, Any]:
    """The code and machine behind a result: the git commit (and whether the tree had uncommitted changes;
    nothing outside a git checkout), the torch, CUDA and cuDNN versions and the device's name."""
    record: dict[str, Any] = {}
    commit = _git("rev-parse", "HEAD")
    if commit is not None:
        record["git_commit"] = commit
        status = _git("status", "--porcelain", "--untracked-files=no")
        record["git_dirty"] = bool(status) if status is not None else None
    record["torch"] = torch.__version__
    record["cuda"] = torch.version.cuda
    record["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    record["device"] = device_name(device)
    return record


def _git(*args: str) -> str | None:
    """``git *args`` in this repository's folder, or None where that is not a git checkout (or git is missing)."""
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def device_name(device: torch.device) -> str:
    """The GPU's or CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine() or "unknown CPU"
