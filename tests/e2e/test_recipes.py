"""The training recipes end to end: every option of the reference trainers reaches the step, the EMA weights are
what the other scripts use, and bad values stop a run before any work (test_resume_exact resumes them)."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from models.upanets import UPANets
from upanets_lab.checkpoints import read_checkpoint
from upanets_lab.data.augment import DeviceTransform
from upanets_lab.data.samples import make_cifar10
from upanets_lab.inference import trained
from upanets_lab.training import engine, loop, recipes
from upanets_lab.training.optimization import build_optimizer

import main
from helpers import one_line_error, read_metrics, run_main, tiny_flags

TIMING_FIELDS = ("epoch_seconds", "train_images_per_second")
# Every option on, on 160 CIFAR-format images in batches of 8 (18 steps an epoch once 16 are held out).
ALL_OPTIONS = ["--recipe", "modern", "--lr-warmup-epochs", "1", "--model-ema-steps", "3", "--alternating-flip",
               "--tta", "flip-translate", "--clip-grad-norm", "5", "--opt", "sgd_nesterov", "--val-split", "16",
               "--lr-min", "0.001", "--auto-augment", "ra", "--ra-magnitude", "12", "--random-erase", "0.25"]


def all_options_flags(data_dir: Path, root: Path) -> list[str]:
    # --no-channels-last: nothing for the speed probe to measure, so no entry of the session's speed cache that
    # test_cli's runs of the same model and batch size expect to measure themselves.
    return ["--dataset", "cifar10", "--data-dir", data_dir, "--no-download", "--seed", "1", "--no-channels-last",
            *tiny_flags(root, epochs=2, run_name="all"), *ALL_OPTIONS]


@pytest.fixture(scope="module")
def recipe_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("recipe_data")
    make_cifar10(root, n_train=160, n_test=20, seed=5)
    return root


@pytest.fixture(scope="module")
def all_options_run(recipe_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("all_options")
    result = run_main(all_options_flags(recipe_data, root), cwd=root)
    assert result.returncode == 0, result
    return root, result


def test_the_resolved_recipe_is_printed_and_recorded(all_options_run):
    root, result = all_options_run
    line = next(line for line in result.stdout.splitlines() if line.startswith("recipe: "))
    assert line.startswith("recipe: modern (") and "label_smoothing=0.1," in line and "opt=sgd_nesterov*" in line
    assert "tta=flip-translate*" in line and "mixup_alpha=0.2," in line
    args = json.loads((root / "results" / "all" / "args.json").read_text())
    expected = {**recipes.RECIPES["modern"], "lr_warmup_epochs": 1, "model_ema_steps": 3, "alternating_flip": True,
                "tta": "flip-translate", "clip_grad_norm": 5.0, "opt": "sgd_nesterov", "lr_min": 0.001,
                "auto_augment": "ra", "ra_magnitude": 12, "random_erase": 0.25}
    assert {key: args[key] for key in recipes.PAPER} == expected
    checkpoint = torch.load(root / "checkpoint" / "all" / "last.pth", weights_only=True)
    assert {key: checkpoint["args"][key] for key in recipes.PAPER} == expected
    groups = checkpoint["optimizer"]["param_groups"]
    assert [(group["weight_decay"], group["nesterov"]) for group in groups] == [(5e-4, True), (0.0, True)]


def test_ema_is_evaluated_and_selects_best_pth(all_options_run):
    root, _ = all_options_run
    rows = read_metrics(root / "results" / "all" / "metrics.jsonl")
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                             "ema_val_loss", "ema_val_acc", "ema_test_loss", "ema_test_acc", "best_acc", "lr",
                             "epoch_seconds", "train_images_per_second"]
    best_so_far = -1.0
    for row in rows:
        new_best = row["ema_val_acc"] > best_so_far
        best_so_far = max(best_so_far, row["ema_val_acc"])
        assert row["best_acc"] == best_so_far
        assert (row["test_acc"] is not None) == (row["ema_test_acc"] is not None) == new_best
    best = torch.load(root / "checkpoint" / "all" / "best.pth", weights_only=True)
    chosen = max(rows, key=lambda row: (row["ema_val_acc"], -row["epoch"]))
    assert best["epoch"] == chosen["epoch"] == best["best"]["epoch"]
    assert best["best"]["test"]["acc1"] == chosen["ema_test_acc"]


def test_evaluate_predict_spec_and_landscape_take_the_ema_weights(all_options_run, recipe_data, tmp_path):
    """--evaluate of best.pth gives the EMA model's test accuracy of its epoch (--raw-weights the trained one's);
    predict.py's and export.py's model (inference_spec) and landscape.py's hold the EMA weights."""
    root, _ = all_options_run
    best_path = root / "checkpoint" / "all" / "best.pth"
    best = torch.load(best_path, weights_only=True)
    row = read_metrics(root / "results" / "all" / "metrics.jsonl")[best["epoch"] - 1]
    for flags, field in (([], "ema_test_acc"), (["--raw-weights"], "test_acc")):
        result = run_main(["--evaluate", "--weights", best_path, "--data-dir", recipe_data, "--no-download",
                           "--tta", "flip-translate", "--device", "cpu", "--batch-size", "8", "--no-progress",
                           *flags], cwd=tmp_path)
        assert result.returncode == 0, result
        accuracy = float(re.search(r"top-1 ([0-9.]+)%", result.stdout).group(1))
        assert accuracy == pytest.approx(row[field], abs=0.005), (flags, result.stdout)
    assert "evaluating its EMA weights" in run_main(["--evaluate", "--weights", best_path, "--data-dir", recipe_data,
                                                     "--no-download", "--no-progress"], cwd=tmp_path).stdout

    spec = trained.inference_spec(best_path)
    assert all(torch.equal(tensor, best["model_ema"][name]) for name, tensor in spec.model.state_dict().items())
    assert any("EMA" in warning for warning in spec.warnings)
    raw = trained.inference_spec(best_path, raw_weights=True)
    assert all(torch.equal(tensor, best["model"][name]) for name, tensor in raw.model.state_dict().items())

    import landscape

    args = landscape.get_args_parser().parse_args(["--weights", str(best_path)])
    bundle = argparse.Namespace(num_classes=10, img_size=32)
    model = landscape.landscape_model(read_checkpoint(best_path), args, bundle)
    assert all(torch.equal(tensor, best["model_ema"][name]) for name, tensor in model.state_dict().items())


