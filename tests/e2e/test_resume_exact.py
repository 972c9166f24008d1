"""A run stopped anywhere and resumed with ``--resume auto`` ends exactly as the uninterrupted run: in epoch 2 and 3,
mid-epoch and at an epoch's end, for each recipe option alone and for all of them together, in one process and
under torchrun with two.

Each option set trains one uninterrupted reference run (3 epochs), then one run stopped and resumed at every
kind of place (``stopping.run_until`` raises a real SIGTERM after a chosen step, so the places are the same on
any machine); the final ``last.pth`` must equal the reference in every tensor (weights, EMA, optimizer, RNG
states) and the metrics rows in every value but the timings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from upanets_lab.data.samples import make_cifar10

import main
from helpers import REPO_ROOT, TESTS_DIR, read_metrics, tiny_flags, torchrun
from stopping import run_until

N_TRAIN, BATCH, VAL = 96, 8, 16
TIMING_FIELDS = ("epoch_seconds", "train_images_per_second")
OPTION_SETS = {
    "plain": [],
    "label-smoothing": ["--label-smoothing", "0.1"],
    "ta-wide": ["--auto-augment", "ta_wide"],
    "random-erase": ["--random-erase", "0.5"],
    "ema": ["--model-ema", "--model-ema-steps", "3"],
    "warmup": ["--lr-warmup-epochs", "1"],
    "tta": ["--tta", "flip-translate"],
    "mixup-cutmix": ["--mixup-alpha", "0.2", "--cutmix-alpha", "1.0"],
    "alternating-flip": ["--alternating-flip"],
    "all": ["--recipe", "modern", "--mixup-alpha", "0.2", "--cutmix-alpha", "1.0", "--alternating-flip",
            "--lr-warmup-epochs", "1", "--auto-augment", "ta_wide", "--random-erase", "0.25", "--model-ema",
            "--model-ema-steps", "3", "--tta", "flip-translate", "--clip-grad-norm", "5", "--val-split", str(VAL)],
}


def steps_per_epoch(options: list[str]) -> int:
    return (N_TRAIN - (VAL if "--val-split" in options else 0)) // BATCH


def run_flags(data: Path, root: Path, options: list[str]) -> list:
    # Precision and layout fixed: nothing is measured, so nothing differs between the runs compared.
    return ["--dataset", "cifar10", "--data-dir", data, "--no-download", "--seed", "3", "--no-channels-last",
            *tiny_flags(root, epochs=3, batch_size=BATCH, run_name="run"), *options]


def tensors(value: Any, path: str = "") -> dict[str, torch.Tensor]:
    """Every tensor inside a checkpoint (nested dicts and lists), by its path."""
    if isinstance(value, torch.Tensor):
        return {path: value}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return {name: tensor for key, item in items for name, tensor in tensors(item, f"{path}/{key}").items()}


def assert_same_run(got_root: Path, expected_root: Path) -> None:
    """The same metrics rows (timings aside) and every tensor of last.pth equal, the flags aside."""
    strip = lambda rows: [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]  # noqa: E731
    rows = read_metrics(got_root / "results" / "run" / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert strip(rows) == strip(read_metrics(expected_root / "results" / "run" / "metrics.jsonl"))
    got, expected = (torch.load(root / "checkpoint" / "run" / "last.pth", weights_only=True)
                     for root in (got_root, expected_root))
    for key in ("epoch", "best_acc", "best", "scheduler", "epoch_state", "ema_updates"):
        assert got.get(key) == expected.get(key), key
    got_tensors, expected_tensors = tensors({**got, "args": None}), tensors({**expected, "args": None})
    assert list(got_tensors) == list(expected_tensors)
    unequal = [name for name, tensor in expected_tensors.items() if not torch.equal(got_tensors[name], tensor)]
    assert not unequal, f"{len(unequal)} of {len(expected_tensors)} tensors differ, such as {unequal[:5]}"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_data")
    make_cifar10(root, n_train=N_TRAIN, n_test=16, seed=9)
    return root


@pytest.fixture(scope="module", params=list(OPTION_SETS))
def reference(request, data, tmp_path_factory) -> tuple[str, Path]:
    """The option set's uninterrupted run, shared by its tests."""
    root = tmp_path_factory.mktemp(f"reference-{request.param}")
    assert main.cli([str(flag) for flag in run_flags(data, root, OPTION_SETS[request.param])]) == 0
    return request.param, root


