"""Speed of this repo's fast paths against the original UPANets recipe, as markdown tables.

    python benchmarks/benchmark.py --device cpu                 # UPANets16 on the CPU (~5 min on 2 cores)
    python benchmarks/benchmark.py --device cuda --time-limit 230 --json bench.json   # UPANets16 and 64
    python benchmarks/benchmark.py --quick --sections train,eval,data   # smoke run: no training processes
    python benchmarks/benchmark.py --device cuda --sections epoch --compile --epoch-timeout 400
    python benchmarks/benchmark.py --device cuda --models 64 --compile
    make bench ARGS="--device cpu"

The baseline is numerically the original authors' recipe (hanktseng131415go/UPANets): fp32 in NCHW,
CPA's per-pixel channel mix as permute -> nn.Linear -> permute back, F.layer_norm, the ExC head as
nn.Linear over flattened pixels plus average pooling, torchvision PIL transforms in a DataLoader, and host
syncs every step (loss.item(), correct.sum().item()). It is this repo's model run inside
baseline_train.original_computation(); the run starts by checking that computation against ours (and
against the original code's saved logits in tests/data/) to 1e-4. Sections:

1. train step: forward + backward + SGD step on one batch of 100 32x32 images (images/s; achieved
   TFLOP/s from torch.utils.flop_counter, against the GPU's dense bf16 peak on CUDA);
2. eval: forward passes in inference mode (the baseline: no_grad and per-batch syncs, as the original);
3. data pipeline: one epoch of augmented, normalised batches of 100 from a CIFAR-sized uint8 set;
4. epoch: wall time of a whole `python main.py` process against benchmarks/baseline_train.py on the same
   generated CIFAR-10 files: one epoch of 2,000/500 images on the CPU; on CUDA two epochs of 10,000/2,000,
   so that the second epoch's time shows the steady state without cuDNN autotuning and compilation.

Each row runs guarded: a failure is reported in its table cell and the run goes on. Speed-ups are
throughput ratios against the baseline row of the same table and model (for times: baseline / ours).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torchvision
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]

from models.upanets import UPANets, check_config
from upanets_lab import errors
from upanets_lab.data import augment, augment_ops, catalog, decoding, loading
from upanets_lab.data.samples import make_cifar10  # CIFAR-10 files in the official format
from upanets_lab.training import distributed, tuning

from baseline_train import PilImages, original_computation, train_transform

BATCH = 100
IMG = 32
NUM_CLASSES = 10
NUMERICS_TOLERANCE = 1e-4
ORIGINAL_LOGITS_FILE = REPO / "tests" / "data" / "forward_filters8_classes10_img32.pt"
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, matched against the device name, most specific first.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100", 989.0),
                    ("H200", 989.0), ("A100", 312.0))
SECTIONS = {  # key: (title, metric column, whether higher values are better)
    "train": (f"1. Train step: forward + backward + SGD step, batch {BATCH}, {IMG}x{IMG}", "images/s", True),
    "eval": (f"2. Eval: forward in inference mode, batch {BATCH}", "images/s", True),
    "data": (f"3. Data pipeline: random crop + flip + normalise into batches of {BATCH}", "images/s", True),
    "augment": (f"4. Recipe augmentation per image: crop + flip + TrivialAugmentWide + normalise + RandomErasing(0.1), "
                f"batches of {BATCH}", "images/s", True),
    "epoch": ("5. Epochs (train + test): whole process, and the last epoch alone", "wall time (s)", False),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    device: torch.device
    models: tuple[int, ...]
    steps: int  # timed steps per train/eval row, at most
    warmup: int
    row_seconds: float | None  # rows with slow steps time fewer, about this long (at least one); None: all
    pipeline_images: int
    epoch_sizes: tuple[int, int]  # generated train / test images for the epoch rows
    epoch_timeout: float  # seconds per training process
    epoch_repeats: int  # runs of each epoch row, interleaved; the row shows their median
    compile: bool
    sections: tuple[str, ...]
    deadline: float | None  # time.perf_counter() after which rows are skipped (--time-limit)

    def seconds_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.perf_counter()


@dataclasses.dataclass
class Result:
    section: str
    group: str  # the model or data size; speed-ups compare rows of one section and group
    variant: str
    value: float | None = None  # images/s, or process wall seconds for the epoch rows
    baseline: bool = False
    epoch_seconds: float | None = None  # epoch rows: the epoch's time as measured inside the process
    tflops: float | None = None  # train rows: achieved TFLOP/s
    compile_seconds: float | None = None  # compiled train rows: the first step's time beyond a compiled one's
    notes: str = ""
    error: str = ""


@dataclasses.dataclass(frozen=True)
class Measured:
    value: float  # as Result.value
    notes: str = ""
    epoch_seconds: float | None = None
    tflops: float | None = None
    compile_seconds: float | None = None


DEFAULTS_LABEL = "ours: main.py with its defaults"


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    amp: str = "fp32"  # as tuning.AMP_DTYPES names it
    channels_last: bool = False
    compile: bool = False
    baseline: bool = False


# ----------------------------------------------------------------------------- helpers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_guarded(section: str, group: str, variant: str, measure: Callable[[], Measured], settings: Settings,
                baseline: bool = False) -> Result:
    """Run one measurement; an exception becomes the row's error instead of ending the benchmark.

    Past the --time-limit deadline the row is skipped (and says so).
    """
    started = time.perf_counter()
    result = Result(section, group, variant, baseline=baseline)
    if settings.seconds_left() <= 0:
        result.error = "skipped: --time-limit reached"
    else:
        try:
            measured = measure()
            result = dataclasses.replace(result, **dataclasses.asdict(measured))
        except Exception as e:  # any failure of one row is reported in the table
            result.error = errors.one_line(e)[:300]
        gc.collect()
        if settings.device.type == "cuda":
            torch.cuda.empty_cache()
    shown = result.error or f"{result.value:,.2f} {result.notes}"
    log(f"[{time.perf_counter() - started:6.1f}s] {section} | {group} | {variant}: {shown}")
    return result


def throughput(step: Callable[[], None], settings: Settings, steps: int | None = None) -> float:
    """Images/s of ``step`` (one batch): the median of up to three timed windows after the warm-up steps.

    Times ``steps`` (default settings.steps) steps, fewer when the last warm-up step says they would take
    longer than settings.row_seconds, and at least one.
    """
    steps = steps or settings.steps
    step_seconds = 0.0
    for _ in range(settings.warmup):
        started = time.perf_counter()
        step()
        synchronize(settings.device)
        step_seconds = time.perf_counter() - started
    if step_seconds and settings.row_seconds is not None:
        steps = max(1, min(steps, int(settings.row_seconds / step_seconds)))
    windows = min(3, steps)
    rates = []
    for i in range(windows):
        n = steps // windows + (i < steps % windows)
        started = time.perf_counter()
        for _ in range(n):
            step()
        synchronize(settings.device)
        rates.append(n * BATCH / (time.perf_counter() - started))
    return statistics.median(rates)


def make_model(filters: int, device: torch.device, channels_last: bool = False) -> UPANets:
    torch.manual_seed(0)
    model = UPANets(filters, NUM_CLASSES, 1, IMG).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def make_batch(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised float batch, as the baseline's DataLoader hands it over, and its labels."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(BATCH, 3, IMG, IMG, generator=generator).to(device)
    labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator).to(device)
    return inputs, labels


def weights_note(model: nn.Module) -> str:
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    return "" if finite else "weights went non-finite during timing"


# ----------------------------------------------------------------------------- numerics


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """TF32 off on CUDA inside the block, so that fp32 results compare to 1e-4."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def max_logit_difference(model: UPANets, inputs: torch.Tensor) -> float:
    """Largest |ours - baseline| logit over eval and train mode (the train forward uses batch statistics)."""
    differences = []
    with exact_fp32(), torch.no_grad():
        for train in (False, True):
            model.train(train)
            ours = model(inputs)
            with original_computation():
                baseline = model(inputs)
            differences.append((ours - baseline).abs().max().item())
    return max(differences)


