"""torchvision:NAME and timm:NAME: every classifier of both libraries by name, built with our class count and no
pretrained weights unless asked; pretrained weights come from the local caches only, and a missing file says
where to put it."""
from __future__ import annotations

import pytest
import torch

import models


def test_both_libraries_are_listed_by_their_prefix_and_kept_out_of_the_plain_list():
    import timm
    import torchvision

    assert models.list_models("torchvision:*") == sorted(
        f"torchvision:{name}" for name in torchvision.models.list_models(module=torchvision.models))
    assert len(models.list_models("timm:*")) == len(timm.list_models()) > 1000
    assert models.list_models("timm:resnet1?") == [f"timm:{name}" for name in timm.list_models("resnet1?")]
    assert not any(":" in name for name in models.list_models())


@pytest.mark.parametrize("name", ["torchvision:resnet18", "torchvision:mobilenet_v3_small", "torchvision:googlenet",
                                  "timm:resnet18", "timm:convnext_atto"])
def test_a_library_model_is_built_with_our_classes(name):
    """In train mode too, the logits alone (GoogLeNet's auxiliary heads are left out), as a train step takes."""
    model = models.create_model(name, num_classes=7, img_size=32).train()
    logits = model(torch.randn(2, 3, 32, 32))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 7)
    assert models.model_entry(name).options == {"pretrained": False}
    assert models.config_of(model, 7, 32, pretrained=True) == {"num_classes": 7, "img": 32}


def test_unknown_names_name_the_nearest():
    with pytest.raises(ValueError, match=r"unknown model 'torchvision:resnet19'; did you mean torchvision:resnet18"):
        models.create_model("torchvision:resnet19", num_classes=10)
    with pytest.raises(ValueError, match=r"unknown model source 'keras'"):
        models.create_model("keras:resnet18", num_classes=10)


def test_torchvision_pretrained_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch):
    """From the cache file, every tensor but the 1000-class classifier, which is built for our 10 classes."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"not in the local cache: put resnet18-\w+\.pth "
                                                 rf"\(torchvision's ResNet18_Weights.IMAGENET1K_V1\) in {tmp_path}"):
        models.create_model("torchvision:resnet18", num_classes=10, pretrained=True)
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    trained = torchvision.models.resnet18(num_classes=1000)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(trained.state_dict(), tmp_path / "hub" / "checkpoints" / weights.url.rpartition("/")[2])
    model = models.create_model("torchvision:resnet18", num_classes=10, pretrained=True)
    assert torch.equal(model.conv1.weight, trained.conv1.weight) and model.fc.out_features == 10


def test_timm_pretrained_weights_come_from_the_hugging_face_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants
    import timm
    from safetensors.torch import save_file

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=rf"timm:resnet18 \(timm/resnet18.a1_in1k\) are not in the local "
                                                 rf"Hugging Face cache {tmp_path}"):
        models.create_model("timm:resnet18", num_classes=10, pretrained=True)
    trained = timm.create_model("resnet18", num_classes=1000)
    snapshot = tmp_path / "models--timm--resnet18.a1_in1k" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    save_file(trained.state_dict(), snapshot / "model.safetensors")
    (tmp_path / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (tmp_path / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text("0123abc")
    model = models.create_model("timm:resnet18", num_classes=10, pretrained=True)
    assert torch.equal(model.conv1.weight, trained.conv1.weight) and model.fc.out_features == 10
