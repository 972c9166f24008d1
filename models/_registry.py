"""The model registry: every architecture of this repo by name, as timm's ``create_model`` / ``register_model`` /
``list_models`` (smaller).

    model = create_model("upanets16", num_classes=100, img=32)
    list_models("upanets*")          # ['upanets', 'upanets16', 'upanets32', 'upanets64']

A builder is a function ``builder(num_classes, img, **options) -> nn.Module`` decorated with
:func:`register_model` in the file of its architecture family; the registry takes its name from the function and
its options (the keyword arguments besides ``num_classes`` and ``img``) from its signature. Adding an
architecture is that file and its registrations: ``models/__init__.py`` imports every file of the package.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

__all__ = ["ModelEntry", "create_model", "list_models", "model_entry", "register_model"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered builder: its name, family (the file it is defined in), options and one-line description."""

    name: str
    builder: Callable[..., nn.Module]
    family: str
    options: dict[str, Any]  # option name -> default value
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


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
    if name not in _REGISTRY:
        nearest = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(nearest)}?" if nearest else f"; known: {', '.join(list_models())}"
        raise ValueError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def create_model(name: str, *, num_classes: int, img: int = 32, **options: Any) -> nn.Module:
    """Build the registered model ``name`` for ``num_classes`` classes and ``img`` x ``img`` inputs.

    ``options`` are the builder's own keyword arguments (UPANets': filters, blocks, head); one it does not take
    raises a ValueError that says which it takes.
    """
    entry = model_entry(name)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        takes = f"takes {', '.join(entry.options)}" if entry.options else "takes no options"
        raise ValueError(f"model {name} has no option {', '.join(unknown)} ({name} {takes})")
    return entry.builder(num_classes=num_classes, img=img, **options)


def list_models(pattern: str = "*") -> list[str]:
    """The registered names matching the shell-style ``pattern``, sorted."""
    return sorted(name for name in _REGISTRY if fnmatch.fnmatchcase(name, pattern))
