"""Compare runs of main.py: the mean ± sd over seeds of each recipe, one table row per group of runs that differ
only in their seed.

    python compare.py results/digits-*                    # the runs whose folders match
    python compare.py 'results/digits-*'                  # the same: compare.py expands quoted globs itself
    python compare.py results/                            # every run folder in results/
    python compare.py results/exc-s* results/last-s* --csv table.csv --markdown table.md --plot curves.png

Runs whose flags differ only in --seed (and in flags that do not change what is trained, see IGNORED_FLAGS)
form a group; a group's label names the flags in which the groups differ (``head=last``). Accuracies are the
mean ± sample standard deviation over the group's runs. With --val-split, the final test accuracy is the one at
the first epoch of best validation accuracy (the model main.py selects); the best test accuracy over epochs is
shown too, but marked, as choosing an epoch by it peeks at the test set. Unfinished runs (in progress, crashed,
stopped, failed) count with the epochs they have and are listed under the table.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import socket
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from upanets_lab import commandline
from upanets_lab.errors import UserError
from upanets_lab.files import atomic_write
from upanets_lab.training.logs import RECORD_KEYS, pyplot, save_figure

# Flags that do not change what a run trains: runs that differ only in them are seeds of one recipe. Besides
# the seed, these are per-run bookkeeping: names and folders, resumption, logging, and where and with how many
# decoding processes it ran (they change the speed columns, not the recipe).
IGNORED_FLAGS = frozenset({"seed", "run_name", "resume", "overwrite", "checkpoint_dir", "save_path", "no_progress",
                           "tensorboard", "workers", "device", "config", "evaluate", "dist_timeout"})

# The flags that choose the model: a comparison of models may differ in these alone.
MODEL_FLAGS = frozenset({"model", "filters", "blocks", "head"})
RUN_FOLDER_HINT = "give results/<run-name> (the folder main.py writes its metrics to) or a folder of them"
PEEK_MARK = "†"


@dataclass(frozen=True)
class Spread:
    """The mean and sample standard deviation of one number over the runs that have it (sd None for one run)."""
    mean: float | None
    sd: float | None
    n: int


@dataclass
class RunSummary:
    """What the table needs of one run folder."""
    path: Path
    recipe: dict[str, Any]  # the flags of args.json, less IGNORED_FLAGS
    seed: Any
    status: str  # done, in progress, crashed, running (other host), stopped, failed, incomplete
    status_detail: str  # why, for the note under the table
    rows: list[dict[str, Any]]
    planned_epochs: int | None
    has_val: bool
    has_ema: bool
    best_test_acc: float | None
    final_test_acc: float | None  # the last epoch's; with a validation split, at the best validation epoch
    selected_epoch: int | None  # the epoch of final_test_acc
    ema_test_acc: float | None  # the EMA model's, at the same epoch
    wall_seconds: float | None  # the sum of its epochs' times; None before the first epoch
    images_per_second: float | None
    model: str | None = None  # the registered model name (args.json's model_name)
    params: float | None = None  # its parameters and GFLOPs per image (args.json's model_size)
    gflops: float | None = None

    @property
    def finished(self) -> bool:
        return self.status == "done"


@dataclass
class Group:
    """Runs that differ only in seed, and their numbers over seeds."""
    label: str
    runs: list[RunSummary]
    best_test_acc: Spread = field(init=False)
    final_test_acc: Spread = field(init=False)
    ema_test_acc: Spread = field(init=False)
    wall_seconds: Spread = field(init=False)
    images_per_second: Spread = field(init=False)

    def __post_init__(self) -> None:
        self.best_test_acc = spread(run.best_test_acc for run in self.runs)
        self.final_test_acc = spread(run.final_test_acc for run in self.runs)
        self.ema_test_acc = spread(run.ema_test_acc for run in self.runs)
        self.wall_seconds = spread(run.wall_seconds for run in self.runs)
        self.images_per_second = spread(run.images_per_second for run in self.runs)

    @property
    def params_m(self) -> float | None:
        """Millions of parameters of the group's model, where its runs record them."""
        return None if self.runs[0].params is None else self.runs[0].params / 1e6

    @property
    def acc_per_param(self) -> float | None:
        """The UPANets paper's efficiency: final test accuracy (mean, %) per million parameters."""
        if self.params_m is None or self.final_test_acc.mean is None:
            return None
        return self.final_test_acc.mean / self.params_m

    @property
    def unfinished(self) -> list[RunSummary]:
        return [run for run in self.runs if not run.finished]

    @property
    def has_val(self) -> bool:
        return any(run.has_val for run in self.runs)

    @property
    def has_ema(self) -> bool:
        return any(run.has_ema for run in self.runs)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = commandline.make_parser("Compare runs of main.py: mean ± sd over seeds per recipe", add_help=add_help)
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR",
                        help="run folders (results/<run-name>), folders of them (results/), or globs of them")
    output = parser.add_argument_group("output")
    output.add_argument("--csv", default=None, type=Path, metavar="FILE.csv",
                        help="also write the table as CSV (mean and sd columns)")
    output.add_argument("--markdown", default=None, type=Path, metavar="FILE.md",
                        help="also write the table as Markdown")
    output.add_argument("--plot", default=None, type=Path, metavar="FILE.png",
                        help="also plot each group's accuracy and training loss per epoch (mean ± sd)")
    output.add_argument("--efficiency-plot", default=None, type=Path, metavar="FILE.png",
                        help="also draw the UPANets paper's efficiency figure: final test accuracy (mean ± sd) "
                        "against accuracy per million parameters, against parameters and against GFLOPs")
    return parser


