"""How the model runs fastest on the machine at hand: the precision and memory layout found by timing the run's
own step, and ``torch.compile`` as ``main.py --compile`` applies it.

As ``torch.backends.cudnn.benchmark`` does for kernels, ``--amp auto`` and an unset ``--channels-last``
are decided by timing a few steps of the model being trained, at the run's batch size and thread count,
for each candidate: fp32, and bf16 where the device has it (fp16 with grad scaling on GPUs without bf16),
each in NCHW and in channels_last. Which one wins differs between machines of the same kind (bf16 with
channels_last trained about twice as fast as fp32 on a 2-core AMD EPYC, bf16 was slower than fp32 on an
Intel Xeon without AMX), so nothing is guessed from CPU flags. Results are cached per machine in
``$XDG_CACHE_HOME/upanets/speed.json`` (default ``~/.cache``): only the first run with a given model, batch
size and thread count pays. Options within TIE_MARGIN of the fastest are a tie, which goes to the first in
PREFERENCE, so that timing noise never decides which model a command trains.
"""
from __future__ import annotations

import copy
import json
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from upanets_lab.data.augment import DeviceTransform
from upanets_lab.errors import UserError, one_line
from upanets_lab.files import atomic_write
from upanets_lab.training import engine
from upanets_lab.training.distributed import DistributedContext
from upanets_lab.utils import device_name

# The precisions, by the names every flag, cache entry and checkpoint uses; and the values of the flags.
AMP_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AMP_FLAGS = ("auto", "bf16", "fp16", "off")  # --amp: measured, one precision, or fp32
EVAL_AMP_FLAGS = ("off", "bf16", "fp16")  # --eval-amp: fp32 unless asked (main.py adds "train")
CACHE_VERSION = 1
# Each candidate first runs warm-up steps (kernel selection; the allocator finds its footing over the first
# steps: one step of bf16 + channels_last UPANets16 on a 2-core CPU ran at 157, 208, then 229 images/s),
# then is timed for at least MIN_TIMED_SECONDS (one step at least, MAX_TIMED_STEPS at most). On the CPU a
# candidate whose first step ran below FIRST_STEP_FRACTION of the best rate timed so far cannot win (first
# steps were at most 30% slower than later ones) and is dropped there; the candidates likely to be fast go
# first, so that on machines where they are, the rest costs one step each. The candidates timed are timed
# once more, in the other order, and keep their better time: another process that steals the CPU for a
# moment, or the first seconds of a process, then decide nothing (the choice is cached for good). Probing
# UPANets16 at batch 100 takes about 6 s on a 2-core CPU where bf16 wins, and twice that where all four
# options are close.
WARMUP_STEPS = {"cpu": 2, "cuda": 3}
MIN_TIMED_SECONDS = 0.25
MAX_TIMED_STEPS = 20
FIRST_STEP_FRACTION = 0.5
# Options measured within TIE_MARGIN of the fastest are tied, and a tie goes to the first of them in
# PREFERENCE (fp32 before lower precisions, then PyTorch's default layout before channels_last), not to the
# luckier timing. The layouts and precisions compute in different orders, so the choice decides the trained
# weights: two probes of one command on an AVX2-only AMD EPYC timed NCHW and channels_last at 148.6 against
# 148.2 and at 126.4 against 129.5 images/s, and the two runs trained different models. 10% covers the probe's
# run-to-run spread measured on a loaded 2-core machine.
TIE_MARGIN = 0.10