def check_numerics(settings: Settings) -> list[str]:
    """One line per check: the baseline computation against ours, and against the original code's logits."""
    lines = []
    for filters in settings.models:
        try:
            inputs = torch.randn(8, 3, IMG, IMG, generator=torch.Generator().manual_seed(1)).to(settings.device)
            diff = max_logit_difference(make_model(filters, settings.device), inputs)
            verdict = "OK" if diff <= NUMERICS_TOLERANCE else "MISMATCH"
            lines.append(f"UPANets{filters}, baseline vs ours, fp32 eval + train logits: "
                         f"max |diff| {diff:.1e} (tolerance {NUMERICS_TOLERANCE:.0e}) {verdict}")
        except Exception as e:  # reported, never fatal
            lines.append(f"UPANets{filters}, baseline vs ours: check failed ({errors.one_line(e)[:300]})")
    if ORIGINAL_LOGITS_FILE.is_file():
        lines.append(check_against_original_logits(settings.device))
    return lines


def check_against_original_logits(device: torch.device) -> str:
    """The baseline on the weights and input saved with the original code's logits (tests/data/)."""
    try:
        reference = torch.load(ORIGINAL_LOGITS_FILE, map_location="cpu", weights_only=True)
        a = reference["args"]
        model = UPANets(a["filters"], a["num_classes"], a["blocks"], a["img"])
        model.load_state_dict(reference["state_dict"])
        model.to(device)
        diffs = []
        with exact_fp32(), torch.no_grad(), original_computation():
            for train, key in ((False, "logits_eval"), (True, "logits_train")):
                logits = model.train(train)(reference["input"].to(device)).cpu()
                diffs.append((logits - reference[key]).abs().max().item())
        verdict = "OK" if max(diffs) <= NUMERICS_TOLERANCE else "MISMATCH"
        return (f"UPANets{a['filters']}, baseline vs the original code's saved logits "
                f"({ORIGINAL_LOGITS_FILE.relative_to(REPO)}): max |diff| {max(diffs):.1e} {verdict}")
    except Exception as e:  # reported, never fatal
        return f"baseline vs the original code's saved logits: check failed ({errors.one_line(e)[:300]})"


