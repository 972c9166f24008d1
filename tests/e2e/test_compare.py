"""compare.py: run folders written by hand (args.json and metrics.jsonl as main.py writes them), no training.

The numbers are checked against means and sample standard deviations computed here from the rows written.
"""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
from pathlib import Path
from statistics import fmean, stdev

import pytest
from PIL import Image

import compare

HOST = socket.gethostname()


def flags(**overrides) -> dict:
    """args.json's flags and record keys of a 3-epoch run (the record keys differ per run, as real ones do)."""
    seed = overrides.get("seed", 0)
    record = {"seed": 0, "epochs": 3, "head": "exc", "lr": 0.1, "batch_size": 100, "recipe": "paper",
              "val_split": None, "model_ema": False, "data_dir": "data/digits", "run_name": f"run-s{seed}",
              "checkpoint_dir": "checkpoint", "save_path": "results", "resume": None, "overwrite": False,
              "no_progress": True, "tensorboard": False, "device": "cpu", "workers": 2,
              "model_config": {"filters": 8}, "data": {"val_split": None}, "speed_choice": {"seed": seed},
              "job": f"job-{seed}", "provenance": {"commit": f"abc{seed}"}, "command": [f"main.py --seed {seed}"],
              "status": {"state": "done", "pid": 1, "host": HOST, "time": "2024-01-01T00:00:00+0000"}}
    record.update(overrides)
    return record


def rows(test_accs, *, train_losses=None, seconds=10.0, speed=100.0, **columns) -> list[dict]:
    """Metrics rows with these test accuracies (None: not measured that epoch) and extra columns by name."""
    out = []
    for i, acc in enumerate(test_accs):
        row = {"epoch": i + 1, "train_loss": (train_losses or [2.0 - 0.5 * j for j in range(len(test_accs))])[i],
               "train_acc": 50.0, "test_loss": None if acc is None else 1.0, "test_acc": acc, "best_acc": 0.0,
               "lr": 0.1, "epoch_seconds": seconds + i, "train_images_per_second": speed * (i + 1)}
        row.update({name: values[i] for name, values in columns.items()})
        out.append(row)
    return out


def write_run(root: Path, name: str, record: dict | None, metrics: list[dict]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    if record is not None:
        (folder / "args.json").write_text(json.dumps(record, indent=2))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics))
    return folder


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def run_compare(*argv) -> list[compare.Group]:
    return compare.main(compare.get_args_parser().parse_args([str(arg) for arg in argv]))


EXC = {0: [50.0, 70.0, 65.0], 1: [55.0, 72.0, 74.0], 2: [60.0, 69.0, 71.0]}
LAST = {0: [40.0, 45.0, 50.0], 1: [42.0, 48.0], 2: [41.0]}  # seed 1 in progress, seed 2 crashed


@pytest.fixture
def results(tmp_path) -> Path:
    """3 seeds of --head exc, 3 of --head last (one in progress, one crashed), 2 older runs (no status) with
    --lr 0.05 (one incomplete); bookkeeping flags and record keys differ between seeds."""
    root = tmp_path / "results"
    for seed, accs in EXC.items():
        write_run(root, f"exc-s{seed}", flags(seed=seed, workers=seed, device=f"cuda:{seed}", resume=f"r{seed}"),
                  rows(accs, speed=100.0 * (seed + 1)))
    alive = {"state": "running", "pid": os.getpid(), "host": HOST, "time": "t"}
    dead = {"state": "running", "pid": dead_pid(), "host": HOST, "time": "t"}
    for seed, status in ((0, flags()["status"]), (1, alive), (2, dead)):
        write_run(root, f"last-s{seed}", flags(seed=seed, head="last", status=status), rows(LAST[seed]))
    old = {key: value for key, value in flags(lr=0.05).items() if key != "status"}
    write_run(root, "lr-s0", old, rows([30.0, 35.0, 33.0]))
    write_run(root, "lr-s1", {**old, "seed": 1}, rows([31.0, 36.0]))
    return root


def by_label(groups: list[compare.Group]) -> dict[str, compare.Group]:
    return {group.label: group for group in groups}


def test_groups_differ_only_in_seed_and_are_labelled_by_the_flags_that_differ(results):
    groups = by_label(run_compare(results))
    assert list(groups) == ["head=exc, lr=0.1", "head=last, lr=0.1", "head=exc, lr=0.05"]
    assert sorted(run.seed for run in groups["head=exc, lr=0.1"].runs) == [0, 1, 2]
    assert [len(group.runs) for group in groups.values()] == [3, 3, 2]