def test_flags_reach_the_trainer():
    """What each recipe flag sets in the trainer build_trainer makes (label smoothing, optimizer and groups,
    auto-augmentation, erasing, MixUp/CutMix, alternating flips, EMA, clipping)."""
    args = main.get_args_parser().parse_args(["--recipe", "modern", "--epochs", "10", "--auto-augment", "cifar10",
                                              "--clip-grad-norm", "2", "--alternating-flip", "--opt", "adamw"])
    recipes.resolve_recipe(args)
    model = UPANets(4, 10, 1, 8)
    bundle = argparse.Namespace(mean=(0.5,) * 3, std=(0.2,) * 3, pad=1, num_classes=10,
                                train=torch.zeros(37))  # only the training set's length is read
    run = argparse.Namespace(runtime=engine.Runtime(torch.device("cpu")), bundle=bundle, model=model)
    trainer = loop.build_trainer(args, run)
    assert trainer.criterion.label_smoothing == 0.1
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert [group["weight_decay"] for group in trainer.optimizer.param_groups] == [5e-4, 0.0]
    assert trainer.augment.auto_augment.policy == "cifar10" and trainer.augment.random_erase == 0.1
    assert (trainer.augment.mixing.mixup_alpha, trainer.augment.mixing.cutmix_alpha) == (0.2, 1.0)
    assert len(trainer.augment.first_flips) == 37
    assert trainer.ema is not None and trainer.ema_steps == 32 and trainer.clip_grad_norm == 2.0
    assert args.lr_warmup_epochs == 0  # 5% of 10 epochs, rounded

    paper = main.get_args_parser().parse_args([])
    recipes.resolve_recipe(paper)
    plain = loop.build_trainer(paper, run)
    assert plain.criterion.label_smoothing == 0.0 and plain.ema is None and plain.clip_grad_norm is None
    assert len(plain.optimizer.param_groups) == 1 and isinstance(plain.optimizer, torch.optim.SGD)
    assert plain.augment.auto_augment is None and plain.augment.mixing is None and plain.augment.first_flips is None


def test_gradient_clipping_bounds_the_update():
    """--clip-grad-norm: with plain SGD at lr 1, the step moves the weights by the clipped gradient."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    optimizer = build_optimizer(model, "sgd", lr=1.0, momentum=0.0, weight_decay=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = engine.Trainer(model, nn.CrossEntropyLoss(), optimizer, torch.amp.GradScaler("cpu", enabled=False),
                             DeviceTransform((0.5,) * 3, (0.1,) * 3, device="cpu"), clip_grad_norm=1e-3)
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    engine.train_step(trainer, images, torch.arange(4), engine.EpochState.zeros(torch.device("cpu")),
                      engine.Runtime(torch.device("cpu")))
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm()
    assert moved == pytest.approx(1e-3, rel=1e-3)


@pytest.mark.parametrize("flags, message", [
    (["--mixup-alpha", "-0.2"], "--mixup-alpha must be >= 0, got -0.2"),
    (["--cutmix-alpha", "nan"], "--cutmix-alpha must be >= 0, got nan"),
    (["--random-erase", "1.5"], "--random-erase must be a probability in [0, 1], got 1.5"),
    (["--epochs", "3", "--lr-warmup-epochs", "3"], "--lr-warmup-epochs 3 must be fewer than --epochs 3"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1), got 1.0"),
    (["--model-ema-decay", "1.5"], "--model-ema-decay must be between 0 and 1, got 1.5"),
    (["--model-ema-steps", "0"], "--model-ema-steps must be a positive integer, got 0"),
    (["--ra-magnitude", "31"], "--ra-magnitude must be a bin in [0, 31), got 31"),
    (["--lr-min", "0.5"], "--lr-min 0.5 must be below --lr 0.1"),
    (["--val-split", "-1"], "--val-split must be >= 0, got -1.0"),
], ids=["mixup", "cutmix", "erase", "warmup", "smoothing", "ema-decay", "ema-steps", "magnitude", "lr-min", "split"])
def test_bad_recipe_values_stop_before_any_work(flags, message, tmp_path):
    result = run_main(["--dataset", "synthetic", *flags], cwd=tmp_path)
    assert one_line_error(result).startswith(f"error: {message}")
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_unknown_policy_is_a_usage_error(tmp_path):
    result = run_main(["--auto-augment", "imagenet"], cwd=tmp_path)
    assert result.returncode == 2 and "argument --auto-augment: invalid choice: 'imagenet'" in result.stderr
    assert list(tmp_path.iterdir()) == []