@dataclass(frozen=True)
class SpeedChoice:
    """The precision (``amp``: fp32, bf16 or fp16) and memory layout a run uses, and how they were chosen."""

    amp: str
    channels_last: bool
    source: str = "flags"  # flags, measured, cache or checkpoint
    rates: dict[str, float] = field(default_factory=dict)  # images/s per candidate label, when measured

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES[self.amp]

    @property
    def label(self) -> str:
        return label(self.amp, self.channels_last)

    def to_dict(self) -> dict[str, Any]:
        return {"amp": self.amp, "channels_last": self.channels_last, "source": self.source, "rates": self.rates}

    def describe(self) -> str:
        """One line for the start-up output: the choice, how it was made, and the rates behind it."""
        how = {"flags": "set by --amp and --channels-last", "measured": "measured now",
               "cache": f"measured earlier, cached in {cache_path()}",
               "checkpoint": "as the checkpoint was trained"}[self.source]
        rates = ", ".join(f"{name} {rate:,.0f}" for name, rate in self.rates.items())
        fastest = max(self.rates, key=self.rates.__getitem__) if self.rates else self.label
        tie = "" if fastest == self.label else (f"; {fastest}, the fastest, is within {TIE_MARGIN:.0%}: a tie, which "
                                                "goes to the preferred option")
        return f"speed: {self.label} ({how}" + (f"; images/s: {rates}" if rates else "") + tie + ")"


def preferred(rates: dict[str, float]) -> str:
    """The option that ``rates`` (images/s by label) choose: the first in PREFERENCE within TIE_MARGIN of the
    fastest."""
    fastest = max(rates.values())
    tied = [name for name, rate in rates.items() if rate >= (1 - TIE_MARGIN) * fastest]
    return min(tied, key=PREFERENCE.index)


def autocast_dtype(flag: str) -> torch.dtype | None:
    """The autocast dtype of an --amp or --eval-amp value naming one precision (off and fp32: None)."""
    return AMP_DTYPES["fp32" if flag == "off" else flag]


def label(amp: str, channels_last: bool) -> str:
    return f"{amp} + channels_last" if channels_last else amp


PREFERENCE = tuple(label(amp, layout) for amp in AMP_DTYPES for layout in (False, True))


# ----------------------------------------------------------------------------- candidates


def amp_candidates(flag: str, device: torch.device, name: str = "--amp") -> list[str]:
    """The precisions ``--amp flag`` allows on ``device``: all it supports for ``auto``, else the one named.

    ``name`` is the flag the value came from (--amp, or --eval-amp, whose values are checked the same way).
    """
    if flag == "off":
        return ["fp32"]
    if device.type == "cuda":
        # Native bf16 needs compute capability 8.0 (Ampere); older GPUs only emulate it, slowly.
        bf16_ok = torch.cuda.get_device_capability(device) >= (8, 0)
        if flag == "bf16" and not bf16_ok:
            raise UserError(f"{name} bf16: this GPU has no bf16 support; use {name} fp16 or off")
        return ["fp32", "bf16" if bf16_ok else "fp16"] if flag == "auto" else [flag]
    if device.type == "cpu":
        if flag == "fp16":
            raise UserError(f"{name} fp16 needs a CUDA GPU; on the CPU use {name} bf16 or off")
        return ["fp32", "bf16"] if flag == "auto" else [flag]
    if flag == "auto":
        return ["fp32"]
    raise UserError(f"{name} {flag} is supported on cuda and cpu, not {device.type}")


def candidates(amp_flag: str, channels_last_flag: bool | None, device: torch.device) -> list[tuple[str, bool]]:
    layouts = [False, True] if channels_last_flag is None else [channels_last_flag]
    return [(amp, layout) for amp in amp_candidates(amp_flag, device) for layout in layouts]


# ----------------------------------------------------------------------------- measuring


