"""Checkpoint files: the one reader of every format accepted, the writer, and the one builder of a model from what
a file holds.

    record = read_checkpoint("checkpoint/cifar10-upanets16/best.pth")
    model, which = build_model(record)          # its EMA weights where it holds them ("ema"), else "raw"

Formats read (``record.format``):

    upanets-lab  this repo's (``training.checkpointing`` writes them): weights, EMA weights, model name and
                 configuration, data set, class names, normalisation and the whole training state
    original     the original UPANets code's ``{'net': DataParallel state dict, 'acc', 'epoch'}``: weights only;
                 the data set is implied by the class count and image size, and its CIFAR inputs were
                 normalised with that code's single CIFAR mean/std
    pytorch-cifar  kuangliu/pytorch-cifar's files, the same layout holding one of its CIFAR networks (the model
                 is the registered one whose state dict it matches): CIFAR-10 or -100 by its class count,
                 32x32, the same mean/std
    state-dict   a bare state dict (of UPANets, or of a registered model it matches)

Every file is read with ``torch.load(weights_only=True)``, which refuses pickles that would run code; a bad file
is one :class:`UserError` line.
"""
from __future__ import annotations

import io
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from models import create_model, identify_state_dict, list_models, model_entry
from models.upanets import clean_state_dict, config_repr, config_reprs, describe_state_dict
from upanets_lab.data import catalog
from upanets_lab.errors import UserError
from upanets_lab.files import atomic_write

FORMATS = ("upanets-lab", "original", "pytorch-cifar", "state-dict")
# What the original code trained, by (classes, image size): its checkpoints hold nothing else to go by.
_ORIGINAL_CODE_DATASETS = {(10, 32): "cifar10", (100, 32): "cifar100", (200, 64): "tiny-imagenet"}


@dataclass
class CheckpointRecord:
    """What a checkpoint file holds, whatever its format (see the module's docstring)."""

    path: Path
    format: str
    model: str  # the registered model name ("upanets" for files that do not name one)
    model_config: dict[str, Any]  # UPANets(**model_config); without "img" where the weights do not fix it
    weights: dict[str, torch.Tensor]  # plain keys (no module. / _orig_mod.)
    ema_weights: dict[str, torch.Tensor] | None = None
    dataset: str | None = None
    data_dir: str | None = None  # where the training data was, when the file records it
    classes: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    seed: int = 0  # the run's --seed (a folder or synthetic set's make-up depends on it)
    run_name: str | None = None
    contents: dict[str, Any] = field(default_factory=dict, repr=False)  # the file as loaded: the training state

    def chosen_weights(self, raw: bool = False) -> tuple[dict[str, torch.Tensor], str]:
        """(the weights a model takes from this file, "ema" or "raw"): its EMA weights where it holds them
        (--model-ema), unless ``raw``, else the trained ones."""
        if self.ema_weights is not None and not raw:
            return self.ema_weights, "ema"
        return self.weights, "raw"

    @property
    def resumable(self) -> bool:
        """Whether it holds the optimizer state that resuming needs (weights-only files do not)."""
        return "optimizer" in self.contents

    def normalization(self, dataset: str | None = None) -> tuple[Sequence[float], Sequence[float]] | None:
        """(mean, std) the model's inputs were normalised with, when the file tells: its recorded ones, or for
        the original code's CIFAR checkpoints that code's single CIFAR mean/std (``dataset``: the data set it
        is used with, when the file records none); else None."""
        if self.mean is not None and self.std is not None:
            return self.mean, self.std
        if self.format in ("original", "pytorch-cifar") and (dataset or self.dataset) in ("cifar10", "cifar100"):
            return catalog.ORIGINAL_CIFAR_NORMALIZATION
        return None

    def settings(self) -> dict[str, Any]:
        """The ``model``, ``dataset``, ``filters``, ``blocks``, ``head`` and (for the sets whose image size is a
        flag) ``img_size`` main.py's flags must have to rebuild its model, as far as the file says."""
        config = self.model_config
        settings = {"model": self.model, "dataset": self.dataset, "filters": config.get("filters"),
                    "blocks": config.get("blocks"),
                    "head": config.get("head", "exc")}  # files written before heads existed hold the ExC head
        if self.dataset in catalog.FREE_SIZE_DATASETS:
            settings["img_size"] = config.get("img")
        options = model_entry(self.model).options if self.model in list_models() else {}
        return {key: value for key, value in settings.items()
                if value is not None and (key not in ("filters", "blocks", "head") or key in options)}


