"""torch.hub entry points, one per registered model (``models.list_models()``):

    torch.hub.load("path/to/this/repo", "upanets16", source="local", num_classes=10)
    torch.hub.load("path/to/this/repo", "upanets", source="local", num_classes=100, filters=32)
"""
from __future__ import annotations

import models as _models  # private names: torch.hub lists every public callable here as a model

dependencies = ["torch"]


def _hub_entry(name: str):
    def build(num_classes: int = 10, img: int = 32, **options):  # the keywords of the builders in models/
        return _models.create_model(name, num_classes=num_classes, img_size=img, **options)

    entry = _models.model_entry(name)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{entry.description} Options: {entry.options}."
    return build


globals().update({_name: _hub_entry(_name) for _name in _models.list_models()})
