"""landscape.py (loss landscapes, Li et al. 2018) on an exc and a last run, and main.py --tensorboard.

The runs train on a tiny image folder with --filters 4: one exc run with --tensorboard, resumed for a second epoch,
and one --head last run. Landscapes run in-process (``landscape.cli``) except where the script itself is the point.
"""
from __future__ import annotations

import csv
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from tqdm import tqdm

from models.upanets import UPANets, load_weights
from upanets_lab.data import augment, loading, sources
from upanets_lab.data.samples import make_image_folder
from upanets_lab.training import logs
from upanets_lab.training.engine import Runtime, evaluate

import landscape
from helpers import REPO_ROOT, CliResult, child_env, one_line_error, read_metrics, run_main, run_script, tiny_flags

TRAIN_IMAGES, BATCH = 24, 8  # 3 classes x 8 images: 3 steps an epoch


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("landscape")
    make_image_folder(root / "data", classes=("ant", "bee", "cow"), per_class=8, val_per_class=4, size=16, seed=1)
    # --no-channels-last: nothing left for tuning.py to measure, so the runs start at once
    folder = ["--dataset", "folder", "--data-dir", root / "data", "--img-size", "16", "--seed", "1",
              "--no-channels-last"]
    for argv in ([*folder, *tiny_flags(root, run_name="exc"), "--tensorboard"],
                 [*folder, *tiny_flags(root, run_name="exc", epochs=2), "--tensorboard", "--resume", "auto"],
                 [*folder, *tiny_flags(root, head="last")]):
        result = run_main(argv, cwd=root)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result
    return root


def _weights(root: Path) -> dict[str, Path]:
    return {"exc": root / "checkpoint" / "exc" / "last.pth",
            "last": root / "checkpoint" / "folder-upanets4-last" / "last.pth"}


def _flags(root: Path, out: Path, *extra: object, weights: tuple[str, ...] = ("exc", "last")) -> list[str]:
    """The landscape's flags; the data set (folder) and its image size (16) are read from the checkpoints."""
    return [str(flag) for flag in ("--weights", *(_weights(root)[w] for w in weights), "--data-dir", root / "data",
                                   "--out", out, "--workers", "0", "--device", "cpu", "--no-progress", *extra)]


def _run(argv: list[str], capsys) -> CliResult:
    code = landscape.cli(argv)
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_centre_of_the_landscape_is_an_ordinary_evaluation(runs, capsys):
    out = runs / "ls-1d"
    result = _run(_flags(runs, out, "--images", TRAIN_IMAGES, "--points", 5, "--span", 0.5), capsys)
    assert result.returncode == 0 and result.stderr == "", result
    rows = _rows(out / "landscape.csv")
    assert list(rows[0]) == ["checkpoint", "alpha", "loss", "accuracy"]
    assert [row["alpha"] for row in rows] == ["-0.5", "-0.25", "0.0", "0.25", "0.5"] * 2
    with Image.open(out / "landscape.png") as im:
        im.verify()

    # All 24 training images, in the set's order and one batch, as an ordinary evaluation of each checkpoint sees them.
    bundle = sources.load_data("folder", runs / "data", img_size=16, workers=0)
    loader = loading.DeviceLoader(bundle.train, 100, shuffle=False, device="cpu")
    for head, path in _weights(runs).items():
        checkpoint = torch.load(path, weights_only=True)
        model = load_weights(UPANets(**checkpoint["model_config"]), checkpoint["model"])
        assert model.head == head
        transform = augment.DeviceTransform(checkpoint["data"]["mean"], checkpoint["data"]["std"], device="cpu")
        stats = evaluate(model, nn.CrossEntropyLoss(), loader, transform, Runtime(torch.device("cpu")))
        curve = [row for row in rows if row["checkpoint"] == str(path)]
        assert (float(curve[2]["loss"]), float(curve[2]["accuracy"])) == (stats["loss"], stats["acc1"])
        assert all(float(row["loss"]) != stats["loss"] for row in curve[:2] + curve[3:])  # the weights did move
        assert f"{path}: UPANets(filters=4, " in result.stdout


def test_sample_is_a_seeded_choice_of_training_images(runs):
    train = sources.load_data("folder", runs / "data", img_size=16, workers=0).train
    first, again, other = (landscape.sample_images(train, 10, seed) for seed in (0, 0, 1))
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, other.images)
    index = [i for i in range(TRAIN_IMAGES) if any(torch.equal(train.images[i], x) for x in first.images)]
    assert len(index) == 10 and torch.equal(train.labels[index], first.labels)