# ----------------------------------------------------------------------------- finding and reading runs


def find_run_folders(patterns: Sequence[str]) -> list[Path]:
    """The run folders that ``patterns`` name: paths or globs of run folders or of folders holding them."""
    folders: list[Path] = []
    for pattern in patterns:
        if os.path.lexists(pattern) or not glob.has_magic(pattern):
            folders += run_folders_in(Path(pattern))
            continue
        matches = [Path(match) for match in sorted(glob.glob(pattern)) if os.path.isdir(match)]
        if not matches:
            raise UserError(f"no folders match {pattern}; {RUN_FOLDER_HINT}")
        for match in matches:
            folders += run_folders_in(match)
    return list({folder.resolve(): folder for folder in folders}.values())  # a run named twice counts once


def is_run_folder(path: Path) -> bool:
    # A run that has not finished its first epoch yet has args.json but no metrics.jsonl.
    return (path / "metrics.jsonl").is_file() or (path / "args.json").is_file()


def run_folders_in(path: Path) -> list[Path]:
    """``[path]`` for a run folder, else the run folders in it."""
    if not path.exists():
        raise UserError(f"{path}: no such folder; {RUN_FOLDER_HINT}")
    if not path.is_dir():
        raise UserError(f"{path}: not a folder; {RUN_FOLDER_HINT}")
    if is_run_folder(path):
        return [path]
    entries = sorted(entry for entry in path.iterdir() if not entry.name.startswith("."))
    if not entries:
        raise UserError(f"{path}: empty folder; {RUN_FOLDER_HINT}")
    runs = [entry for entry in entries if entry.is_dir() and is_run_folder(entry)]
    if runs:
        return runs
    if any(entry.is_dir() for entry in entries):
        raise UserError(f"{path}: none of its sub-folders is a run folder of main.py (none has a metrics.jsonl "
                        f"or args.json); {RUN_FOLDER_HINT}")
    raise UserError(f"{path}: not a run folder of main.py (no metrics.jsonl or args.json); {RUN_FOLDER_HINT}")


def read_json_text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not valid JSON (not UTF-8 text)") from None


