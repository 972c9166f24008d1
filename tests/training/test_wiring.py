"""Training is wired to what it claims: the batches the model is fed, the optimizer's settings and the RNG state a
resumed run continues from.

The runs here are in-process (`main.main(args)`) on a tiny fake CIFAR-10, with `UPANets.forward` wrapped to record
what the model receives, or CLI runs (see helpers.py) whose checkpoints are read back.
"""
from __future__ import annotations

import argparse
import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from models.upanets import UPANets
from upanets_lab import utils
from upanets_lab.data import augment, decoding, loading
from upanets_lab.data.samples import make_cifar10

import main
from helpers import tiny_flags

SEED = 3
# CIFAR-10's own statistics, written out here so that a mix-up in the code cannot hide.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def cifar10_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    """Flags of a seeded one-epoch fp32 CPU run on the fake CIFAR-10 in tmp_path/data (see tiny_flags)."""
    flags = ["--dataset", "cifar10", "--data-dir", tmp_path / "data", "--no-download", "--device", "cpu",
             "--seed", SEED, *tiny_flags(tmp_path), *extra]
    return main.get_args_parser().parse_args([str(flag) for flag in flags])


def global_rng_states() -> dict:
    """Python's, NumPy's and torch's global RNG states, in comparable form."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy_key": np_state["state"]["key"].astype(np.int64).tolist(),
        "numpy_pos": int(np_state["state"]["pos"]),
        "numpy_gauss": (int(np_state["has_gauss"]), float(np_state["gauss"])),
        "torch": torch.get_rng_state(),
    }


class ForwardRecorder:
    """Wraps UPANets.forward to record, at each model's first forward call in training mode, its input and the
    global RNG states. `first(model)` is the run's first training step when given the model main.main returns:
    the start-up FLOP count runs in eval mode, and any probe steps run on copies of the model."""

    def __init__(self) -> None:
        self.calls: list[tuple[UPANets, dict]] = []

    def wrap(self, forward):
        def recording_forward(model, x, *args, **kwargs):
            if model.training and not any(seen is model for seen, _ in self.calls):
                self.calls.append((model, {"input": x.detach().clone(), "rng": global_rng_states()}))
            return forward(model, x, *args, **kwargs)

        return recording_forward

    def first(self, model: UPANets) -> dict:
        found = [call for seen, call in self.calls if seen is model]
        assert found, "the returned model never ran a training step"
        return found[0]


@pytest.fixture
def forward_recorder(monkeypatch) -> ForwardRecorder:
    recorder = ForwardRecorder()
    monkeypatch.setattr(UPANets, "forward", recorder.wrap(UPANets.forward))
    return recorder


# ------------------------------------------------------------------------------------ training batches


def test_first_training_batch_is_the_seeded_crop_flip_normalised_with_cifar10_stats(tmp_path, forward_recorder):
    """The model's first training input is the loader's first batch for (seed, epoch 0), randomly cropped from
    4 px of padding and flipped by the augmentation generator of (seed, epoch 0, rank 0), then normalised with
    CIFAR-10's mean and std: no flip, crop, seed or statistic is lost or mixed up on the way."""
    fake = make_cifar10(tmp_path / "data", n_train=20, n_test=5)
    fed = forward_recorder.first(main.main(cifar10_args(tmp_path)))["input"]

    # The same batch built here from the written images: the loader's first batch for (seed, epoch 0) ...
    train_set = decoding.ImageDataset(torch.from_numpy(fake.train_images), torch.from_numpy(fake.train_labels))
    loader = loading.DeviceLoader(train_set, 8, shuffle=True, device="cpu", seed=SEED)
    loader.set_epoch(0)
    images, _ = next(iter(loader))
    # ... cropped from 4 px of zero padding and flipped with the generator seeded for (seed, epoch 0, rank 0) ...
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([SEED, 0, 0]).generate_state(1, np.uint64)[0]))
    augmented = augment.random_crop_flip(images, pad=4, generator=generator, flip=True)
    # ... and normalised with CIFAR-10's mean and std.
    expected = augment.normalize(augmented, CIFAR10_MEAN, CIFAR10_STD)

    assert fed.shape == (8, 3, 32, 32) and fed.dtype == torch.float32
    torch.testing.assert_close(fed, expected, rtol=0, atol=1e-6)
    # the comparison can tell: this batch is augmented (flipped and shifted), not the plain images
    assert not torch.allclose(fed, augment.normalize(images, CIFAR10_MEAN, CIFAR10_STD), rtol=0, atol=1e-3)
    unflipped = augment.random_crop_flip(images, 4, torch.Generator().manual_seed(generator.initial_seed()), flip=False)
    assert not torch.equal(augmented, unflipped)