def test_stops_mid_epoch_and_at_epoch_ends_resume_exactly(reference, data, tmp_path, capsys):
    """Stopped in the middle of epoch 2, at the end of epoch 2, in the middle of epoch 3 (and for every option
    together, in the middle of the warmup epoch 1 too), each time resumed: the uninterrupted run's results."""
    name, reference_root = reference
    options = OPTION_SETS[name]
    steps = steps_per_epoch(options)
    stops = [(2, 3), (2, steps), (3, steps - 2)]
    if name == "all":
        stops.insert(0, (1, 5))
    flags = run_flags(data, tmp_path, options)
    for number, (epoch, step) in enumerate(stops):
        assert run_until([*flags, *(["--resume", "auto"] if number else [])], epoch, step) == 143
        last = torch.load(tmp_path / "checkpoint" / "run" / "last.pth", weights_only=True)
        if step < steps:  # mid-epoch: the position, with its own generator state
            assert (last["epoch"], last["epoch_state"]["ranks"][0]["step"]) == (epoch - 1, step)
        else:
            assert (last["epoch"], last["epoch_state"]) == (epoch, None)
    capsys.readouterr()
    assert main.cli([str(flag) for flag in [*flags, "--resume", "auto"]]) == 0
    assert f"resumed from {tmp_path / 'checkpoint' / 'run' / 'last.pth'} at epoch 3, step {steps - 2}" in (
        capsys.readouterr().out)
    assert_same_run(tmp_path, reference_root)


# ----------------------------------------------------------------------------------- two processes

DDP_TRAIN, DDP_BATCH = 256, 2  # 60 steps per process and epoch once VAL are held out: a sync point (50) inside


def ddp_flags(data: Path, root: Path) -> list:
    return ["--dataset", "cifar10", "--data-dir", data, "--no-download", "--device", "cpu", "--seed", "4",
            "--no-channels-last", *tiny_flags(root, epochs=3, batch_size=DDP_BATCH, run_name="run"),
            *OPTION_SETS["all"]]


def test_two_processes_stopped_mid_epoch_and_at_an_epoch_end_resume_exactly(tmp_path_factory):
    """Under torchrun each process saves its own position (its draws differ from the other's) and resumes it."""
    data = tmp_path_factory.mktemp("ddp_resume_data")
    make_cifar10(data, n_train=DDP_TRAIN, n_test=10, seed=2)
    reference, stopped = tmp_path_factory.mktemp("ddp_reference"), tmp_path_factory.mktemp("ddp_stopped")
    result = torchrun([REPO_ROOT / "main.py", *ddp_flags(data, reference)], cwd=reference)
    assert result.returncode == 0, result.stderr[-4000:]

    stopping = TESTS_DIR / "stopping.py"
    # Rank 0 raises SIGTERM after step 45 of epoch 2; the processes agree on it at the next sync point, step 50.
    result = torchrun([stopping, 2, 45, *ddp_flags(data, stopped)], cwd=stopped)
    assert "stopped by signal 15 at epoch 2, step 50" in result.stderr, result.stderr[-4000:]
    last = torch.load(stopped / "checkpoint" / "run" / "last.pth", weights_only=True)
    positions = last["epoch_state"]["ranks"]
    assert [position["step"] for position in positions] == [50, 50] and last["world_size"] == 2
    assert not torch.equal(positions[0]["augment_rng"], positions[1]["augment_rng"])

    result = torchrun([stopping, 2, 60, *ddp_flags(data, stopped), "--resume", "auto"], cwd=stopped, fresh=False)
    assert "stopped by signal 15 after epoch 2" in result.stderr, result.stderr[-4000:]
    result = torchrun([REPO_ROOT / "main.py", *ddp_flags(data, stopped), "--resume", "auto"], cwd=stopped,
                      fresh=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert_same_run(stopped, reference)
