"""Processes and devices: the torchrun process group, the device of each process, and failures shared between them.

    context = init_distributed("cuda", timeout=300)   # one process outside torchrun
    device = resolve_device("auto", context)           # under torchrun, this process's GPU
    ...
    cleanup_distributed(context)
"""
from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from upanets_lab.errors import UserError, one_line


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
        raise UserError(f"--device {name!r} is not a device name (try cpu or cuda)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
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
            raise UserError(
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


def gather_objects(value: Any, context: DistributedContext) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank: ``[value]`` for one process."""
    if not context.enabled:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


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
