"""What a training run records: per-epoch metrics (JSONL, CSV, ``curves.png``), TensorBoard events, and the
line printed at the end of each epoch, all through one :class:`EpochLogger`.
"""
from __future__ import annotations

import csv
import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from upanets_lab.files import atomic_write, jsonable

# The fields of every metrics row, in file order; runs with a validation split or an EMA model add more.
# The keys of a run's args.json beside its flags: the run's metadata (loop.run_metadata, which every checkpoint
# repeats), and RunRecord's.
METADATA_KEYS = ("model_name", "model_config", "model_size", "data", "speed_choice", "job", "provenance")
RECORD_KEYS = (*METADATA_KEYS, "command", "status")
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

# Each metrics field's TensorBoard tag: the train, validation and test curves of a quantity share a section.
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


def tensorboard_tag(field: str) -> str:
    """A field's tag: the table's, else ``loss/val``, ``accuracy/test_ema``, ... from its name."""
    if field in TENSORBOARD_TAGS:
        return TENSORBOARD_TAGS[field]
    split, _, quantity = field.rpartition("_")
    section = {"loss": "loss", "acc": "accuracy"}.get(quantity)
    if section is None:
        return field
    # "ema_test" -> "test_ema": the EMA model's curve sits beside the raw model's.
    parts = split.split("_")
    return f"{section}/{'_'.join(parts[1:] + parts[:1]) if parts[0] == 'ema' else split}"


class MetricsLogger:
    """Per-epoch metrics as ``metrics.jsonl`` and ``metrics.csv``, and ``curves.png``, in ``run_dir``.

    Rows of epochs past ``start_epoch`` (left by a run that stopped after
    logging but before its checkpoint) are dropped, so a resumed run never
    shows an epoch twice. Nothing is written before the first new epoch is
    logged, so a run that fails early leaves the previous files as they were.
    The plot's title is the folder's name, which ``main.py`` makes the run's name.
    A field that an epoch did not measure (the test set between new best validation epochs) is null in the
    JSONL file and empty in the CSV file.
    """

    def __init__(self, run_dir: str | os.PathLike, start_epoch: int = 0,
                 fields: Sequence[str] = METRIC_FIELDS) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.fields = tuple(fields)
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
        self.rows.append({field: row.get(field) for field in self.fields})
        self._rewrite()
        self.plot()

    def _rewrite(self) -> None:
        with atomic_write(self.jsonl_path, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in self.rows)
        with atomic_write(self.csv_path, "w") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, lineterminator="\n", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)

    def plot(self) -> None:
        """Redraw ``curves.png`` from scratch (a new figure each time, so lines never pile up)."""
        self._pyplot.join()
        plt = pyplot()
        from matplotlib.ticker import MaxNLocator

        fig, (ax_loss, ax_acc) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
        for split, color in (("train", "tab:blue"), ("val", "tab:green"), ("test", "tab:red"),
                             ("ema_val", "tab:olive"), ("ema_test", "tab:purple")):
            for ax, quantity in ((ax_loss, "loss"), (ax_acc, "acc")):
                points = [(row["epoch"], row.get(f"{split}_{quantity}")) for row in self.rows]
                points = [(epoch, value) for epoch, value in points if value is not None]
                if points:
                    ax.plot(*zip(*points), color=color, marker=".", label=split.replace("ema_", "EMA "))
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
        for field, value in row.items():
            if value is not None:
                self.writer.add_scalar(tensorboard_tag(field), value, step)
        self.writer.flush()

    def log_train_loss(self, loss: float, step: int) -> None:
        self.writer.add_scalar(TRAIN_STEPS_TAG, loss, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class TrainLossLog:
    """``--tensorboard``'s training loss every few steps: the mean over the steps since the last sync point.

    Called at sync points only (``engine.train_one_epoch``'s ``on_sync``), where reading the sums adds no wait;
    ``state`` is an engine.EpochState.
    """

    def __init__(self, tensorboard: TensorBoardLogger, state: Any, first_step: int) -> None:
        self.tensorboard, self.first_step = tensorboard, first_step  # first_step: the run's steps before this epoch
        self.loss_sum, self.seen = state.loss_sum.item(), state.seen.item()

    def __call__(self, state: Any) -> None:
        loss_sum, seen = state.loss_sum.item(), state.seen.item()
        self.tensorboard.log_train_loss((loss_sum - self.loss_sum) / (seen - self.seen), self.first_step + state.step)
        self.loss_sum, self.seen = loss_sum, seen


class EpochLogger:
    """Everything rank 0 records at the end of an epoch: the metrics row (``metrics.jsonl``, ``metrics.csv``,
    ``curves.png``), TensorBoard (with ``tensorboard``: the row, the flags, the training loss every few steps)
    and the printed line.

    ``fields`` are the row's fields; a row may carry more (top-5 accuracies, ``{split}_acc5``), which only the
    printed line shows. ``steps`` is the number of optimizer steps per epoch, the TensorBoard x-axis unit.
    """

    def __init__(self, folder: Path, epochs: int, fields: Sequence[str], steps: int, *, start_epoch: int = 0,
                 first_step: int = 0, tensorboard: bool = False, flags: Mapping[str, Any] | None = None) -> None:
        self.epochs, self.steps = epochs, steps
        self.metrics = MetricsLogger(folder, start_epoch, fields)
        self.tensorboard = None
        if tensorboard:
            self.tensorboard = TensorBoardLogger(folder, first_step)
            self.tensorboard.log_flags(flags or {}, first_step)

    def train_loss_log(self, state: Any, epoch: int) -> TrainLossLog | None:
        """The ``on_sync`` callback of ``epoch``'s steps (None without TensorBoard)."""
        return None if self.tensorboard is None else TrainLossLog(self.tensorboard, state, epoch * self.steps)

    def log(self, row: Mapping[str, Any]) -> None:
        self.metrics.log(row)
        if self.tensorboard is not None:
            self.tensorboard.log_metrics(self.metrics.rows[-1], row["epoch"] * self.steps)
        print(self.line(row))

    def line(self, row: Mapping[str, Any]) -> str:
        """``epoch 3/100 | train loss ... | test loss ... acc ...% top-5 ...% | best ...% | lr ... | 9.1s, 210 img/s``"""
        parts = [f"epoch {row['epoch']}/{self.epochs}",
                 f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}%"]
        for prefix, name in (("", ""), ("ema_", "EMA ")):
            for split in ("val", "test"):
                key = f"{prefix}{split}"
                if row.get(f"{key}_loss") is not None:
                    top5 = f" top-5 {row[f'{key}_acc5']:.2f}%" if f"{key}_acc5" in row else ""
                    parts.append(f"{name}{split} loss {row[f'{key}_loss']:.4f} acc {row[f'{key}_acc']:.2f}%{top5}")
        parts += [f"best {row['best_acc']:.2f}%", f"lr {row['lr']:.4g}",
                  f"{row['epoch_seconds']:.1f}s, {row['train_images_per_second']:.0f} img/s"]
        return " | ".join(parts)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