def test_mean_and_sample_sd_over_seeds(results):
    exc = by_label(run_compare(results))["head=exc, lr=0.1"]
    assert exc.best_test_acc.mean == pytest.approx(fmean([70, 74, 71]))
    assert exc.best_test_acc.sd == pytest.approx(stdev([70, 74, 71]))  # sample sd (n-1): 2.0817
    assert exc.final_test_acc.mean == pytest.approx(70.0)
    assert exc.final_test_acc.sd == pytest.approx(4.5825757, abs=1e-6)  # stdev([65, 74, 71])
    assert exc.wall_seconds.mean == pytest.approx(10 + 11 + 12)
    assert exc.images_per_second.mean == pytest.approx(fmean([200.0, 400.0, 600.0]))
    assert exc.images_per_second.sd == pytest.approx(stdev([200.0, 400.0, 600.0]))
    assert exc.ema_test_acc.mean is None


def test_unfinished_runs_count_with_their_epochs_and_are_marked(results, capsys):
    groups = by_label(run_compare(results))
    status = {run.path.name: run.status for group in groups.values() for run in group.runs}
    assert status == {"exc-s0": "done", "exc-s1": "done", "exc-s2": "done", "last-s0": "done",
                      "last-s1": "in progress", "last-s2": "crashed", "lr-s0": "done", "lr-s1": "incomplete"}
    last = groups["head=last, lr=0.1"]
    assert [run.path.name for run in last.unfinished] == ["last-s1", "last-s2"]
    assert last.final_test_acc.mean == pytest.approx(fmean([50.0, 48.0, 41.0]))
    assert last.final_test_acc.sd == pytest.approx(stdev([50.0, 48.0, 41.0]))
    out = capsys.readouterr().out
    table = {line.split("  ")[0]: line for line in out.splitlines() if line.startswith("head=")}
    assert "3 (2 unfinished)" in table["head=last, lr=0.1"] and "1-3/3" in table["head=last, lr=0.1"]
    assert "2 (1 unfinished)" in table["head=exc, lr=0.05"]
    assert "unfinished" not in table["head=exc, lr=0.1"] and "3/3" in table["head=exc, lr=0.1"]
    assert "head=exc, lr=0.1, head=last, lr=0.1" not in out and "groups, which differ in: head, lr" in out
    assert f"last-s1 [head=last, lr=0.1]: in progress: process {os.getpid()}; 2/3 epochs" in out
    assert "last-s2 [head=last, lr=0.1]: crashed: recorded as running, but process" in out
    assert "lr-s1 [head=exc, lr=0.05]: incomplete: no status recorded; 2/3 epochs" in out


def test_other_hosts_stopped_and_failed_runs(tmp_path):
    for name, status in (("other", {"state": "running", "pid": os.getpid(), "host": HOST + "-not"}),
                         ("stopped", {"state": "stopped", "pid": 1, "host": HOST, "message": "interrupted"}),
                         ("failed", {"state": "failed", "pid": 1, "host": HOST, "message": "out of memory"})):
        write_run(tmp_path, name, flags(seed=len(name), status=status), rows([50.0]))
    runs = {run.path.name: run for run in run_compare(tmp_path)[0].runs}
    assert {name: run.status for name, run in runs.items()} == {
        "failed": "failed", "other": "running (other host)", "stopped": "stopped"}
    assert runs["failed"].status_detail == "out of memory"


def test_validation_split_reports_test_accuracy_at_the_first_best_validation_epoch(tmp_path, capsys):
    # The test set is measured only when the validation accuracy reaches a new best (epochs 1, 2 and 4 of s0;
    # epoch 3 ties epoch 2, which is no new best).
    split = {"val_split": 300.0}
    write_run(tmp_path, "val-s0", flags(**split), rows([60.0, 68.0, None, 80.0, None],
                                                      val_acc=[55.0, 70.0, 70.0, 71.0, 65.0]))
    write_run(tmp_path, "val-s1", flags(seed=1, **split), rows([61.0, 66.0, 64.0, None, None],
                                                              val_acc=[50.0, 60.0, 75.0, 75.0, 74.0]))
    (group,) = run_compare(tmp_path)
    assert [run.selected_epoch for run in group.runs] == [4, 3]
    assert [run.final_test_acc for run in group.runs] == [80.0, 64.0]
    assert group.final_test_acc.mean == pytest.approx(72.0)
    assert group.final_test_acc.sd == pytest.approx(stdev([80.0, 64.0]))
    assert group.best_test_acc.mean == pytest.approx(fmean([80.0, 66.0]))  # reported, but it peeks
    assert group.label == "all runs"
    out = capsys.readouterr().out
    assert "selected epoch" in out and "4, 3" in out and f"{compare.PEEK_MARK} peeks at the test set" in out
    row = next(line for line in out.splitlines() if line.startswith("all runs"))
    assert f"73.00 ± 9.90 {compare.PEEK_MARK}" in row and "72.00 ± 11.31" in row