def time_steps(step: Callable[[], None], device: torch.device, batch_size: int,
               max_steps: int = MAX_TIMED_STEPS) -> float:
    """Images/s of ``step`` over at least MIN_TIMED_SECONDS (one step at least, ``max_steps`` at most)."""
    _synchronize(device)
    steps, started = 0, time.perf_counter()
    while True:
        step()
        steps += 1
        _synchronize(device)
        elapsed = time.perf_counter() - started
        if elapsed >= MIN_TIMED_SECONDS or steps >= max_steps:
            return steps * batch_size / elapsed


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe_step(model: nn.Module, amp: str, channels_last: bool, device: torch.device, batch_size: int,
               train: bool, compile: bool = False, config: Mapping[str, Any] | None = None) -> Callable[[], None]:
    """The run's step (engine.train_step or engine.eval_step) on a copy of ``model`` and a random uint8 batch,
    through ``compile_model`` with ``compile``. The benchmark times its rows with it too.

    Nothing here draws from the global RNGs, so a run gives the same results whether it measured or not.
    """
    generator = torch.Generator().manual_seed(0)
    img, num_classes = _sizes(model, config)
    images = torch.randint(0, 256, (batch_size, 3, img, img), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    images, labels = images.to(device), labels.to(device)
    bare = copy.deepcopy(model).to(device)
    if channels_last:
        bare.to(memory_format=torch.channels_last)
    net = compile_model(bare, device, batch_size) if compile else bare
    # Evaluation runs in the option's precision too: for the probe, eval options are the --eval-amp of --evaluate.
    runtime = engine.Runtime(device, amp_dtype=AMP_DTYPES[amp], channels_last=channels_last,
                             eval_amp_dtype=None if train else AMP_DTYPES[amp])
    criterion = nn.CrossEntropyLoss()
    normalize = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), device=device)
    if not train:
        transform = DeviceTransform(**normalize)
        sums = torch.zeros(4, dtype=torch.float64, device=device)
        net.eval()

        @torch.inference_mode()
        def step() -> None:
            engine.eval_step(net, criterion, images, labels, transform, sums, runtime)

        return step
    optimizer = torch.optim.SGD(bare.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    augment = DeviceTransform(**normalize, pad=img // 8, flip=True)
    trainer = engine.Trainer(net.train(), criterion, optimizer, scaler, augment)
    state = engine.EpochState.zeros(device)
    return lambda: engine.train_step(trainer, images, labels, state, runtime)


def _sizes(model: nn.Module, config: Mapping[str, Any] | None) -> tuple[int, int]:
    """(image size, classes) of a model: from ``config`` (a checkpoint's ``model_config``), else its own."""
    config = config if config is not None else model.config
    return config["img"], config["num_classes"]


def measure(model: nn.Module, options: list[tuple[str, bool]], device: torch.device, batch_size: int,
            train: bool, config: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Images/s of each (precision, channels_last) option, in the order given."""
    steps: dict[str, Callable[[], None]] = {}  # the options timed in full
    rates: dict[str, float] = {}
    for option in sorted(options, key=lambda o: (o[0] == "fp32", not o[1])):  # bf16, then channels_last, first
        name = label(*option)
        step = probe_step(model, *option, device, batch_size, train, config=config)
        first_rate = time_steps(step, device, batch_size, max_steps=1)
        if device.type == "cpu" and rates and first_rate < FIRST_STEP_FRACTION * max(rates.values()):
            rates[name] = first_rate
            continue
        for _ in range(WARMUP_STEPS.get(device.type, 1) - 1):
            step()
        steps[name] = step
        rates[name] = time_steps(step, device, batch_size)
    if len(steps) > 1:
        for name in reversed(list(steps)):
            rates[name] = max(rates[name], time_steps(steps[name], device, batch_size))
    del steps
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {label(*option): rates[label(*option)] for option in options}


# ----------------------------------------------------------------------------- the cache


def cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "upanets" / "speed.json"


def cache_key(config: Mapping[str, Any], device: torch.device, batch_size: int, train: bool,
              name: str | None = None) -> str:
    """The cache entry of a model on this machine, torch and thread count: UPANets by its ``config`` alone (as
    before other models existed), another model by its registered ``name`` and builder arguments."""
    model = dict(config) if name is None else {"name": name, **config}
    return json.dumps({"device": device_name(device), "torch": torch.__version__, "step": "train" if train else "eval",
                       "model": model,
                       "batch_size": batch_size, "threads": torch.get_num_threads()}, sort_keys=True)


def read_cache() -> dict[str, dict[str, float]]:
    """The cached rates by key; an unreadable, corrupt or other-version cache reads as empty."""
    try:
        with open(cache_path()) as f:
            cache = json.load(f)
        entries = cache["entries"] if cache["version"] == CACHE_VERSION else {}
        return {key: {name: float(rate) for name, rate in rates.items()} for key, rates in entries.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def write_cache(entries: dict[str, dict[str, float]]) -> None:
    """Replace the cache file; a cache that cannot be written is only a lost shortcut, never an error."""
    try:
        with atomic_write(cache_path(), "w") as f:
            json.dump({"version": CACHE_VERSION, "entries": entries}, f, indent=1, sort_keys=True)
    except (OSError, RuntimeError) as e:
        warnings.warn(f"cannot write the speed cache {cache_path()} ({one_line(e)}); the next run will "
                      "measure again", stacklevel=2)


# ----------------------------------------------------------------------------- choosing


def choose(model: nn.Module, *, amp_flag: str, channels_last_flag: bool | None, device: torch.device,
           batch_size: int, train: bool, context: DistributedContext, stored: dict[str, Any] | None = None,
           name: str | None = None, config: Mapping[str, Any] | None = None) -> SpeedChoice:
    """The fastest of the options the flags leave open, the same on every rank.

    Flags that fix both precision and layout are used as given. Otherwise ``stored`` (a checkpoint's
    choice) is kept when the flags allow it, so a resumed run continues as it started; then the cache;
    then rank 0 measures and the others receive its choice.
    """
    options = candidates(amp_flag, channels_last_flag, device)
    if len(options) == 1:
        return SpeedChoice(*options[0])
    if stored is not None and (stored.get("amp"), stored.get("channels_last")) in options:
        return SpeedChoice(stored["amp"], stored["channels_last"], "checkpoint", stored.get("rates", {}))
    choice = None
    if context.is_main:
        choice = _measure_or_recall(model, options, device, batch_size, train, name, config)
    return _broadcast(choice, options, context)


def _measure_or_recall(model: nn.Module, options: list[tuple[str, bool]], device: torch.device, batch_size: int,
                       train: bool, name: str | None, config: Mapping[str, Any] | None) -> SpeedChoice:
    entries = read_cache()
    key = cache_key(config if config is not None else model.config, device, batch_size, train, name)
    rates = entries.get(key, {})
    missing = [option for option in options if label(*option) not in rates]
    if missing:
        rates = {**rates, **measure(model, missing, device, batch_size, train, config)}
        write_cache({**read_cache(), key: rates})
    allowed = {label(*option): option for option in options}
    shown = {name: rate for name, rate in rates.items() if name in allowed}
    return SpeedChoice(*allowed[preferred(shown)], "measured" if missing else "cache", shown)


def _broadcast(choice: SpeedChoice | None, options: list[tuple[str, bool]],
               context: DistributedContext) -> SpeedChoice:
    """Rank 0's choice on every rank: all ranks must run the same precision."""
    if not context.enabled:
        return choice
    holder = [choice]
    dist.broadcast_object_list(holder, src=0)
    received = holder[0]
    if (received.amp, received.channels_last) not in options:  # the ranks were given different flags
        raise UserError(f"rank 0 chose {received.label}, which this rank's flags do not allow")
    return received


# ----------------------------------------------------------------------------- compilation


def compile_model(model: torch.nn.Module, device: torch.device, batch_size: int,
                  distributed: bool = False) -> torch.nn.Module:
    """``torch.compile`` as ``main.py --compile`` applies it, for batches of ``batch_size`` images.

    At batch 100 a GPU step is bound by kernel launches, which CUDA graphs ("reduce-overhead")
    remove; under DDP the gradient all-reduce hooks stay outside graphs, so it keeps the default mode.
    Batches of another size run eagerly (see :class:`CompiledForBatch`).
    """
    mode = "reduce-overhead" if device.type == "cuda" and not distributed else None
    return CompiledForBatch(model, torch.compile(model, mode=mode), batch_size)


class CompiledForBatch(torch.nn.Module):
    """``compiled`` for batches of ``batch_size`` images, the eager ``model`` (the same parameters) for others.

    An epoch's last batch is usually smaller: compiling (and capturing CUDA graphs) again for its shape, in
    training and in evaluation, cost more than that one step eager, and made a compiled epoch take minutes.
    Train and eval mode still compile once each.
    """

    def __init__(self, model: torch.nn.Module, compiled: torch.nn.Module, batch_size: int) -> None:
        super().__init__()
        self.model, self.compiled, self.batch_size = model, compiled, batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.compiled if x.shape[0] == self.batch_size else self.model)(x)
