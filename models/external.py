"""Other libraries' classifiers as ``torchvision:NAME`` and ``timm:NAME``, built with our class count and, unless
``pretrained``, no pretrained weights. Pretrained weights are read from the local caches only (torch hub's for
torchvision, Hugging Face's for timm); a missing file is a FileNotFoundError that says where to put it.

    create_model("torchvision:resnet50", num_classes=10, img_size=32)
    create_model("timm:convnext_atto", num_classes=100, img_size=64, pretrained=True)
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ._registry import register_source


def torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)  # the classifiers alone


def build_torchvision(name: str, num_classes: int, img: int, pretrained: bool = False) -> nn.Module:
    import torchvision

    # GoogLeNet and Inception v3 return auxiliary logits in train mode unless told not to: a classifier's step
    # takes one tensor of logits.
    auxiliary = {"aux_logits": False} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **auxiliary)
    if not pretrained:
        return model
    weights = torchvision.models.get_model_weights(name).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise FileNotFoundError(f"the pretrained weights of torchvision:{name} are not in the local cache: put "
                                f"{cached.name} (torchvision's {weights}) in {cached.parent}")
    trained = torchvision.models.get_model(name, weights=weights)  # found in the cache: nothing is downloaded
    return with_weights_that_fit(model, trained)


def timm_names() -> list[str]:
    return _timm().list_models()


def build_timm(name: str, num_classes: int, img: int, pretrained: bool = False) -> nn.Module:
    timm = _timm()
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    repo = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(repo, filename) if repo else None
        if isinstance(cached, str):  # read from the file itself: no request to the hub
            return timm.create_model(name, pretrained=True, num_classes=num_classes,
                                     pretrained_cfg_overlay={"file": cached})
    raise FileNotFoundError(f"the pretrained weights of timm:{name} ({repo or 'no Hugging Face repo'}) are not in "
                            f"the local Hugging Face cache {HF_HUB_CACHE}; put them there first (e.g. "
                            f"timm.create_model({name!r}, pretrained=True) on a machine online)")


def _timm():
    try:
        import timm
    except ImportError:
        raise ImportError("timm:NAME models need timm, which the Pipfile installs (make setup; or pip install "
                          "timm)") from None
    return timm


def with_weights_that_fit(model: nn.Module, trained: nn.Module) -> nn.Module:
    """``model`` with every tensor of ``trained`` whose name and shape it shares (all but a classifier of
    another class count, which keeps its fresh initialisation)."""
    own = model.state_dict()
    fitting = {key: value for key, value in trained.state_dict().items()
               if key in own and own[key].shape == value.shape}
    model.load_state_dict(fitting, strict=False)
    return model


register_source("torchvision", torchvision_names, build_torchvision)
register_source("timm", timm_names, build_timm)
