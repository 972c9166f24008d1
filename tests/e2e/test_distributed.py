"""torchrun / DistributedDataParallel on the CPU (gloo): two processes train one run.

`torchrun --standalone --nproc_per_node 2 main.py ...` on a tiny CIFAR-format set must write one set of outputs,
evaluate the test set exactly once across ranks (21 images: the ranks get 11 and 10), end with the same weights on
both ranks, and leave a checkpoint that a single process can evaluate and resume.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch

from upanets_lab.data.samples import make_cifar10

from helpers import REPO_ROOT, CliResult, read_metrics, tiny_flags, torchrun

RUN = "ddp"

# Runs main.main() in each torchrun process and saves the model that rank ended with, for the test to compare.
_RANK_WORKER = """
import os
import sys
import warnings

import torch

import main

out = sys.argv[1]
model = main.main(main.get_args_parser().parse_args(sys.argv[2:]))
state = {{key: value.detach().cpu().clone() for key, value in model.state_dict().items()}}
# the memory layout this rank trained in: rank 0 measured it and every rank must use its choice
state["channels_last"] = torch.tensor(model.root[0].weight.is_contiguous(memory_format=torch.channels_last))
torch.save(state, os.path.join(out, "rank" + os.environ["RANK"] + ".pth"))
"""


def assert_exit_0(result: subprocess.CompletedProcess | CliResult) -> None:
    """A failed run shows its own output (a rank's abort says why only on stderr), not a clipped repr."""
    assert result.returncode == 0, (f"exit {result.returncode}\n--- stdout ---\n{result.stdout[-2000:]}"
                                    f"\n--- stderr ---\n{result.stderr[-8000:]}")


def ddp_flags(root: Path, data_dir: Path, **overrides) -> list:
    return ["--dataset", "cifar10", "--data-dir", data_dir, "--no-download", "--device", "cpu", "--seed", "2",
            *tiny_flags(root, **{"run_name": RUN, "epochs": 2, **overrides})]


@pytest.fixture(scope="module")
def cifar21(tmp_path_factory):
    """40 train / 21 test images: an odd test set, so an evaluation that pads or drops a sample is off."""
    root = tmp_path_factory.mktemp("cifar21")
    make_cifar10(root, n_train=40, n_test=21, seed=11)
    return root


@pytest.fixture(scope="module")
def ddp_run(cifar21, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_run")
    result = torchrun([REPO_ROOT / "main.py", *ddp_flags(root, cifar21)], cwd=root)
    return root, result


def test_torchrun_writes_one_set_of_outputs(ddp_run):
    root, result = ddp_run
    assert_exit_0(result)
    assert "Traceback" not in result.stderr
    assert result.stdout.count("data: cifar10, 40 train / 21 test images") == 1  # only rank 0 logs
    training = [line for line in result.stdout.splitlines() if line.startswith("training ")]
    assert len(training) == 1 and "processes=2, global batch 16)" in training[0], result.stdout
    assert len(re.findall(r"^epoch \d/2 ", result.stdout, re.M)) == 2

    assert [p.name for p in (root / "checkpoint").iterdir()] == [RUN]
    assert sorted(p.name for p in (root / "checkpoint" / RUN).iterdir()) == ["best.pth", "last.pth"]
    assert [p.name for p in (root / "results").iterdir()] == [RUN]
    assert sorted(p.name for p in (root / "results" / RUN).iterdir()) == [
        "args.json", "curves.png", "metrics.csv", "metrics.jsonl"]
    rows = read_metrics(root / "results" / RUN / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [1, 2]
    assert [row["lr"] for row in rows] == [0.1, 0.05]

    last = torch.load(root / "checkpoint" / RUN / "last.pth", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and last["world_size"] == 2 and last["epoch_state"] is None
    assert not any(key.startswith(("module.", "_orig_mod.")) for key in last["model"])
    # each rank trains on 20 of the 40 images per epoch in batches [8, 8, 4]: 3 steps
    assert int(last["model"]["bn.num_batches_tracked"]) == 2 * 3


def test_ddp_test_accuracy_equals_single_process_evaluation(ddp_run, cifar21, run_cli):
    root, result = ddp_run
    assert_exit_0(result)
    weights = root / "checkpoint" / RUN / "last.pth"
    single = run_cli(["--evaluate", "--weights", weights, "--dataset", "cifar10", "--data-dir", cifar21,
                      "--no-download", "--filters", "4", "--batch-size", "8", "--workers", "0", "--no-progress"],
                     cwd=root)
    assert_exit_0(single)
    line = next(line for line in single.stdout.splitlines() if line.startswith("evaluate "))
    loss, top1, images = re.search(r"test loss ([0-9.]+) \| top-1 ([0-9.]+)% .*\((\d+) images\)", line).groups()
    last = read_metrics(root / "results" / RUN / "metrics.jsonl")[-1]
    assert images == "21"
    assert top1 == f"{last['test_acc']:.2f}"
    assert loss == f"{last['test_loss']:.4f}"
    # accuracy over 21 images is a multiple of 1/21: no sample was counted twice or dropped
    assert round(last["test_acc"] * 21 / 100, 9) == round(last["test_acc"] * 21 / 100)


def test_single_process_resumes_a_ddp_checkpoint(ddp_run, cifar21, tmp_path, run_cli):
    root, result = ddp_run
    assert_exit_0(result)
    for folder in ("checkpoint", "results"):
        subprocess.run(["cp", "-a", str(root / folder), str(tmp_path / folder)], check=True)
    resumed = run_cli([*ddp_flags(tmp_path, cifar21, epochs=3), "--resume", "auto"], cwd=tmp_path)
    assert_exit_0(resumed)
    assert f"resumed from {tmp_path / 'checkpoint' / RUN / 'last.pth'} at epoch 3" in resumed.stdout
    assert "processes=1, global batch 8)" in resumed.stdout
    rows = read_metrics(tmp_path / "results" / RUN / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert rows[:2] == read_metrics(root / "results" / RUN / "metrics.jsonl")
    last = torch.load(tmp_path / "checkpoint" / RUN / "last.pth", map_location="cpu", weights_only=True)
    assert last["epoch"] == 3 and last["world_size"] == 1


def test_ranks_end_with_identical_weights(cifar21, tmp_path):
    worker = tmp_path / "rank_worker.py"
    worker.write_text(_RANK_WORKER.format())
    (tmp_path / "ranks").mkdir()
    result = torchrun([worker, tmp_path / "ranks", *ddp_flags(tmp_path, cifar21)], cwd=tmp_path)
    assert_exit_0(result)
    rank0 = torch.load(tmp_path / "ranks" / "rank0.pth", weights_only=True)
    rank1 = torch.load(tmp_path / "ranks" / "rank1.pth", weights_only=True)
    checkpoint = torch.load(tmp_path / "checkpoint" / RUN / "last.pth", map_location="cpu", weights_only=True)
    saved = checkpoint["model"]
    layouts = rank0.pop("channels_last"), rank1.pop("channels_last")
    assert bool(layouts[0]) == bool(layouts[1]) == checkpoint["speed_choice"]["channels_last"]
    assert result.stdout.count("speed: ") == 1  # measured (or recalled) once, by rank 0
    assert list(rank0) == list(rank1) == list(saved)
    for key in rank0:  # parameters (DDP all-reduces gradients) and BatchNorm buffers (running statistics) alike
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], saved[key]), key