# ---------------------------------------------------------------------------------------- optimizer


def test_lr_momentum_and_weight_decay_reach_the_optimizer(tmp_path, run_cli):
    """Non-default --lr, --momentum and --weight-decay are what the saved optimizer ran with."""
    make_cifar10(tmp_path / "data", n_train=16, n_test=5)
    result = run_cli(["--dataset", "cifar10", "--data-dir", tmp_path / "data", "--no-download",
                      "--lr", "0.03", "--momentum", "0.8", "--weight-decay", "0.001",
                      *tiny_flags(tmp_path, run_name="opt")], cwd=tmp_path)
    assert result.returncode == 0, result
    last = torch.load(tmp_path / "checkpoint" / "opt" / "last.pth", map_location="cpu", weights_only=True)
    groups = last["optimizer"]["param_groups"]
    assert groups and sum(len(group["params"]) for group in groups) == len(last["optimizer"]["state"]) > 0
    for group in groups:
        assert (group["initial_lr"], group["momentum"], group["weight_decay"]) == (0.03, 0.8, 0.001), group
    assert all("momentum_buffer" in state for state in last["optimizer"]["state"].values())


# ---------------------------------------------------------------------------------------- RNG state


def _draws() -> list:
    return [random.random(), random.gauss(0, 1), *np.random.random(3).tolist(), float(np.random.standard_normal()),
            *torch.rand(3).tolist(), *torch.randn(2).tolist()]


def test_rng_state_round_trips_through_a_checkpoint():
    """utils.rng_state, saved and loaded as checkpoints are (weights_only), makes Python, NumPy and torch repeat
    their draws, cached second normals included."""
    random.gauss(0, 1), np.random.standard_normal()  # leave a cached second normal in both states
    buffer = io.BytesIO()
    torch.save(utils.rng_state(), buffer)
    expected = _draws()
    assert _draws() != expected  # the draws move the states on
    buffer.seek(0)
    utils.set_rng_state(torch.load(buffer, weights_only=True))
    assert _draws() == expected


def test_resume_restores_the_global_rng_state(tmp_path, forward_recorder, monkeypatch):
    """The resumed run's first training step sees the global RNG states its checkpoint saved.

    Training itself draws nothing from the global RNGs on the CPU (shuffling and augmentation have their own
    generators), so a resumed run's states would match the saved ones even without a restore. The resumed run
    here therefore draws from all three while building the model, before the checkpoint is read, as other
    start-up work could; only a restore between that and the first step undoes it.
    """
    make_cifar10(tmp_path / "data", n_train=16, n_test=5)
    main.main(cifar10_args(tmp_path))
    saved = torch.load(tmp_path / "checkpoint" / "cifar10-upanets4" / "last.pth", map_location="cpu",
                       weights_only=True)["rng"]

    init, perturbed = UPANets.__init__, []

    def drawing_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        _draws()
        perturbed.append(global_rng_states())

    monkeypatch.setattr(UPANets, "__init__", drawing_init)
    model = main.main(cifar10_args(tmp_path, "--resume", "auto", "--epochs", "2"))
    assert perturbed and not torch.equal(perturbed[0]["torch"], saved["torch"])  # a restore has work to do
    found = forward_recorder.first(model)["rng"]
    assert torch.equal(found["torch"], saved["torch"])
    version, internal, gauss = saved["python"]
    assert found["python"] == (version, tuple(internal), gauss)
    assert found["numpy_key"] == saved["numpy"]["key"].tolist() and found["numpy_pos"] == saved["numpy"]["pos"]
    assert found["numpy_gauss"] == (saved["numpy"]["has_gauss"], saved["numpy"]["gauss"])