# ----------------------------------------------------------------------------- 1. train step


@functools.cache
def train_flops_per_image(filters: int) -> float:
    """FLOPs of forward + backward for one training image (a multiply-add counts 2), counted on the CPU."""
    model = make_model(filters, torch.device("cpu"))
    inputs, labels = make_batch(torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with counter:
        nn.functional.cross_entropy(model(inputs[:2]), labels[:2]).backward()
    flops = counter.get_total_flops() / 2
    log(f"UPANets{filters}: {flops / 1e9:.3f} GFLOP per training image (forward + backward)")
    return flops


def peak_bf16_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def baseline_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                        labels: torch.Tensor) -> Callable[[], None]:
    """The original loop body: fp32, and two host syncs per step for the running loss and accuracy."""
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        loss.item()
        outputs.max(1)[1].eq(labels).sum().item()

    return step


def measure_train(filters: int, variant: Variant, settings: Settings) -> Measured:
    device = settings.device
    model = make_model(filters, device, variant.channels_last)
    if variant.baseline:
        inputs, labels = make_batch(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        with original_computation():
            rate = throughput(baseline_train_step(model, optimizer, inputs, labels), settings)
    else:  # main.py's train step (engine.train_step) on a fixed batch, augmented on the device as main.py does
        step = tuning.probe_step(model, variant.amp, variant.channels_last, device, BATCH, train=True,
                                 compile=variant.compile)
        if variant.compile:  # the first call compiles (and captures CUDA graphs): timed on its own
            started = time.perf_counter()
            step()
            synchronize(device)
            first_step = time.perf_counter() - started
        rate = throughput(step, settings)
    tflops = train_flops_per_image(filters) * rate / 1e12
    peak = peak_bf16_tflops(device)
    compile_seconds = first_step - BATCH / rate if variant.compile else None
    notes = [f"{tflops:.3g} TFLOP/s" + (f" ({100 * tflops / peak:.1f}% of bf16 peak)" if peak else ""),
             f"compiling took {compile_seconds:.0f} s" if variant.compile else "",
             weights_note(model) if variant.baseline else ""]
    return Measured(rate, "; ".join(n for n in notes if n), tflops=tflops, compile_seconds=compile_seconds)


def main_default_variant(label: str, filters: int, settings: Settings, compile: bool = False) -> Variant:
    """``label``, run with the precision and layout that main.py's defaults (--amp auto, --channels-last unset)
    choose on this machine: measured by tuning.choose, or read from its cache, as main.py would."""
    choice = tuning.choose(make_model(filters, torch.device("cpu")), amp_flag="auto", channels_last_flag=None,
                           device=settings.device, batch_size=BATCH, train=True,
                           context=distributed.DistributedContext())
    source = {"measured": "measured now", "cache": "cached"}.get(choice.source, choice.source)
    return Variant(f"{label} ({choice.label}; {source})", amp=choice.amp, channels_last=choice.channels_last,
                   compile=compile)


def train_variants(filters: int, settings: Settings) -> list[Variant]:
    variants = [
        Variant("baseline: original recipe (fp32, NCHW, per-step .item())", baseline=True),
        Variant("ours fp32"),
        Variant("ours fp32 + channels_last", channels_last=True),
        Variant("ours bf16 autocast", amp="bf16"),
        Variant("ours bf16 + channels_last", amp="bf16", channels_last=True),
    ]
    if settings.compile:
        variants.append(main_default_variant("ours as main.py --compile runs here (the compiling first step "
                                             "timed apart)", filters, settings, compile=True))
    return variants


def train_rows(filters: int, settings: Settings) -> list[Result]:
    group = f"UPANets{filters}"
    return [run_guarded("train", group, v.name, lambda v=v: measure_train(filters, v, settings),
                        settings, v.baseline) for v in train_variants(filters, settings)]


# ----------------------------------------------------------------------------- 2. eval


def baseline_eval_step(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """The original test loop body: no_grad, fp32, host syncs for the running loss and accuracy."""
    def step() -> None:
        with torch.no_grad():
            outputs = model(inputs)
            nn.functional.cross_entropy(outputs, labels).item()
            outputs.max(1)[1].eq(labels).sum().item()

    return step


def measure_eval(filters: int, variant: Variant, settings: Settings) -> Measured:
    device = settings.device
    model = make_model(filters, device, variant.channels_last).eval()
    steps = 2 * settings.steps
    if variant.baseline:
        inputs, labels = make_batch(device)
        with original_computation():
            return Measured(throughput(baseline_eval_step(model, inputs, labels), settings, steps))
    step = tuning.probe_step(model, variant.amp, variant.channels_last, device, BATCH, train=False)
    return Measured(throughput(step, settings, steps))


def eval_rows(filters: int, settings: Settings) -> list[Result]:
    """Baseline; ours in fp32 (main.py's default evaluation, in either layout training may have chosen); ours in
    bf16 + channels_last (--eval-amp bf16, or train where training chose it)."""
    variants = [Variant("baseline: original (fp32, no_grad, per-batch .item())", baseline=True),
                Variant("ours fp32 (main.py's default evaluation)"),
                Variant("ours fp32 + channels_last (the default evaluation of a channels_last run)",
                        channels_last=True),
                Variant("ours bf16 + channels_last (--eval-amp bf16)", amp="bf16", channels_last=True)]
    group = f"UPANets{filters}"
    return [run_guarded("eval", group, v.name, lambda v=v: measure_eval(filters, v, settings), settings,
                        v.baseline) for v in variants]


# ----------------------------------------------------------------------------- 3. data pipeline


def random_cifar(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 3, 32, 32) random images and int64 labels."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, IMG, IMG), dtype=np.uint8), rng.integers(0, NUM_CLASSES, n).astype(np.int64)


def measure_pil_pipeline(images: np.ndarray, labels: np.ndarray, workers: int,
                         device: torch.device) -> Measured:
    """The original input pipeline: PIL transforms per image in a DataLoader, batches copied to the device."""
    dataset = PilImages(images.transpose(0, 2, 3, 1), labels.tolist(), train_transform())
    return Measured(dataloader_rate(dataset, workers, device))


def dataloader_rate(dataset: torch.utils.data.Dataset, workers: int, device: torch.device) -> float:
    """Images/s of one shuffled epoch of ``dataset`` through a DataLoader, its batches copied to ``device``."""
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers)
    started = time.perf_counter()
    for batch, targets in loader:
        batch.to(device)
        targets.to(device)
    synchronize(device)
    return len(dataset) / (time.perf_counter() - started)


def device_epoch_rate(images: np.ndarray, labels: np.ndarray, device: torch.device, **options: Any) -> float:
    """Images/s of loading.DeviceLoader + augment.DeviceTransform(pad=4, flip=True, **options), as main.py
    trains; the second of two epochs is timed."""
    dataset = decoding.ImageDataset(torch.from_numpy(images), torch.from_numpy(labels))
    loader = loading.DeviceLoader(dataset, BATCH, shuffle=True, device=device)
    transform = augment.DeviceTransform(*catalog.ORIGINAL_CIFAR_NORMALIZATION, device=device, pad=4, flip=True,
                                        **options)
    for epoch in range(2):
        loader.set_epoch(epoch)
        transform.set_epoch(epoch)
        started = time.perf_counter()
        for batch, _ in loader:
            transform(batch)
        synchronize(device)
    return len(dataset) / (time.perf_counter() - started)


def measure_device_pipeline(images: np.ndarray, labels: np.ndarray, device: torch.device) -> Measured:
    return Measured(device_epoch_rate(images, labels, device), f"on {device.type}")


def data_rows(settings: Settings) -> list[Result]:
    images, labels = random_cifar(settings.pipeline_images)
    group = f"{settings.pipeline_images:,} images"
    device = settings.device
    return [
        run_guarded("data", group, "baseline: torchvision PIL transforms, DataLoader num_workers=0",
                    lambda: measure_pil_pipeline(images, labels, 0, device), settings, baseline=True),
        run_guarded("data", group, "torchvision PIL transforms, DataLoader num_workers=2",
                    lambda: measure_pil_pipeline(images, labels, 2, device), settings),
        run_guarded("data", group, "ours: loading.DeviceLoader + augment.DeviceTransform",
                    lambda: measure_device_pipeline(images, labels, device), settings),
    ]


# ----------------------------------------------------------------------------- 4. recipe augmentation


class TorchvisionImages(torch.utils.data.Dataset):
    """uint8 CHW images through a torchvision v2 transform one at a time, as a DataLoader's workers run it."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.images, self.labels, self.transform = torch.from_numpy(images), torch.from_numpy(labels), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.labels[i]


def torchvision_recipe_transform() -> Callable[[torch.Tensor], torch.Tensor]:
    """torchvision's reference recipe for one image, on a uint8 tensor: the augmentation main.py runs batched."""
    from torchvision.transforms import v2

    mean, std = catalog.ORIGINAL_CIFAR_NORMALIZATION
    return v2.Compose([v2.RandomCrop(IMG, padding=4), v2.RandomHorizontalFlip(), v2.TrivialAugmentWide(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std), v2.RandomErasing(0.1)])


def measure_torchvision_recipe(images: np.ndarray, labels: np.ndarray, workers: int, device: torch.device) -> Measured:
    dataset = TorchvisionImages(images, labels, torchvision_recipe_transform())
    return Measured(dataloader_rate(dataset, workers, device), f"{workers} DataLoader workers")


def measure_device_recipe(images: np.ndarray, labels: np.ndarray, device: torch.device) -> Measured:
    """main.py's --auto-augment ta_wide --random-erase 0.1 on DeviceLoader batches."""
    rate = device_epoch_rate(images, labels, device, auto_augment=augment_ops.AutoAugment("ta_wide"),
                             random_erase=0.1)
    return Measured(rate, f"on {device.type}, {torch.get_num_threads()} threads" if device.type == "cpu"
                    else "on cuda")


def augment_rows(settings: Settings) -> list[Result]:
    images, labels = random_cifar(settings.pipeline_images)
    group = f"{settings.pipeline_images:,} images"
    return [
        run_guarded("augment", group, "baseline: torchvision v2 per image, DataLoader num_workers=2",
                    lambda: measure_torchvision_recipe(images, labels, 2, settings.device), settings, baseline=True),
        run_guarded("augment", group, "ours: augment.DeviceTransform (augment_ops), batched, per image",
                    lambda: measure_device_recipe(images, labels, settings.device), settings),
    ]


# ----------------------------------------------------------------------------- 5. epoch


def run_process(command: list[str], settings: Settings) -> float:
    """Run ``command`` from the repo root; returns its wall seconds or raises with its last error line.

    It gets settings.epoch_timeout seconds, or what is left before the --time-limit deadline if less.
    """
    timeout = max(1.0, min(settings.epoch_timeout, settings.seconds_left()))
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:.0f} s") from None
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"exit {proc.returncode}: {last}")
    return wall


