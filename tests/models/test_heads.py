"""The classifier heads (``UPANets(..., head=...)``, ``main.py --head``): the default is the original model, the
ablations differ only in their head, every head trains, round-trips through a checkpoint and traces with torch.fx,
and a checkpoint of another head is refused in one line that names the head it holds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torchvision.models.feature_extraction import create_feature_extractor

from models.upanets import HEADS, UPANets, describe_state_dict, load_weights
from upanets_lab.checkpoints import load_model_weights, read_checkpoint, save_checkpoint
from upanets_lab.data import augment
from upanets_lab.data.samples import make_cifar10
from upanets_lab.errors import UserError
from upanets_lab.training.engine import EpochState, Runtime, Trainer, train_step

from helpers import one_line_error, run_main, tiny_flags

CPU = torch.device("cpu")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _batch(seed: int = 0, n: int = 8, img: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, img, img), dtype=torch.uint8, generator=generator),
            torch.randint(0, 10, (n,), generator=generator))


def test_default_head_is_the_original_model():
    """head="exc" is the default, and its layout the original's (which test_model.py checks key by key)."""
    default, explicit = UPANets(8, 10, 1, 32), UPANets(8, 10, 1, 32, head="exc")
    layout = [(key, value.shape) for key, value in default.state_dict().items()]
    assert layout == [(key, value.shape) for key, value in explicit.state_dict().items()]
    assert len(default.spas) == 5 and default.linear.in_features == 31 * 8
    assert default.config == {"filters": 8, "num_classes": 10, "blocks": 1, "img": 32, "head": "exc"}


@pytest.mark.parametrize("head, features", [("exc-gap", 31 * 4), ("last", 16 * 4)])
def test_ablation_heads_differ_from_exc_only_in_the_head(head, features):
    exc, ablation = UPANets(4, 10, 1, 16).state_dict(), UPANets(4, 10, 1, 16, head=head).state_dict()
    assert list(ablation) == [key for key in exc if not key.startswith("spa")]  # no SPA parameters; order kept
    for key, value in ablation.items():
        if key == "linear.weight":
            assert value.shape == (10, features)
        elif key.startswith("bn.") and value.dim():
            assert value.shape == (features,)
        else:
            assert value.shape == exc[key].shape, key
    assert UPANets(4, 10, 1, 16, head=head).spas == ()


@pytest.mark.parametrize("head", HEADS)
def test_each_head_trains_a_step_and_round_trips_through_a_checkpoint(head, tmp_path):
    torch.manual_seed(0)
    model = UPANets(4, 10, 1, 16, head=head)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    trainer = Trainer(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
                      torch.amp.GradScaler("cpu", enabled=False),
                      augment.DeviceTransform(MEAN, STD, device=CPU, pad=2, flip=True))
    state = EpochState.zeros(CPU)
    train_step(trainer, *_batch(), state, Runtime(CPU))
    assert torch.isfinite(state.loss_sum) and state.step == 1
    # every parameter got a gradient, and the head's weights moved (biases followed by a norm get next to none)
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        if name.startswith(("spa", "bn.", "linear.")) and name.endswith("weight"):
            assert not torch.equal(param.detach(), before[name]), name

    save_checkpoint({"model": model.state_dict(), "model_config": model.config}, tmp_path / "head.pth")
    record = read_checkpoint(tmp_path / "head.pth")
    rebuilt = UPANets(**record.model_config)
    rebuilt.load_state_dict(record.weights)  # strict
    x = augment.normalize(_batch(1)[0], MEAN, STD)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x), rtol=0, atol=0)
    assert rebuilt.config == model.config


@pytest.mark.parametrize("head", HEADS)
def test_describe_state_dict_names_the_head(head):
    model = UPANets(8, 7, 2, 24, head=head)
    expected = {"filters": 8, "num_classes": 7, "blocks": 2, "img": 24, "head": head}
    if head != "exc":
        del expected["img"]  # nothing in these heads' weights depends on the image size
    assert describe_state_dict(model.state_dict()) == expected


@pytest.mark.parametrize("head", HEADS)
def test_each_head_traces_with_fx(head):
    model = UPANets(4, 10, 1, 16, head=head).eval()
    extractor = create_feature_extractor(model, return_nodes={"layer4": "c4", "linear": "logits"})
    x = augment.normalize(_batch(2)[0], MEAN, STD)
    with torch.no_grad():
        torch.testing.assert_close(extractor(x)["logits"], model(x), rtol=0, atol=0)


