"""Image classifiers by name: the registry (``create_model``, ``list_models``, ``register_model``) and one file per
architecture family, each registering its builders when imported (``upanets.py``: UPANets; it imports torch only
and can be copied alone into another project).

    from models import create_model, list_models
    model = create_model("upanets", num_classes=10, img_size=32, filters=16)
"""
import importlib
import pkgutil

from ._registry import (
    ModelEntry,
    config_of,
    create_model,
    identify_state_dict,
    list_models,
    model_entry,
    register_model,
)

__all__ = ["ModelEntry", "config_of", "create_model", "identify_state_dict", "list_models", "model_entry",
           "register_model"]

# Every architecture file of this package registers its models: importing them here is what makes a new file
# enough to add an architecture.
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
