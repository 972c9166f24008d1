"""The paper's baselines and the rest of pytorch-cifar's CIFAR networks as registered models: their layouts equal
pytorch-cifar's (tests/fixtures/pytorch_cifar_layouts.json: keys in order, shapes, dtypes, parameter counts at 10
and 100 classes), every registered model trains a step and survives a checkpoint round trip, at 32x32 and at
Tiny ImageNet's 64x64, and pytorch-cifar's own checkpoint files are recognised."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import models
from upanets_lab.checkpoints import build_model, read_checkpoint, save_checkpoint
from upanets_lab.data import catalog

from helpers import FIXTURES

LAYOUTS = json.loads((FIXTURES / "pytorch_cifar_layouts.json").read_text())
BASELINES = sorted(LAYOUTS["models"])


def test_every_baseline_of_the_paper_is_registered():
    assert set(BASELINES) <= set(models.list_models())
    assert len(BASELINES) == 17 and "densenet121_gr16" in BASELINES


@pytest.mark.parametrize("name", BASELINES)
def test_layout_equals_pytorch_cifars(name):
    """Keys in order, shapes and dtypes at 10 classes; the parameter count at 10 and at 100 classes."""
    reference = LAYOUTS["models"][name]
    with torch.device("meta"):
        model = models.create_model(name, num_classes=10, img_size=32)
        wide = models.create_model(name, num_classes=100, img_size=32)
    got = [[key, list(tensor.shape), str(tensor.dtype).removeprefix("torch.")]
           for key, tensor in model.state_dict().items()]
    assert got == reference["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == reference["params"]
    assert sum(p.numel() for p in wide.parameters()) == (
        reference["params"] + 90 * (reference["classifier_in_features"] + 1))


@pytest.mark.parametrize("name", [name for name in models.list_models() if not name.startswith("upanets")])
def test_every_model_trains_a_step_and_round_trips_through_a_checkpoint(name, tmp_path):
    """100 classes: a train step at 64x64 changes the weights; saved and read back, the rebuilt model gives the
    same eval logits at 32x32 (global pooling: no size is built in)."""
    torch.manual_seed(0)
    model = models.create_model(name, num_classes=100, img_size=32)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([3, 99]))
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(before[key], value) for key, value in model.state_dict().items())
    save_checkpoint({"model": model.state_dict(), "model_name": name,
                     "model_config": models.config_of(model, 100, 32)}, tmp_path / "last.pth")
    rebuilt, which = build_model(read_checkpoint(tmp_path / "last.pth"))
    inputs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(inputs)
        assert rebuilt(inputs).shape == (2, 100) and which == "raw"
        torch.testing.assert_close(rebuilt(inputs), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name, classes", [("resnet18", 10), ("mobilenetv2", 100)])
def test_pytorch_cifar_checkpoints_are_read_as_theirs(name, classes, tmp_path):
    """{'net': DataParallel state dict, 'acc', 'epoch'}: the model it matches, CIFAR-10 or -100 by its classes,
    32x32, pytorch-cifar's normalisation, the accuracy it recorded."""
    model = models.create_model(name, num_classes=classes, img_size=32).eval()
    torch.save({"net": {f"module.{k}": v for k, v in model.state_dict().items()}, "acc": 93.1, "epoch": 7},
               tmp_path / "ckpt.pth")
    record = read_checkpoint(tmp_path / "ckpt.pth")
    assert (record.format, record.model, record.dataset) == ("pytorch-cifar", name, f"cifar{classes}")
    assert record.model_config == {"num_classes": classes, "img": 32}
    mean, std = LAYOUTS["normalisation"]["mean"], LAYOUTS["normalisation"]["std"]
    assert record.normalization() == catalog.ORIGINAL_CIFAR_NORMALIZATION == (tuple(mean), tuple(std))
    rebuilt, _ = build_model(record)
    inputs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(inputs), model(inputs), rtol=0, atol=0)