def test_unknown_head_is_a_value_error():
    with pytest.raises(ValueError, match="head must be one of exc, exc-gap, last, got 'gap'"):
        UPANets(4, 10, 1, 16, head="gap")


@pytest.mark.parametrize("saved, built, message", [
    (dict(head="last"), dict(),
     "x.pth holds UPANets(filters=4, num_classes=10, blocks=1, head='last') but this run builds "
     "UPANets(filters=4, num_classes=10, blocks=1, head='exc'); pass --head last"),
    (dict(), dict(head="exc-gap"),
     "x.pth holds UPANets(filters=4, num_classes=10, blocks=1, img=16, head='exc') but this run builds "
     "UPANets(filters=4, num_classes=10, blocks=1, img=16, head='exc-gap'); pass --head exc"),
    (dict(head="last"), dict(filters=8),
     "x.pth holds UPANets(filters=4, num_classes=10, blocks=1, head='last') but this run builds "
     "UPANets(filters=8, num_classes=10, blocks=1, head='exc'); match --filters/--blocks/--dataset to the "
     "checkpoint and pass --head last"),
    (dict(), dict(num_classes=100),
     "x.pth holds UPANets(filters=4, num_classes=10, blocks=1, img=16) but this run builds "
     "UPANets(filters=4, num_classes=100, blocks=1, img=16); match --filters/--blocks/--dataset to the checkpoint"),
])
def test_checkpoint_of_another_head_is_refused_in_one_line(saved, built, message):
    checkpoint = {"model": UPANets(**{"filters": 4, "num_classes": 10, "img": 16, **saved}).state_dict()}
    with pytest.raises(UserError) as error:
        load_model_weights(UPANets(**{"filters": 4, "num_classes": 10, "img": 16, **built}), checkpoint["model"],
                           Path("x.pth"))
    assert str(error.value) == message


def test_load_weights_names_the_head_the_weights_hold():
    weights = UPANets(4, 10, 1, 16, head="last").state_dict()
    with pytest.raises(RuntimeError) as error:
        load_weights(UPANets(4, 10, 1, 16), weights)
    assert str(error.value) == (
        "the weights are those of UPANets(filters=4, num_classes=10, blocks=1, head='last'), but the model is "
        "UPANets(filters=4, num_classes=10, blocks=1, head='exc'); build it with the weights' arguments")
    load_weights(UPANets(4, 10, 1, 16, head="last"), weights)


def test_cli_trains_a_head_records_it_and_refuses_it_for_another(tmp_path):
    make_cifar10(tmp_path / "data", n_train=16, n_test=4)
    # --no-channels-last and --amp off leave tuning.py nothing to measure: no speed cache that other tests'
    # runs of the same model would find
    data_flags = ["--dataset", "cifar10", "--data-dir", tmp_path / "data", "--no-download", "--no-channels-last"]
    result = run_main([*data_flags, *tiny_flags(tmp_path, head="last")], cwd=tmp_path)
    assert result.returncode == 0, result
    assert "model: UPANets4 (blocks=1, head=last), " in result.stdout
    run = "cifar10-upanets4-last"  # the head names the run, so ablations never collide with the default's folders
    config = {"filters": 4, "num_classes": 10, "blocks": 1, "img": 32, "head": "last"}
    checkpoint = torch.load(tmp_path / "checkpoint" / run / "last.pth", weights_only=True)
    assert checkpoint["model_config"] == config
    assert json.loads((tmp_path / "results" / run / "args.json").read_text())["model_config"] == config
    UPANets(**checkpoint["model_config"]).load_state_dict(checkpoint["model"])

    weights = tmp_path / "checkpoint" / run / "last.pth"
    evaluate = ["--evaluate", "--weights", weights, *data_flags, "--workers", "0", "--amp", "off", "--no-progress"]
    result = run_main(evaluate, cwd=tmp_path)  # the model is rebuilt from the checkpoint
    assert result.returncode == 0, result
    assert f"from {weights}: --model upanets --filters 4 --blocks 1 --head last\n" in result.stdout
    assert "model: UPANets4 (blocks=1, head=last), " in result.stdout
    assert f"evaluate {weights}: test loss " in result.stdout
    result = run_main([*evaluate, "--head", "exc"], cwd=tmp_path)  # flags given are kept, and must match
    assert one_line_error(result) == (
        f"error: {weights} holds UPANets(filters=4, num_classes=10, blocks=1, head='last') but this run builds "
        "UPANets(filters=4, num_classes=10, blocks=1, head='exc'); pass --head last")