def test_ties_pick_the_first_best_validation_epoch(tmp_path):
    write_run(tmp_path, "tie", flags(val_split=300.0), rows([60.0, 70.0, 90.0], val_acc=[50.0, 80.0, 80.0]))
    (group,) = run_compare(tmp_path)
    assert (group.runs[0].selected_epoch, group.runs[0].final_test_acc) == (2, 70.0)


def test_ema_model(tmp_path, capsys):
    write_run(tmp_path, "ema", flags(model_ema=True), rows([60.0, 65.0, 70.0], ema_test_acc=[58.0, 66.0, 72.5]))
    write_run(tmp_path, "plain", flags(), rows([61.0, 64.0, 69.0]))
    groups = by_label(run_compare(tmp_path))
    assert groups["model_ema=true"].ema_test_acc.mean == 72.5 and groups["model_ema=true"].ema_test_acc.sd is None
    assert groups["model_ema=false"].ema_test_acc.n == 0
    out = capsys.readouterr().out
    assert "EMA test acc" in out
    assert "72.50" in next(line for line in out.splitlines() if line.startswith("model_ema=true"))


def test_ema_with_a_split_is_selected_by_the_ema_validation_accuracy(tmp_path):
    write_run(tmp_path, "ema", flags(model_ema=True, val_split=300.0),
              rows([60.0, 65.0, 62.0], val_acc=[50.0, 70.0, 60.0], ema_val_acc=[40.0, 55.0, 65.0],
                   ema_test_acc=[41.0, 56.0, 67.0]))
    run = run_compare(tmp_path)[0].runs[0]
    assert (run.selected_epoch, run.final_test_acc, run.ema_test_acc) == (3, 62.0, 67.0)