def test_same_command_gives_the_same_csv(runs, capsys):
    """A 2-d landscape in this process and in a fresh `python landscape.py`: byte-identical CSVs."""
    argv = _flags(runs, runs / "ls-2d-a", "--images", 12, "--points", 3, "--dims", 2, "--seed", 3)
    result = _run(argv, capsys)
    assert result.returncode == 0, result
    argv[argv.index("--out") + 1] = str(runs / "ls-2d-b")
    result = run_script("landscape.py", argv, cwd=runs)
    assert result.returncode == 0 and result.stderr == "", result
    csv_a, csv_b = ((runs / name / "landscape.csv").read_bytes() for name in ("ls-2d-a", "ls-2d-b"))
    assert csv_a == csv_b
    rows = _rows(runs / "ls-2d-a" / "landscape.csv")
    assert list(rows[0]) == ["checkpoint", "alpha", "beta", "loss", "accuracy"] and len(rows) == 2 * 3 * 3
    with Image.open(runs / "ls-2d-b" / "landscape.png") as im:
        im.verify()


@pytest.mark.parametrize("case", ["wrong-head", "wrong-size", "two-points", "even-points", "zero-span", "nan-span",
                                  "too-many-images", "negative-workers", "tiny-images", "other-dataset",
                                  "missing-weights", "corrupt-weights"])
def test_bad_input_is_one_line(case, runs, capsys, tmp_path):
    weights = _weights(runs)
    extra, only = [], ("exc", "last")
    if case == "wrong-head":
        extra, only = ["--head", "exc"], ("last",)
        expected = (f"{weights['last']} holds UPANets(filters=4, num_classes=3, blocks=1, head='last') but this run "
                    "builds UPANets(filters=4, num_classes=3, blocks=1, head='exc'); pass --head last")
    elif case == "wrong-size":
        extra = ["--filters", "8"]
        expected = (f"{weights['exc']} holds UPANets(filters=4, num_classes=3, blocks=1, img=16) but this run builds "
                    "UPANets(filters=8, num_classes=3, blocks=1, img=16); match --filters/--blocks/--dataset")
    elif case in ("two-points", "even-points"):
        extra = ["--points", "2" if case == "two-points" else "6"]
        expected = "--points must be an odd number >= 3"
    elif case in ("zero-span", "nan-span"):
        extra = ["--span", "0" if case == "zero-span" else "nan"]
        expected = "--span must be a positive number"
    elif case == "too-many-images":
        extra = ["--images", "25"]
        expected = f"--images 25 is more than the {TRAIN_IMAGES} training images the set holds"
    elif case == "negative-workers":
        extra = ["--workers", "-1"]
        expected = "--workers must be >= 0, got -1"
    elif case == "tiny-images":  # refused before any image is decoded (or cached) at that size
        extra = ["--img-size", "4"]
        expected = "--img-size must be >= 8 (the last stage is img // 8 pixels wide), got 4"
    elif case == "other-dataset":
        extra = ["--dataset", "cifar10", "--no-download"]
        expected = f"{weights['exc']} was trained on folder, not cifar10; pass --dataset folder"
    else:
        bad = tmp_path / "bad.pth"
        if case == "corrupt-weights":
            bad.write_bytes(weights["exc"].read_bytes()[:1000])
        argv = _flags(runs, tmp_path / "out")
        argv[argv.index("--weights") + 1] = str(bad)
        result = _run(argv, capsys)
        expected = (f"cannot read checkpoint {bad}: the file is truncated" if case == "corrupt-weights"
                    else f"checkpoint not found: {bad}")
        assert one_line_error(result).startswith(f"error: {expected}")
        assert not (tmp_path / "out").exists()
        return
    result = _run(_flags(runs, tmp_path / "out", *extra, weights=only), capsys)
    assert one_line_error(result).startswith(f"error: {expected}")
    assert not (tmp_path / "out").exists()