def read_record(folder: Path) -> dict[str, Any]:
    """The run's args.json (its flags and record keys); {} for a folder without one."""
    path = folder / "args.json"
    if not path.is_file():
        return {}
    try:
        record = json.loads(read_json_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: not a run's args.json (a JSON object of flags), got {type(record).__name__}")
    return record


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """The rows of the run's metrics.jsonl, one per finished epoch; [] before the first."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(read_json_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}, line {number}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or "epoch" not in row:
            raise UserError(f"{path}, line {number}: not a metrics row of main.py (a JSON object with an epoch)")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- one run


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        pass
    return True


def run_status(status: Any, epochs: int, planned: int | None) -> tuple[str, str]:
    """The run's state for the table, and what to say about it under the table when it is not done."""
    if not isinstance(status, dict):  # args.json of a main.py that did not record it
        return ("done", "") if planned is not None and epochs >= planned else ("incomplete", "no status recorded")
    state, pid, host = status.get("state"), status.get("pid"), status.get("host")
    if state == "running":
        if host != socket.gethostname():
            return "running (other host)", f"process {pid} on {host}"
        if pid_alive(pid):
            return "in progress", f"process {pid}"
        return "crashed", f"recorded as running, but process {pid} is gone"
    if state == "done" and planned is not None and epochs < planned:
        return "incomplete", "recorded as done with fewer epochs than planned"
    return str(state or "unknown"), str(status.get("message", ""))


def selected_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The row whose test accuracy a run reports: the last, or with a validation split the first of best
    validation accuracy (the EMA model's where there is one), as main.py selects its model."""
    key = next((key for key in ("ema_val_acc", "val_acc") if any(row.get(key) is not None for row in rows)), None)
    if key is None:
        return rows[-1] if rows else None
    # max() returns the first of equal rows: main.py keeps a model only when the accuracy beats the best so far.
    return max((row for row in rows if row.get(key) is not None), key=lambda row: row[key])


def numbers(rows: Iterable[dict[str, Any]], key: str) -> list[float]:
    return [row[key] for row in rows if row.get(key) is not None]


def summarize_run(folder: Path) -> RunSummary:
    """Read one run folder."""
    record, rows = read_record(folder), read_metrics(folder)
    flags = {key: value for key, value in record.items() if key not in RECORD_KEYS}
    planned = flags.get("epochs") if isinstance(flags.get("epochs"), int) else None
    status, detail = run_status(record.get("status"), len(rows), planned)
    selected = selected_row(rows) or {}
    tests, speeds, seconds = (numbers(rows, key) for key in ("test_acc", "train_images_per_second", "epoch_seconds"))
    size = record.get("model_size") if isinstance(record.get("model_size"), dict) else {}
    return RunSummary(
        path=folder, recipe={key: value for key, value in flags.items() if key not in IGNORED_FLAGS},
        seed=flags.get("seed"), status=status, status_detail=detail, rows=rows, planned_epochs=planned,
        has_val=bool(numbers(rows, "val_acc")), has_ema=bool(numbers(rows, "ema_test_acc")),
        best_test_acc=max(tests) if tests else None, final_test_acc=selected.get("test_acc"),
        selected_epoch=selected.get("epoch"), ema_test_acc=selected.get("ema_test_acc"),
        wall_seconds=sum(seconds) if seconds else None,
        images_per_second=statistics.fmean(speeds) if speeds else None, model=record.get("model_name"),
        params=size.get("params"), gflops=size.get("gflops"))


# ----------------------------------------------------------------------------- groups


def spread(values: Iterable[float | None]) -> Spread:
    known = [value for value in values if value is not None]
    if not known:
        return Spread(None, None, 0)
    return Spread(statistics.fmean(known), statistics.stdev(known) if len(known) > 1 else None, len(known))


def recipe_key(recipe: dict[str, Any]) -> str:
    return json.dumps(recipe, sort_keys=True, default=str)


def differing_flags(recipes: Sequence[dict[str, Any]]) -> list[str]:
    """The flags whose values (or presence) are not the same in all ``recipes``, in args.json's order."""
    keys = list(dict.fromkeys(key for recipe in recipes for key in recipe))
    return [key for key in keys
            if len({recipe_key({key: recipe[key]}) if key in recipe else None for recipe in recipes}) > 1]


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def group_runs(runs: Sequence[RunSummary]) -> tuple[list[Group], list[str]]:
    """The groups of runs with one recipe, in the order of their first runs, and the flags that tell them apart."""
    by_recipe: dict[str, list[RunSummary]] = {}
    for run in runs:
        by_recipe.setdefault(recipe_key(run.recipe), []).append(run)
    members = list(by_recipe.values())
    differing = differing_flags([group[0].recipe for group in members])
    groups = []
    for group in members:
        recipe = group[0].recipe
        label = ", ".join(f"{key}={format_value(recipe[key]) if key in recipe else '(unset)'}" for key in differing)
        groups.append(Group(label or "all runs", group))
    return groups, differing


# ----------------------------------------------------------------------------- output


def format_spread(value: Spread, digits: int = 2) -> str:
    if value.mean is None:
        return "-"
    return f"{value.mean:.{digits}f}" + (f" ± {value.sd:.{digits}f}" if value.sd is not None else "")


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes = round(seconds) // 60
    return f"{minutes}m {round(seconds) % 60:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def format_epochs(group: Group) -> str:
    """Completed epochs (a range where the runs differ) / planned."""
    done = sorted(len(run.rows) for run in group.runs)
    planned = group.runs[0].planned_epochs
    completed = str(done[0]) if done[0] == done[-1] else f"{done[0]}-{done[-1]}"
    return f"{completed}/{planned if planned is not None else '?'}"


def selected_epochs(group: Group) -> str:
    return ", ".join(str(run.selected_epoch) for run in group.runs if run.selected_epoch is not None)


def table(groups: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    """The header and rows of cells that the text and Markdown tables show (with the models' size and the
    paper's efficiency, accuracy per million parameters, where the runs record their size)."""
    with_val, with_ema = any(g.has_val for g in groups), any(g.has_ema for g in groups)
    with_size = any(g.params_m is not None for g in groups)
    header = ["group", "runs", "best test acc", "final test acc", *(["selected epoch"] if with_val else []),
              *(["EMA test acc"] if with_ema else []), "epochs", "wall time", "train img/s",
              *(["params (M)", "GFLOPs", "acc/params (%/M)"] if with_size else [])]
    rows = []
    for g in groups:
        unfinished = f" ({len(g.unfinished)} unfinished)" if g.unfinished else ""
        peeks = f" {PEEK_MARK}" if g.has_val and g.best_test_acc.mean is not None else ""
        rows.append([g.label, f"{len(g.runs)}{unfinished}", format_spread(g.best_test_acc) + peeks,
                     format_spread(g.final_test_acc), *([selected_epochs(g) if g.has_val else "last"] * with_val),
                     *([format_spread(g.ema_test_acc)] * with_ema), format_epochs(g),
                     "-" if g.wall_seconds.mean is None else format_seconds(g.wall_seconds.mean),
                     "-" if g.images_per_second.mean is None else f"{g.images_per_second.mean:,.0f}",
                     *(size_cells(g) if with_size else [])])
    return header, rows


def size_cells(group: Group) -> list[str]:
    gflops = group.runs[0].gflops
    return ["-" if group.params_m is None else f"{group.params_m:.2f}", "-" if gflops is None else f"{gflops:.3f}",
            "-" if group.acc_per_param is None else f"{group.acc_per_param:.2f}"]


def summary_line(groups: Sequence[Group], differing: Sequence[str]) -> str:
    runs = sum(len(g.runs) for g in groups)
    if len(groups) == 1:
        return f"{runs} run{'s' * (runs != 1)} of one recipe (they differ only in seed)"
    line = (f"{runs} runs in {len(groups)} groups, which differ in: {', '.join(differing)} "
            "(runs in a group differ only in seed)")
    mixed = [flag for flag in differing if flag not in MODEL_FLAGS]
    if "model" in differing and mixed:  # a comparison of models holds all else equal
        line += f"; NOT a like-for-like comparison of models: they also differ in {', '.join(mixed)}"
    return line


def notes(groups: Sequence[Group]) -> list[str]:
    """What the marks in the table mean, and which runs are unfinished."""
    lines = []
    if any(g.has_val for g in groups):
        lines.append(f"{PEEK_MARK} peeks at the test set (an epoch chosen by its test accuracy): these runs have a "
                     "validation split; their final test acc is at the first epoch of best validation accuracy "
                     "(selected epoch), the model main.py selects")
    if any(g.has_ema for g in groups):
        lines.append("EMA test acc: the EMA model's test accuracy at the epoch of final test acc")
    unfinished = [(g, run) for g in groups for run in g.unfinished]
    if unfinished:
        lines.append("unfinished runs (their numbers are from the epochs they have):")
        for g, run in unfinished:
            detail = f": {run.status_detail}" if run.status_detail else ""
            lines.append(f"  {run.path} [{g.label}]: {run.status}{detail}; "
                         f"{len(run.rows)}/{run.planned_epochs or '?'} epochs")
    return lines


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns: the group label left, the numbers right."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def write_markdown(path: Path, groups: Sequence[Group], differing: Sequence[str]) -> None:
    header, rows = table(groups)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    lines = [summary_line(groups, differing), "", line(header),
             "|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|", *map(line, rows)]
    extra = notes(groups)
    if extra:  # two trailing spaces: a Markdown line break, so that each note keeps its own line
        lines += ["", *(f"{note}  " for note in extra)]
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_csv(path: Path, groups: Sequence[Group], differing: Sequence[str]) -> None:
    """One row per group: its label, the differing flags' values, and each number's mean and sd."""
    spreads = ("best_test_acc", "final_test_acc", "ema_test_acc", "wall_seconds", "images_per_second")
    header = ["group", *differing, "runs", "unfinished", "has_val_split", *[f"{name}_{part}" for name in spreads
              for part in ("mean", "sd")], "selected_epochs", "epochs_completed_min", "epochs_completed_max",
              "epochs_planned", "params", "gflops", "acc_per_mparam"]
    with atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for g in groups:
            recipe, done = g.runs[0].recipe, [len(run.rows) for run in g.runs]
            values = [getattr(getattr(g, name), part) for name in spreads for part in ("mean", "sd")]
            writer.writerow([g.label, *(format_value(recipe[key]) if key in recipe else "" for key in differing),
                             len(g.runs), len(g.unfinished), g.has_val,
                             *("" if value is None else round(value, 4) for value in values),
                             selected_epochs(g) if g.has_val else "", min(done), max(done),
                             g.runs[0].planned_epochs or "", *("" if value is None else value for value in (
                                 g.runs[0].params, g.runs[0].gflops,
                                 None if g.acc_per_param is None else round(g.acc_per_param, 4)))])


def curve(runs: Sequence[RunSummary], key: str) -> tuple[list[int], list[float], list[float]]:
    """Per epoch: the mean and sd of ``key`` over the runs that measured it (sd 0 for one run)."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        for row in run.rows:
            if row.get(key) is not None:
                by_epoch.setdefault(row["epoch"], []).append(row[key])
    epochs = sorted(by_epoch)
    means = [statistics.fmean(by_epoch[e]) for e in epochs]
    sds = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
    return epochs, means, sds


def plot(path: Path, groups: Sequence[Group]) -> None:
    """Two panels: test (and dashed validation) accuracy, and training loss, per group with a ± 1 sd band."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    colors = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20").colors
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(13, 5))
    for i, g in enumerate(groups):
        for ax, key, style, label in ((ax_acc, "test_acc", "-", g.label), (ax_acc, "val_acc", "--",
                                      f"{g.label} (validation)"), (ax_loss, "train_loss", "-", g.label)):
            epochs, means, sds = curve(g.runs, key)
            if not epochs:
                continue
            color = colors[i % len(colors)]
            ax.plot(epochs, means, style, color=color, marker=".", label=label)
            ax.fill_between(epochs, [m - s for m, s in zip(means, sds)], [m + s for m, s in zip(means, sds)],
                            color=color, alpha=0.2, linewidth=0)
    for ax, ylabel in ((ax_acc, "top-1 accuracy (%)"), (ax_loss, "training loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    ax_acc.set_title("test accuracy (validation dashed): mean ± 1 sd over seeds")
    ax_loss.set_title("training loss: mean ± 1 sd over seeds")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def efficiency_plot(path: Path, groups: Sequence[Group]) -> None:
    """The paper's Highlight figure from these runs: accuracy (mean, ± sd bars) against Acc/Params, marker area
    by parameters, the UPANets models joined by a dashed line, every point labelled; then the same accuracy
    against parameters and against GFLOPs (log scales)."""
    sized = [g for g in groups if g.acc_per_param is not None and g.runs[0].gflops is not None]
    if not sized:
        raise UserError("--efficiency-plot: no run records its model's size (args.json's model_size); it needs "
                        "runs of this version of main.py")
    plt = pyplot()
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.5))
    panels = ((lambda g: g.acc_per_param, "accuracy per million parameters (%/M)", False),
              (lambda g: g.params_m, "parameters (M)", True), (lambda g: g.runs[0].gflops, "GFLOPs per image", True))
    upanets = sorted((g for g in sized if (g.runs[0].model or "").startswith("upanets")), key=lambda g: g.params_m)
    for ax, (x_of, xlabel, log) in zip(axes, panels):
        for g in sized:
            ax.errorbar(x_of(g), g.final_test_acc.mean, yerr=g.final_test_acc.sd or 0, fmt="none", ecolor="gray",
                        capsize=3)
            ax.scatter(x_of(g), g.final_test_acc.mean, s=20 + 15 * g.params_m, alpha=0.6)
            ax.annotate(g.label, (x_of(g), g.final_test_acc.mean), fontsize="small", xytext=(4, 4),
                        textcoords="offset points")
        if len(upanets) > 1:
            ax.plot([x_of(g) for g in upanets], [g.final_test_acc.mean for g in upanets], "--", color="black",
                    linewidth=1, label="UPANets")
            ax.legend(fontsize="small")
        if log:  # plain numbers at the ticks, not powers of ten
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("final test accuracy (%), mean ± sd over seeds")
        ax.grid(alpha=0.3)
    axes[0].set_title("accuracy against efficiency (marker area: parameters)")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


# ----------------------------------------------------------------------------- the script


def main(args: argparse.Namespace) -> list[Group]:
    """Print the table (and write --csv, --markdown, --plot); return the groups."""
    runs = [summarize_run(folder) for folder in find_run_folders(args.paths)]
    groups, differing = group_runs(runs)
    header, rows = table(groups)
    print(summary_line(groups, differing), "", text_table(header, rows), sep="\n")
    extra = notes(groups)
    if extra:
        print("", *extra, sep="\n")
    if args.csv is not None:
        write_csv(args.csv, groups, differing)
    if args.markdown is not None:
        write_markdown(args.markdown, groups, differing)
    if args.plot is not None:
        plot(args.plot, groups)
    if args.efficiency_plot is not None:
        efficiency_plot(args.efficiency_plot, groups)
    return groups


def cli(argv: Iterable[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)

    def run() -> None:  # main's groups are for tests, not an exit code
        main(args)

    return commandline.run_cli(run, memory_remedy=lambda: "compare fewer runs")


if __name__ == "__main__":
    sys.exit(cli())