def epochs(settings: Settings) -> int:
    return 2 if settings.device.type == "cuda" else 1


def last_epoch(results: Path, wall: float) -> Measured:
    """The process's wall time, and its last epoch's time and training rate from the metrics.jsonl it wrote."""
    with open(results / "metrics.jsonl") as f:
        row = json.loads(f.read().splitlines()[-1])
    return Measured(wall, f"train {row['train_images_per_second']:,.0f} img/s", row["epoch_seconds"])


def measure_main_epoch(filters: int, data_dir: Path, settings: Settings, extra: tuple[str, ...] = ()) -> Measured:
    """A main.py process's wall time and last epoch; the notes say the precision and layout it trained with."""
    with tempfile.TemporaryDirectory(prefix="upanets-bench-") as tmp:
        wall = run_process([sys.executable, "main.py", "--data-dir", str(data_dir),
                            "--epochs", str(epochs(settings)), "--no-progress", "--filters", str(filters),
                            "--device", settings.device.type, "--run-name", "bench",
                            "--checkpoint-dir", f"{tmp}/checkpoint", "--save-path", f"{tmp}/results",
                            *extra], settings)
        results = Path(tmp) / "results" / "bench"
        measured = last_epoch(results, wall)
        choice = json.loads((results / "args.json").read_text())["speed_choice"]  # tuning.SpeedChoice.to_dict
    how = {"measured": "measured now", "cache": "cache warm", "flags": "set by flags"}
    used = f"{tuning.label(choice['amp'], choice['channels_last'])}, {how.get(choice['source'], choice['source'])}"
    return dataclasses.replace(measured, notes=f"{used}; {measured.notes}")


