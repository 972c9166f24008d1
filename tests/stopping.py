"""Stop a ``main.py`` run at a chosen place with a real SIGTERM, the same place every time.

A signal sent from outside lands wherever the run happens to be; the resume tests need a stop in a given epoch
and step, on a loaded machine too. Here the run raises SIGTERM in its own process right after a given training
step, so the stop goes through the handler, the checkpoint and the message a user's Ctrl-C would.

    code = run_until(["--dataset", "cifar10", ...], epoch=2, step=5)     # in this process: main.cli's exit code
    torchrun --nproc_per_node 2 tests/stopping.py 2 5 --dataset cifar10 ...   # rank 0 raises it; all ranks stop
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence

from upanets_lab.training import engine

import main


@contextlib.contextmanager
def stop_after(epoch: int, step: int) -> Iterator[None]:
    """While the block runs, rank 0 (or the one process) raises SIGTERM after training step ``step`` of epoch
    ``epoch`` (both 1-based; the epoch's last step stops the run at the end of that epoch)."""
    real_train_one_epoch, real_train_step = engine.train_one_epoch, engine.train_step
    current = {}

    def train_one_epoch(*args, epoch: int, **kwargs):
        current["epoch"] = epoch + 1
        return real_train_one_epoch(*args, epoch=epoch, **kwargs)

    def train_step(trainer, images, labels, state, *args, **kwargs):
        real_train_step(trainer, images, labels, state, *args, **kwargs)
        if (current.get("epoch"), state.step) == (epoch, step) and os.environ.get("RANK", "0") == "0":
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):  # it would end this process
                raise RuntimeError("SIGTERM has no handler installed during training")
            signal.raise_signal(signal.SIGTERM)

    engine.train_one_epoch, engine.train_step = train_one_epoch, train_step
    try:
        yield
    finally:
        engine.train_one_epoch, engine.train_step = real_train_one_epoch, real_train_step


def run_until(argv: Sequence[str | os.PathLike], epoch: int, step: int) -> int:
    """``main.cli(argv)`` in this process, stopped after ``step`` of ``epoch``: its exit code (143 when stopped)."""
    with stop_after(epoch, step):
        return main.cli([str(arg) for arg in argv])


if __name__ == "__main__":
    sys.exit(run_until(sys.argv[3:], int(sys.argv[1]), int(sys.argv[2])))