def test_csv_markdown_and_plot(results, tmp_path):
    out = tmp_path / "out"
    run_compare(results, "--csv", out / "t.csv", "--markdown", out / "t.md", "--plot", out / "curves.png")
    with open(out / "t.csv", newline="") as f:
        table = {row["group"]: row for row in csv.DictReader(f)}
    assert list(table) == ["head=exc, lr=0.1", "head=last, lr=0.1", "head=exc, lr=0.05"]
    exc = table["head=exc, lr=0.1"]
    assert (exc["head"], exc["lr"], exc["runs"], exc["unfinished"]) == ("exc", "0.1", "3", "0")
    assert float(exc["best_test_acc_mean"]) == pytest.approx(fmean([70, 74, 71]), abs=1e-4)
    assert float(exc["best_test_acc_sd"]) == pytest.approx(stdev([70, 74, 71]), abs=1e-4)
    assert float(exc["final_test_acc_sd"]) == pytest.approx(stdev([65, 74, 71]), abs=1e-4)
    assert exc["ema_test_acc_mean"] == "" and exc["epochs_planned"] == "3"
    assert table["head=last, lr=0.1"]["unfinished"] == "2"
    assert (table["head=last, lr=0.1"]["epochs_completed_min"], table["head=last, lr=0.1"]["epochs_completed_max"]
            ) == ("1", "3")
    markdown = (out / "t.md").read_text()
    assert "| group | runs | best test acc | final test acc | epochs | wall time | train img/s |" in markdown
    assert "| head=exc, lr=0.1 | 3 | 71.67 ± 2.08 | 70.00 ± 4.58 | 3/3 |" in markdown
    assert "| head=last, lr=0.1 | 3 (2 unfinished) |" in markdown
    png = (out / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(out / "curves.png") as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 100  # two panels side by side


def test_globs_are_expanded_and_a_run_named_twice_counts_once(results, monkeypatch):
    monkeypatch.chdir(results.parent)
    assert len(run_compare("results/exc-*")[0].runs) == 3
    groups = run_compare("results/last-s0", "results/last-*", "results/last-s[12]")
    assert [run.path.name for run in groups[0].runs] == ["last-s0", "last-s1", "last-s2"]


def one_error_line(capsys, argv) -> str:
    assert compare.cli([str(arg) for arg in argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_errors_are_one_line(tmp_path, capsys):
    run = write_run(tmp_path, "run", flags(), rows([50.0, 60.0, 70.0]))
    assert "missing: no such folder" in one_error_line(capsys, [tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    assert "empty: empty folder" in one_error_line(capsys, [tmp_path / "empty"])
    assert "no folders match" in one_error_line(capsys, [tmp_path / "nothing-*"])
    checkpoint = tmp_path / "checkpoint" / "run"
    checkpoint.mkdir(parents=True)
    (checkpoint / "last.pth").write_bytes(b"")
    message = one_error_line(capsys, [checkpoint])
    assert f"{checkpoint}: not a run folder of main.py (no metrics.jsonl or args.json)" in message
    assert "results/<run-name>" in message
    assert "none of its sub-folders is a run folder" in one_error_line(capsys, [tmp_path / "checkpoint"])
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2,\n')
    assert f"{run / 'metrics.jsonl'}, line 2: not valid JSON" in one_error_line(capsys, [run])
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (run / "args.json").write_text('{\n  "seed": 0,\n  oops\n}')
    assert f"{run / 'args.json'}, line 3: not valid JSON" in one_error_line(capsys, [run])


def test_a_run_before_its_first_epoch_is_counted_without_numbers(tmp_path, capsys):
    write_run(tmp_path, "done", flags(), rows([50.0, 60.0, 70.0]))
    started = tmp_path / "started"
    started.mkdir()
    (started / "args.json").write_text(json.dumps(flags(seed=1, status={"state": "failed", "pid": 1, "host": HOST,
                                                                          "message": "no data"})))
    (group,) = run_compare(tmp_path)
    assert [(run.status, len(run.rows)) for run in group.runs] == [("done", 3), ("failed", 0)]
    assert (group.final_test_acc.mean, group.final_test_acc.n, group.wall_seconds.mean) == (70.0, 1, 33.0)
    out = capsys.readouterr().out
    assert "2 (1 unfinished)" in out and "0-3/3" in out and "started [all runs]: failed: no data; 0/3 epochs" in out


# ------------------------------------------------------------------------------------ across models


def model_runs(root: Path, epochs: int = 3) -> None:
    """Three seeds each of upanets16, upanets32 and resnet18, recording their size as main.py does."""
    sizes = {"upanets16": (1_512_431, 0.335), "upanets32": (6_018_239, 1.335), "resnet18": (11_173_962, 1.111)}
    for m, (name, (params, gflops)) in enumerate(sizes.items()):
        for seed in range(3):
            record = flags(seed=seed, model=name, model_name=name, epochs=epochs,
                           model_size={"params": params, "gflops": gflops})
            write_run(root, f"{name}-s{seed}", record, rows([50.0, 60.0 + m, 80.0 + m + seed][:epochs]))


def test_the_cross_model_table_has_size_and_the_papers_efficiency(tmp_path):
    model_runs(tmp_path)
    groups = run_compare(tmp_path, "--csv", tmp_path / "t.csv")
    by_label = {g.label: g for g in groups}
    assert list(by_label) == ["model=resnet18", "model=upanets16", "model=upanets32"]  # the folders' order
    resnet = by_label["model=resnet18"]
    assert resnet.final_test_acc.mean == pytest.approx(fmean([82.0, 83.0, 84.0]))
    assert resnet.acc_per_param == pytest.approx(83.0 / 11.173962)
    header, cells = compare.table(groups)
    assert header[-3:] == ["params (M)", "GFLOPs", "acc/params (%/M)"]
    assert cells[1][-3:] == ["1.51", "0.335", f"{81.0 / 1.512431:.2f}"]
    table = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert [row["model"] for row in table] == ["resnet18", "upanets16", "upanets32"]
    assert float(table[0]["acc_per_mparam"]) == pytest.approx(83.0 / 11.173962, abs=1e-4)
    line = compare.summary_line(groups, ["model"])
    assert "NOT a like-for-like" not in line


def test_models_compared_under_different_recipes_are_flagged(tmp_path):
    model_runs(tmp_path / "a")
    write_run(tmp_path / "a", "resnet18-long", flags(model="resnet18", model_name="resnet18", epochs=4,
              model_size={"params": 11_173_962, "gflops": 1.111}), rows([50.0, 60.0, 70.0, 90.0]))
    groups, differing = compare.group_runs([compare.summarize_run(p) for p in sorted((tmp_path / "a").iterdir())])
    assert set(differing) == {"epochs", "model"}
    assert compare.summary_line(groups, differing).endswith(
        "NOT a like-for-like comparison of models: they also differ in epochs")


def test_the_efficiency_plot_is_drawn_from_the_runs(tmp_path):
    model_runs(tmp_path / "runs")
    out = tmp_path / "efficiency.png"
    run_compare(tmp_path / "runs", "--efficiency-plot", out)
    with Image.open(out) as image:
        assert image.size[0] > 3 * image.size[1] / 2  # three panels side by side
    write_run(tmp_path / "old", "run-s0", flags(), rows([50.0, 60.0, 70.0]))  # written before model_size existed
    with pytest.raises(compare.UserError, match="--efficiency-plot: no run records its model's size"):
        run_compare(tmp_path / "old", "--efficiency-plot", out)