def read_checkpoint(path: str | os.PathLike) -> CheckpointRecord:
    """The :class:`CheckpointRecord` of the file at ``path``, or a UserError saying why it is not one."""
    path = Path(path)
    contents = _load(path)
    weights = _state_dict(contents, path)
    data, args = _section(contents, "data"), _section(contents, "args")
    name, config = contents.get("model_name") or args.get("model"), contents.get("model_config")
    if not isinstance(config, dict):
        found = _identify(weights)
        if found is None:
            raise UserError(f"{path} holds the weights of no registered model (models.list_models())")
        name, config = found
    fmt = "upanets-lab" if "model" in contents else "state-dict" if "net" not in contents else (
        "original" if name == "upanets" else "pytorch-cifar")
    dataset = catalog.canonical_dataset(data.get("dataset") or args.get("dataset"))
    if fmt == "pytorch-cifar":  # a CIFAR repo's: 32x32 images of CIFAR-10 or -100
        config.setdefault("img", 32)
        dataset = dataset or {10: "cifar10", 100: "cifar100"}.get(config["num_classes"])
    if dataset is None and fmt == "original":
        dataset = _ORIGINAL_CODE_DATASETS.get((config["num_classes"], config.get("img")))
    try:
        model_entry(name or "upanets")
    except (ValueError, ImportError) as e:  # a name no longer registered; timm:NAME without timm
        raise UserError(f"{path} holds a model this repo cannot build: {e}") from None
    ema = contents.get("model_ema")
    mean, std = data.get("mean"), data.get("std")
    return CheckpointRecord(
        path, fmt, name or "upanets", dict(config), weights,
        clean_state_dict(ema) if isinstance(ema, dict) else None, dataset, data.get("dir") or args.get("data_dir"),
        data.get("classes"), None if mean is None else tuple(mean), None if std is None else tuple(std),
        args.get("seed", 0), args.get("run_name"), contents)


def _identify(weights: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]] | None:
    """(registered name, model_config) of weights that nothing describes: UPANets' from its shapes (``img``
    only where the ExC head fixes it), another model's by matching the registry's layouts; None if neither."""
    try:
        return "upanets", describe_state_dict(weights)
    except ValueError:
        found = identify_state_dict(dict(weights))
    return None if found is None else (found[0], {"num_classes": found[1]})


def _section(contents: dict[str, Any], key: str) -> dict[str, Any]:
    """A file's ``key`` entry (args, data) when it is a dict, else an empty one: older files lack them."""
    value = contents.get(key)
    return value if isinstance(value, dict) else {}


def _state_dict(contents: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The model's state dict inside a file: under "model" (ours), "net" (the original code's), or the file."""
    for key in ("model", "net", "state_dict"):
        if isinstance(contents.get(key), Mapping):
            contents = contents[key]
            break
    if not contents or not all(isinstance(value, torch.Tensor) for value in contents.values()):
        raise UserError(f"{path} is not a model checkpoint: expected a state dict of tensors, or a dict holding "
                        "one under 'model' or 'net'")
    return clean_state_dict(contents)


def _load(path: Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors for bad files."""
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a checkpoint file in it, such as {path / 'best.pth'}")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is many lines of advice; the one that matters follows "WeightsUnpickler error:".
        details = [" ".join(part.split()) for part in str(e).partition("WeightsUnpickler error:")[2].split("\n\n")]
        reason = next((part for part in details if part), type(e).__name__)
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if unsafe:
            raise UserError(
                f"refusing to load {path}: unpickling it would import {unsafe.group(1)}, which can run code; "
                "only checkpoints of tensors and plain Python values are accepted"
            ) from None
        raise UserError(f"cannot read checkpoint {path}: the file is truncated, corrupt or not a PyTorch checkpoint "
                        f"({reason})") from None
    except Exception as e:  # a damaged or foreign file can fail with almost any exception type
        raise UserError(f"cannot read checkpoint {path}: the file is truncated, corrupt or not a PyTorch checkpoint "
                        f"({type(e).__name__})") from None
    if not isinstance(contents, dict):
        raise UserError(f"{path} is not a checkpoint: expected a dict, got {type(contents).__name__}")
    return contents


