"""upanets_lab.checkpoints: the one reader of every checkpoint format, and the one builder of a model from it."""
from __future__ import annotations

import pytest
import torch

from models.upanets import UPANets
from upanets_lab.checkpoints import build_model, read_checkpoint, save_checkpoint
from upanets_lab.data import catalog
from upanets_lab.errors import UserError

from helpers import FIXTURES, ORIGINAL_CKPT


def _weights(model: UPANets, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in model.state_dict().items()}


@pytest.mark.parametrize("layout, fmt", [
    (lambda sd: {"model": sd, "optimizer": {"state": {}}, "epoch": 3}, "upanets-lab"),
    (lambda sd: {"net": {f"module.{k}": v for k, v in sd.items()}, "acc": 71.25, "epoch": 3}, "original"),
    (lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()}, "state-dict"),
], ids=["ours", "original", "compiled-state-dict"])
def test_every_format_gives_its_weights_with_plain_keys(layout, fmt, tmp_path):
    model = UPANets(4, 10, 1, 16)
    save_checkpoint(layout(model.state_dict()), tmp_path / "file.pth")
    record = read_checkpoint(tmp_path / "file.pth")
    assert record.format == fmt and record.model == "upanets"
    assert record.model_config == {"filters": 4, "num_classes": 10, "blocks": 1, "img": 16, "head": "exc"}
    assert list(record.weights) == list(model.state_dict())
    assert all(torch.equal(record.weights[key], value) for key, value in model.state_dict().items())
    assert record.resumable == (fmt == "upanets-lab")


def test_the_original_codes_checkpoint_is_cifar10_with_its_normalisation_and_its_logits():
    record = read_checkpoint(ORIGINAL_CKPT)
    assert (record.format, record.dataset, record.classes) == ("original", "cifar10", None)
    assert record.normalization() == catalog.ORIGINAL_CIFAR_NORMALIZATION
    assert record.settings() == {"model": "upanets", "dataset": "cifar10", "filters": 8, "blocks": 1, "head": "exc"}
    model, which = build_model(record)
    reference = torch.load(FIXTURES / "forward_filters8_classes10_img32.pt", weights_only=True)
    with torch.no_grad():
        logits = model(reference["input"])
    assert which == "raw" and not model.training
    torch.testing.assert_close(logits, reference["logits_eval"], rtol=0, atol=1e-5)


def test_our_records_carry_the_run_and_build_the_ema_model_unless_raw(tmp_path):
    model, average = UPANets(4, 3, 1, 16, head="last"), UPANets(4, 3, 1, 16, head="last")
    save_checkpoint({"model": model.state_dict(), "model_ema": average.state_dict(), "model_name": "upanets",
                     "model_config": model.config, "args": {"seed": 7, "run_name": "run"},
                     "data": {"dataset": "folder", "dir": "/data/bugs", "classes": ["a", "b", "c"],
                              "mean": [0.5] * 3, "std": [0.2] * 3}}, tmp_path / "best.pth")
    record = read_checkpoint(tmp_path / "best.pth")
    assert (record.dataset, record.data_dir, record.classes, record.seed, record.run_name) == (
        "folder", "/data/bugs", ["a", "b", "c"], 7, "run")
    assert record.normalization() == ((0.5,) * 3, (0.2,) * 3)
    assert record.settings()["img_size"] == 16 and record.settings()["head"] == "last"
    built, which = build_model(record)
    assert which == "ema" and all(torch.equal(built.state_dict()[k], v) for k, v in average.state_dict().items())
    assert build_model(record, raw_weights=True)[1] == "raw"
    with pytest.raises(UserError, match="holds a model for 16x16 images, not --img-size 32"):
        build_model(record, img=32)


@pytest.mark.parametrize("contents, message", [
    ({"acc": 71.25, "epoch": 3}, "is not a model checkpoint"),
    ({"net": "not a state dict", "acc": 1.0}, "is not a model checkpoint"),
    ({"model": {"x": 1}}, "is not a model checkpoint"),
    ({"model": {"x.weight": torch.ones(2)}}, "holds the weights of no registered model"),
    ([1, 2], "is not a checkpoint: expected a dict, got list"),
], ids=["metadata-only", "net-not-mapping", "model-non-tensor", "foreign-weights", "a-list"])
def test_what_is_not_a_checkpoint_is_one_line(contents, message, tmp_path):
    torch.save(contents, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=message):
        read_checkpoint(tmp_path / "bad.pth")


def test_a_folder_and_a_missing_file_say_so(tmp_path):
    with pytest.raises(UserError, match="is a folder; give a checkpoint file in it"):
        read_checkpoint(tmp_path)
    with pytest.raises(UserError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nothing.pth")


def test_a_checkpoint_naming_an_unbuildable_model_is_one_line(tmp_path):
    save_checkpoint({"model": UPANets(4, 10, 1, 16).state_dict(), "model_name": "resnet_18",
                     "model_config": {"num_classes": 10, "img": 16}}, tmp_path / "renamed.pth")
    with pytest.raises(UserError, match=r"renamed.pth holds a model this repo cannot build: unknown model "
                                        r"'resnet_18'; did you mean resnet18"):
        read_checkpoint(tmp_path / "renamed.pth")


def test_an_option_the_model_does_not_take_is_refused_not_dropped(tmp_path):
    import models

    model = models.create_model("resnet18", num_classes=10, img_size=32)
    save_checkpoint({"model": model.state_dict(), "model_name": "resnet18",
                     "model_config": {"num_classes": 10, "img": 32}}, tmp_path / "r18.pth")
    record = read_checkpoint(tmp_path / "r18.pth")
    with pytest.raises(UserError, match="model resnet18 has no option filters"):
        build_model(record, filters=64)
    assert build_model(record, num_classes=10)[0].linear.out_features == 10