def measure_baseline_epoch(filters: int, data_dir: Path, settings: Settings) -> Measured:
    with tempfile.TemporaryDirectory(prefix="upanets-baseline-") as tmp:
        wall = run_process([sys.executable, "benchmarks/baseline_train.py", "--data-dir", str(data_dir),
                            "--epochs", str(epochs(settings)), "--filters", str(filters),
                            "--device", settings.device.type, "--save-path", tmp], settings)
        return last_epoch(Path(tmp), wall)


def epoch_variants(filters: int, data_dir: Path, settings: Settings) -> list[tuple[str, Callable[[], Measured], bool]]:
    """(name, measurement, is baseline) of every epoch row: the baseline, main.py's defaults, main.py with each
    precision and layout given explicitly, so that the defaults' choice can be judged, and the recipes and
    evaluation options (--recipe modern and fast, test-time augmentation, evaluation in training's precision)."""
    device = settings.device.type
    variants = [
        ("baseline: benchmarks/baseline_train.py (fp32, PIL, num_workers=0)",
         lambda: measure_baseline_epoch(filters, data_dir, settings), True),
        (DEFAULTS_LABEL, lambda: measure_main_epoch(filters, data_dir, settings), False),
    ]
    for amp, channels_last in tuning.candidates("auto", None, settings.device):
        flags = ("--amp", "off" if amp == "fp32" else amp, "--channels-last" if channels_last else "--no-channels-last")
        variants.append((f"ours: main.py {' '.join(flags)}",
                         lambda flags=flags: measure_main_epoch(filters, data_dir, settings, flags), False))
    for flags in (("--recipe", "modern"), ("--recipe", "fast"), ("--tta", "flip-translate"), ("--eval-amp", "train")):
        variants.append((f"ours: main.py {' '.join(flags)} (the precision and layout measured)",
                         lambda flags=flags: measure_main_epoch(filters, data_dir, settings, flags), False))
    if settings.compile:
        variants.append((f"ours: main.py --compile (device {device})",
                         lambda: measure_main_epoch(filters, data_dir, settings, ("--compile",)), False))
    return variants