def test_non_finite_loss_far_from_the_centre_is_plotted_without_it(runs, capsys):
    out = runs / "ls-far"
    result = _run(_flags(runs, out, "--images", 8, "--points", 3, "--span", 1e30, weights=("exc",)), capsys)
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr and "error" not in result.stderr
    notes = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(notes) == 1 and notes[0].startswith("note: the loss is not finite at 2 of 3 grid points"), notes
    losses = [float(row["loss"]) for row in _rows(out / "landscape.csv")]
    assert not math.isfinite(losses[0]) and math.isfinite(losses[1]) and not math.isfinite(losses[2])
    with Image.open(out / "landscape.png") as im:
        im.verify()


# ----------------------------------------------------------------------------------------- TensorBoard


def test_tensorboard_holds_the_metrics_of_every_epoch_once(runs):
    """Tags and values are metrics.jsonl's, at the step that ends each epoch; the resumed run replaced nothing
    twice; the training loss is logged at sync points; the flags of both processes are there."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = runs / "results" / "exc"
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [1, 2]
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    steps = [row["epoch"] * TRAIN_IMAGES // BATCH for row in rows]
    assert set(events.Tags()["scalars"]) == {*logs.TENSORBOARD_TAGS.values(), logs.TRAIN_STEPS_TAG}
    for field, tag in logs.TENSORBOARD_TAGS.items():
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == steps, tag
        assert [s.value for s in scalars] == pytest.approx([row[field] for row in rows], rel=1e-6), tag
    # Three steps an epoch, fewer than the 50 between sync points: one value an epoch, the epoch's mean.
    train_steps = events.Scalars(logs.TRAIN_STEPS_TAG)
    assert [s.step for s in train_steps] == steps
    assert [s.value for s in train_steps] == pytest.approx([row["train_loss"] for row in rows], rel=1e-6)
    flags = [event.tensor_proto.string_val[0].decode() for event in events.Tensors("flags/text_summary")]
    assert len(flags) == 2 and all('| head | `"exc"` |' in text for text in flags)
    assert '| resume | `"auto"` |' in flags[1]
    assert not list((runs / "results" / "folder-upanets4-last").glob("events.out.tfevents.*"))  # not asked for


def test_tensorboard_is_imported_only_when_asked_for():
    code = "import sys, main, landscape; print('torch.utils.tensorboard' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc


def test_landscape_direction_is_filter_normalised():
    """Every filter (output channel) of the direction has the norm of the same filter of the weight, whatever the
    weights' scale; a zero filter stays zero; the same seed gives the same direction."""
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(6, 4, 3, 3, generator=g) * 10, torch.randn(5, 7, generator=g) * 0.01,
               torch.randn(3, 16, generator=g)]
    weights[0][2] = 0
    direction = landscape.filter_normalized_direction(weights, torch.Generator().manual_seed(1))
    for weight, d in zip(weights, direction):
        assert d.shape == weight.shape and d.dtype == weight.dtype
        torch.testing.assert_close(d.flatten(1).norm(dim=1), weight.flatten(1).norm(dim=1), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(d, weight)  # a random direction, not the weights themselves
    assert torch.count_nonzero(direction[0][2]) == 0
    again = landscape.filter_normalized_direction(weights, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(direction, again))


def test_landscape_leaves_batchnorm_statistics_and_the_global_rngs_untouched(runs):
    """Moving the weights and evaluating at every grid point changes neither the model's BatchNorm running
    statistics (evaluation runs in eval mode) nor the global generators (the directions have their own)."""
    checkpoint = torch.load(_weights(runs)["exc"], weights_only=True)
    model = load_weights(UPANets(**checkpoint["model_config"]), checkpoint["model"])
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    bundle = sources.load_data("folder", runs / "data", img_size=16, workers=0)
    loader = loading.DeviceLoader(landscape.sample_images(bundle.train, 12, 0), 4, shuffle=False, device="cpu")
    transform = augment.DeviceTransform(bundle.mean, bundle.std, device="cpu")
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    rngs = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    with tqdm(disable=True) as bar:
        loss, _ = landscape.measure(model, landscape.grid(3, 0.5), 2, 0, loader, transform,
                                    Runtime(torch.device("cpu")), bar)
    assert loss.shape == (3, 3) and len({float(value) for value in loss.flat}) > 1  # the weights did move
    assert all(torch.equal(tensor, state[name]) for name, tensor in model.state_dict().items())
    assert random.getstate() == rngs[0] and (np.random.get_state()[1] == rngs[1]).all()
    assert torch.equal(torch.get_rng_state(), rngs[2])