def save_checkpoint(state: dict[str, Any], *paths: str | os.PathLike) -> None:
    """``torch.save`` to each path through :func:`atomic_write`: a process killed mid-write leaves the
    previous file intact.

    The checkpoint is serialised in memory, once for all paths: torch's file writer reports a full disk as a
    RuntimeError ("unexpected pos"), while a plain write raises the OSError that names the problem and the path.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for path in paths:
        with atomic_write(path) as f:
            f.write(buffer.getbuffer())


# ----------------------------------------------------------------------------- models from records


def load_model_weights(model: nn.Module, weights: Mapping[str, torch.Tensor], source: Path) -> None:
    """Load ``weights`` (read from ``source``) into ``model`` strictly, or say in one line why they do not fit,
    and which registered model they look like."""
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        expected = getattr(model, "config", None)
        try:
            found = describe_state_dict(weights)
        except ValueError:
            found = None
        if found is None or not isinstance(expected, dict):
            raise UserError(f"{source} holds {_looks_like(weights)}, which do not fit this run's model "
                            f"({type(model).__name__}); pass the --model they were trained as") from None
        remedies = []
        if any(expected[key] != value for key, value in found.items() if key != "head"):
            remedies.append("match --filters/--blocks/--dataset to the checkpoint")
        if found["head"] != expected["head"]:
            remedies.append(f"pass --head {found['head']}")
        held, built = config_reprs(found, expected)
        raise UserError(f"{source} holds {held} but this run builds {built}; "
                        f"{' and '.join(remedies) or 'the file is damaged'}") from None


def _looks_like(weights: Mapping[str, torch.Tensor]) -> str:
    """What weights look like, for a message: UPANets' configuration or a registered model's name."""
    found = _identify(weights)
    if found is None:
        return "the weights of no registered model"
    name, config = found
    return f"the weights of {config_repr(config)}" if name == "upanets" else (
        f"{name} weights ({config['num_classes']} classes)")


def build_model(record: CheckpointRecord, *, img: int | None = None, raw_weights: bool = False,
                **config: Any) -> tuple[nn.Module, str]:
    """The record's model with its weights, on the CPU in eval mode, and which weights: its EMA ones where it
    holds them ("ema"), unless ``raw_weights``, else the trained ones ("raw").

    ``img`` is needed where the weights do not fix the image size, and must agree where they do; ``config``
    (num_classes, filters, head, ...) overrides what the record says, and must fit its weights.
    """
    given, config = list(config), {**record.model_config, **config}
    if img is not None and "img" in record.model_config and img != config["img"]:
        raise UserError(f"{record.path} holds a model for {config['img']}x{config['img']} images, "
                        f"not --img-size {img}")
    config.setdefault("img", img)
    if config["img"] is None:  # only the ExC head's weights are sized by the image
        raise UserError(f"{record.path} does not say which image size its model takes; pass --img-size")
    try:
        model = create_model(record.model, **_builder_arguments(record.model, config, given))
    except (TypeError, ValueError) as e:
        raise UserError(f"{record.path}: {e}") from None
    weights, which = record.chosen_weights(raw_weights)
    load_model_weights(model, weights, record.path)
    return model.eval(), which


def _builder_arguments(name: str, config: dict[str, Any], given: Sequence[str]) -> dict[str, Any]:
    """``config`` (a model's ``config``) as the arguments of the registered builder ``name``; an option ``given``
    by the caller that the model does not take is an error (UPANets' config holds its filters, which the
    fixed-size builders take from their name)."""
    options = model_entry(name).options
    unknown = sorted(key for key in given if key not in (*options, "num_classes", "img"))
    if unknown:
        raise ValueError(f"model {name} has no option {', '.join(unknown)}")
    return {"num_classes": config["num_classes"], "img_size": config["img"],
            **{key: value for key, value in config.items() if key in options}}