def median_result(runs: list[Result]) -> Result:
    """One row from repeated runs of a variant: the median wall time and epoch time of those that finished."""
    done = [r for r in runs if not r.error]
    if not done:
        return runs[0]
    median = sorted(done, key=lambda r: r.value)[(len(done) - 1) // 2]
    epoch_seconds = statistics.median(r.epoch_seconds for r in done)
    notes = median.notes + (f"; median of {len(done)} runs" if len(runs) > 1 else "")
    return dataclasses.replace(median, epoch_seconds=epoch_seconds, notes=notes)


def epoch_rows(settings: Settings) -> list[Result]:
    n_train, n_test = settings.epoch_sizes
    results = []
    with tempfile.TemporaryDirectory(prefix="upanets-cifar-") as tmp:
        data_dir = Path(tmp)
        make_cifar10(data_dir, n_train, n_test)  # Python 2 pickles, as the official files
        for filters in settings.models:
            group = f"UPANets{filters}, {n_train:,}/{n_test:,} images"
            variants = epoch_variants(filters, data_dir, settings)
            # An untimed first run with the defaults measures the speed options (or finds them in the cache),
            # as a first run on a machine does: the timed rows are second runs.
            run_guarded("epoch", group, f"{DEFAULTS_LABEL}, first run (untimed)",
                        lambda f=filters: measure_main_epoch(f, data_dir, settings), settings)
            runs: dict[str, list[Result]] = {name: [] for name, _, _ in variants}
            for _ in range(settings.epoch_repeats):  # interleaved: a slow spell of the machine hits every row alike
                for name, measure, baseline in variants:
                    runs[name].append(run_guarded("epoch", group, name, measure, settings, baseline))
            results += [median_result(rows) for rows in runs.values()]
    return results


# ----------------------------------------------------------------------------- report


def machine_info(device: torch.device) -> dict[str, str]:
    cpu = tuning.device_name(torch.device("cpu"))
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line.split(":", 1)[1].split() for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = []
    # For the record only: which precision wins is measured, not inferred from these.
    cpu += f"; {', '.join(f for f in ('avx512_bf16', 'amx_bf16') if f in flags) or 'no bf16 instructions'}"
    info = {
        "CPU": f"{cpu}; {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "torch": f"{torch.__version__} (torchvision {torchvision.__version__})",
    }
    if device.type == "cuda":
        info["GPU"] = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
        peak = peak_bf16_tflops(device)
        info["assumed dense bf16 peak"] = f"{peak:.0f} TFLOP/s" if peak else "unknown for this GPU"
    info["device"] = str(device)
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info["load average at start"] = load_average()
    return info


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


class OtherLoad:
    """How many cores other processes kept busy, on average, since this object was made (Linux only).

    The machine's busy time from /proc/stat (steal included) less this process's and its children's CPU time.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        """(wall, machine busy, own) seconds, or None without /proc/stat."""
        try:
            with open("/proc/stat") as f:
                ticks = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
        own = os.times()
        return (time.perf_counter(), (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"),
                own.user + own.system + own.children_user + own.children_system)

    def cores(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        wall, busy, own = (b - a for a, b in zip(self.start, end))
        return max(0.0, busy - own) / wall


def format_value(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def speedup(value: float | None, base: float | None, higher_is_better: bool) -> str:
    if not value or not base:
        return ""
    return f"{(value / base if higher_is_better else base / value):.2f}"


def render_section(key: str, results: list[Result]) -> list[str]:
    """A markdown table; epoch tables add the in-process epoch time and its speed-up."""
    title, metric, higher_is_better = SECTIONS[key]
    columns = ["model / data", "variant", metric, "× baseline"]
    if key == "epoch":
        columns += ["last epoch (s)", "× baseline"]
    lines = [f"## {title}", "", "| " + " | ".join(columns + ["notes"]) + " |",
             "|---|---|" + "--:|" * (len(columns) - 2) + "---|"]
    baselines = {r.group: r for r in results if r.baseline and not r.error}
    for r in results:
        base = baselines.get(r.group)
        if r.error:
            state = "skipped" if r.error.startswith("skipped") else "failed"
            cells = [state, ""] + (["", ""] if key == "epoch" else []) + [r.error.replace("|", "/")]
        else:
            cells = [format_value(r.value), speedup(r.value, base and base.value, higher_is_better)]
            if key == "epoch":
                cells += [format_value(r.epoch_seconds), speedup(r.epoch_seconds, base and base.epoch_seconds, False)]
            cells.append(r.notes)
        lines.append("| " + " | ".join([r.group, r.variant, *cells]) + " |")
    return lines + [""]


def run_summary(started: float, other_load: OtherLoad) -> dict[str, str]:
    cores = other_load.cores()
    other = "unknown" if cores is None else f"{cores:.2f} of {os.cpu_count()} cores on average"
    return {"total time": f"{time.perf_counter() - started:.0f} s", "load average at end": load_average(),
            "CPU used by other processes during the run": f"{other} (the numbers hold only when this is near 0)"}


def render(info: dict[str, str], numerics: list[str], results: list[Result], summary: dict[str, str]) -> str:
    lines = ["# UPANets benchmark", ""] + [f"- {k}: {v}" for k, v in info.items()] + ["", "Numerics:"]
    lines += [f"- {line}" for line in numerics] + [""]
    for key in SECTIONS:
        section = [r for r in results if r.section == key]
        if section:
            lines += render_section(key, section)
    lines += ["Run:"] + [f"- {k}: {v}" for k, v in summary.items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def resolve_settings(args: argparse.Namespace) -> Settings:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    models = args.models or ((16, 64) if cuda else (16,))
    quick = args.quick
    if cuda:
        steps, warmup, row_seconds, epoch_sizes, timeout = (
            (6, 2, 3, (1000, 200), 90) if quick else (30, 5, 5, (10_000, 2_000), 120))
    else:
        steps, warmup, row_seconds, epoch_sizes, timeout = (
            (2, 1, 3, (400, 100), 120) if quick else (10, 2, 20, (2_000, 500), 300))
    if args.steps:  # an explicit step count is timed in full
        steps, row_seconds = args.steps, None
    if args.epoch_timeout is not None:
        timeout = args.epoch_timeout
    return Settings(device=device, models=models, steps=steps, warmup=warmup, row_seconds=row_seconds,
                    pipeline_images=2_000 if quick else 10_000, epoch_sizes=epoch_sizes, epoch_timeout=timeout,
                    epoch_repeats=args.epoch_repeats,
                    compile=args.compile, sections=args.sections,
                    deadline=None if args.time_limit is None else time.perf_counter() + args.time_limit)


def parse_models(value: str) -> tuple[int, ...]:
    try:
        models = tuple(int(m) for m in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 16,64, got {value!r}") from None
    for filters in models:
        try:
            check_config(filters, NUM_CLASSES, 1, IMG)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return models


def positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds > 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return seconds


def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def parse_sections(value: str) -> tuple[str, ...]:
    sections = tuple(value.split(","))
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown)}; choose from {','.join(SECTIONS)}")
    return sections


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--models", default=None, type=parse_models,
                        help="comma-separated base filters, e.g. 16,64 (default: 16 on the CPU, 16,64 on CUDA)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per train/eval row, eval twice as many (default: 10 on the CPU, 30 on "
                        "CUDA, fewer for rows whose steps are slow; given, they are all timed)")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer steps, smaller data sets")
    parser.add_argument("--sections", default=tuple(SECTIONS), type=parse_sections,
                        help=f"comma-separated sections to run (default: all, {','.join(SECTIONS)})")
    parser.add_argument("--epoch-timeout", type=positive_seconds, default=None, metavar="SECONDS",
                        help="time limit of each training process in the epoch rows (default: 300 s on the CPU, "
                        "120 s on CUDA, less with --quick)")
    parser.add_argument("--epoch-repeats", type=positive_int, default=1, metavar="N",
                        help="run each epoch row N times, interleaved, and show the median (default 1)")
    parser.add_argument("--compile", action="store_true",
                        help="add torch.compile rows, as main.py --compile runs, to the train and epoch tables")
    parser.add_argument("--time-limit", type=positive_seconds, default=None, metavar="SECONDS",
                        help="skip the rows that would start after this many seconds, and cut training processes "
                        "short at it (they are reported as skipped or timed out)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    settings = resolve_settings(args)
    started, other_load = time.perf_counter(), OtherLoad()
    if settings.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as both the original and main.py set it
    info = machine_info(settings.device)
    numerics = check_numerics(settings)
    for line in numerics:
        log(line)
    results = []
    for filters in settings.models:
        if "train" in settings.sections:
            results += train_rows(filters, settings)
        if "eval" in settings.sections:
            results += eval_rows(filters, settings)
    if "data" in settings.sections:
        results += data_rows(settings)
    if "augment" in settings.sections:
        results += augment_rows(settings)
    if "epoch" in settings.sections:
        results += epoch_rows(settings)
    summary = run_summary(started, other_load)
    print(render(info, numerics, results, summary))
    if args.json:
        settings_json = {**dataclasses.asdict(settings), "device": str(settings.device), "time_limit": args.time_limit}
        del settings_json["deadline"]
        args.json.write_text(json.dumps({"summary": key_figures(results, settings), "machine": info,
                                         "settings": settings_json, "numerics": numerics,
                                         "results": [dataclasses.asdict(r) for r in results], "run": summary},
                                        indent=2) + "\n")


def key_figures(results: list[Result], settings: Settings) -> dict[str, Any]:
    """The headline numbers of a run: each model's steady-state epoch speed-up (the baseline's last-epoch time
    over main.py's defaults'), UPANets64's best train-step TFLOP/s against the bf16 peak, the compile time."""
    def done(section: str, prefix: str) -> list[Result]:
        return [r for r in results if r.section == section and r.group.startswith(prefix) and not r.error]

    figures: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(settings.device) if settings.device.type == "cuda" else None,
        "torch": torch.__version__,
    }
    for filters in (16, 64):
        rows = done("epoch", f"UPANets{filters},")
        base = next((r for r in rows if r.baseline), None)
        ours = next((r for r in rows if r.variant.startswith(DEFAULTS_LABEL)), None)
        figures[f"upanets{filters}_epoch_speedup"] = (
            base.epoch_seconds / ours.epoch_seconds if base and ours else None)
    tflops = [r.tflops for r in done("train", "UPANets64") if not r.baseline and r.tflops]
    figures["upanets64_tflops"] = max(tflops, default=None)
    figures["bf16_peak_tflops"] = peak_bf16_tflops(settings.device)
    compiles = [r.compile_seconds for r in done("train", "UPANets") if r.compile_seconds is not None]
    figures["compile_seconds"] = max(compiles, default=None)
    return figures


if __name__ == "__main__":
    main()
