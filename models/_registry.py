"""The model registry: every architecture of this repo by name, as timm's ``create_model`` / ``register_model`` /
``list_models`` (smaller).

    model = create_model("upanets16", num_classes=100, img_size=32)
    list_models("upanets*")          # ['upanets', 'upanets16', 'upanets32', 'upanets64']
    create_model("torchvision:resnet50", num_classes=10, img_size=32)   # another library's models, by a prefix

A builder is a function ``builder(num_classes, img, **options) -> nn.Module`` decorated with
:func:`register_model` in the file of its architecture family; the registry takes its name from the function and
its options (the keyword arguments besides ``num_classes`` and ``img``) from its signature. Adding an
architecture is that file and its registrations: ``models/__init__.py`` imports every file of the package.
Whole libraries of models join as sources (:func:`register_source`): ``torchvision:NAME`` and ``timm:NAME``
(``models/external.py``); ``list_models("timm:*")`` lists a source's names.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

__all__ = ["ModelEntry", "config_of", "create_model", "identify_state_dict", "list_models", "model_entry",
           "register_model", "register_source"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered builder: its name, family (the file it is defined in), options and one-line description."""

    name: str
    builder: Callable[..., nn.Module]
    family: str
    options: dict[str, Any]  # option name -> default value
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


@dataclass(frozen=True)
class ModelSource:
    """Another library's models under ``prefix:NAME``: ``names()`` lists them, ``build(name, num_classes, img,
    pretrained)`` builds one."""

    prefix: str
    names: Callable[[], list[str]]
    build: Callable[..., nn.Module]


_SOURCES: dict[str, ModelSource] = {}


def register_source(prefix: str, names: Callable[[], list[str]], build: Callable[..., nn.Module]) -> None:
    """Make ``prefix:NAME`` name each of ``names()``, built by ``build(NAME, num_classes=, img=, pretrained=)``."""
    _SOURCES[prefix] = ModelSource(prefix, names, build)


def _source_entry(name: str) -> ModelEntry:
    prefix, _, inner = name.partition(":")
    if prefix not in _SOURCES:
        raise ValueError(f"unknown model source {prefix!r} in {name!r}; the sources are {', '.join(_SOURCES)}")
    known = _SOURCES[prefix].names()
    if inner not in known:
        nearest = difflib.get_close_matches(inner, known, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(f'{prefix}:{n}' for n in nearest)}?" if nearest else ""
        raise ValueError(f"unknown model {name!r}{hint} (list_models('{prefix}:*') lists them)")
    build = _SOURCES[prefix].build

    def builder(num_classes: int, img: int, pretrained: bool = False) -> nn.Module:
        return build(inner, num_classes=num_classes, img=img, pretrained=bool(pretrained))

    return ModelEntry(name, builder, prefix, {"pretrained": False}, f"{inner} from {prefix}")


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``builder`` under its function name; returns it unchanged, so it stays callable as before."""
    name = builder.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice ({_REGISTRY[name].family} and {builder.__module__})")
    parameters = inspect.signature(builder).parameters
    if "num_classes" not in parameters or "img" not in parameters:
        raise TypeError(f"model builder {name} must take num_classes and img")
    options = {key: p.default for key, p in parameters.items() if key not in ("num_classes", "img")}
    description = (inspect.getdoc(builder) or name).splitlines()[0]
    _REGISTRY[name] = ModelEntry(name, builder, builder.__module__.rpartition(".")[2], options, description)
    return builder


def model_entry(name: str) -> ModelEntry:
    """The entry of ``name``; a ValueError naming the nearest registered names for an unknown one."""
    if ":" in name:
        return _source_entry(name)
    if name not in _REGISTRY:
        nearest = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(nearest)}?" if nearest else f"; known: {', '.join(list_models())}"
        raise ValueError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def create_model(name: str, *, num_classes: int, img_size: int = 32, **options: Any) -> nn.Module:
    """Build the registered model ``name`` for ``num_classes`` classes and ``img_size`` x ``img_size`` inputs.

    ``options`` are the builder's own keyword arguments (UPANets': filters, blocks, head); one it does not take
    raises a ValueError that says which it takes.
    """
    entry = model_entry(name)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        takes = f"takes {', '.join(entry.options)}" if entry.options else "takes no options"
        raise ValueError(f"model {name} has no option {', '.join(unknown)} ({name} {takes})")
    return entry.builder(num_classes=num_classes, img=img_size, **options)


def list_models(pattern: str = "*") -> list[str]:
    """The registered names matching the shell-style ``pattern``, sorted; a source's (``timm:*``) only when the
    pattern starts with its prefix."""
    prefix, colon, _ = pattern.partition(":")
    if colon and prefix in _SOURCES:
        names = [f"{prefix}:{name}" for name in _SOURCES[prefix].names()]
    else:
        names = list(_REGISTRY)
    return sorted(name for name in names if fnmatch.fnmatchcase(name, pattern))


def config_of(model: nn.Module, num_classes: int, img: int, **options: Any) -> dict[str, Any]:
    """What rebuilds ``model`` (a checkpoint's ``model_config``): its own ``config`` where it has one (UPANets'
    full arguments), else the arguments its builder took."""
    config = getattr(model, "config", None)
    # Pretrained weights start a run; what rebuilds its model later are the checkpoint's own weights.
    options = {key: value for key, value in options.items() if key != "pretrained"}
    return dict(config) if isinstance(config, dict) else {"num_classes": num_classes, "img": img, **options}


def identify_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[str, int] | None:
    """(the registered model, its class count) whose default build has exactly ``state_dict``'s keys, in order,
    and shapes but the classifier's rows; None when none has. Built on the meta device: no memory, no kernels."""
    keys = list(state_dict)
    for name in list_models():
        with torch.device("meta"):
            reference = create_model(name, num_classes=10, img_size=32).state_dict()
        if list(reference) != keys:
            continue
        differing = [key for key in keys if tuple(reference[key].shape) != tuple(state_dict[key].shape)]
        # Only the classifier (whose first dimension is the class count) may differ, and by that count alone.
        counts = {state_dict[key].shape[0] for key in differing}
        if all(reference[key].shape[0] == 10 and reference[key].shape[1:] == state_dict[key].shape[1:]
               for key in differing) and len(counts) <= 1:
            return name, counts.pop() if counts else 10
    return None
