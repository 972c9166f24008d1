"""models/: the registry builds every registered name, refuses unknown names and options in one line, and a
copied models/upanets.py works without it."""
from __future__ import annotations

import pytest
import torch

import models
from models.upanets import UPANets


def test_upanets_is_registered_by_its_sizes_and_with_its_options():
    assert models.list_models("upanets*") == ["upanets", "upanets16", "upanets32", "upanets64"]
    assert models.list_models("upanets?2") == ["upanets32"]
    assert models.model_entry("upanets").options == {"filters": 16, "blocks": 1, "head": "exc"}
    assert models.model_entry("upanets16").family == "upanets"
    for name, filters in (("upanets16", 16), ("upanets32", 32), ("upanets", 8)):
        options = {"filters": 8} if name == "upanets" else {}
        model = models.create_model(name, num_classes=7, img_size=16, head="last", **options)
        assert isinstance(model, UPANets)
        assert model.config == {"filters": filters, "num_classes": 7, "blocks": 1, "img": 16, "head": "last"}
        assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 7)


def test_unknown_names_and_options_are_one_line():
    with pytest.raises(ValueError, match=r"unknown model 'upanet'; did you mean upanets"):
        models.create_model("upanet", num_classes=10)
    with pytest.raises(ValueError, match=r"model upanets16 has no option filters \(upanets16 takes blocks, head\)"):
        models.create_model("upanets16", num_classes=10, filters=32)


def test_a_builder_is_registered_once_and_must_take_classes_and_image_size():
    with pytest.raises(ValueError, match="registered twice"):
        models.register_model(models.model_entry("upanets").builder)

    def no_image_size(num_classes: int = 10) -> torch.nn.Module:
        return torch.nn.Linear(1, num_classes)

    with pytest.raises(TypeError, match="must take num_classes and img"):
        models.register_model(no_image_size)


def test_the_cli_hub_and_the_docs_model_table_read_the_registry():
    """--model's choices and hubconf.py read the registry; docs/models.md's table is its --list-models output."""
    import hubconf
    from upanets_lab import utils

    import main
    from helpers import REPO_ROOT

    model_flag = next(a for a in main.get_args_parser()._actions if "--model" in a.option_strings)
    assert all(name in model_flag.help for name in models.list_models())
    assert [model_flag.type(name) for name in models.list_models()] == models.list_models()
    assert all(callable(getattr(hubconf, name)) for name in models.list_models())
    table = [line.split("|") for line in (REPO_ROOT / "docs" / "models.md").read_text().splitlines()
             if line.startswith("| `")]
    assert [row[1].strip().strip("`") for row in table] == models.list_models()
    for row in table:
        name = row[1].strip().strip("`")
        with torch.device("meta"):
            model, wide = (models.create_model(name, num_classes=n, img_size=32) for n in (10, 100))
        assert row[2].strip() == f"`models/{models.model_entry(name).family}.py`"
        assert [row[3].strip(), row[4].strip()] == [f"{utils.count_parameters(m):,}" for m in (model, wide)], name
        assert row[5].strip() == f"{utils.forward_flops(model, 32) / 1e9:.3f}", name
