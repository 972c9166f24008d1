"""End-to-end tests of the training CLI: `python main.py ...` on tiny data sets in every real on-disk format.

Each run is a subprocess (see helpers.py) with --filters 4 and a few dozen images, so a run takes seconds.
Beyond exit codes, the tests check every file a run writes and recompute its test metrics in-process from the
checkpoint and the generated images, which proves the CLI read the right pixels and labels.
"""
from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models.upanets import UPANets, load_weights
from upanets_lab.data import augment, catalog, sources
from upanets_lab.data.samples import (
    digits,
    make_cifar10,
    make_cifar100,
    make_image_folder,
    make_tiny_imagenet,
    write_image_folder,
)
from upanets_lab.training import logs, tuning

from helpers import ORIGINAL_CKPT, read_metrics, run_main, state_dict_of, tiny_flags

METRIC_FIELDS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "best_acc", "lr", "epoch_seconds",
                 "train_images_per_second"]
TIMING_FIELDS = ("epoch_seconds", "train_images_per_second")
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


# ------------------------------------------------------------------------------------------- helpers


def assert_success(result):
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr, result.stderr
    assert "error" not in result.stderr.lower(), result.stderr


def startup_line(stdout: str, prefix: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, stdout
    return lines[0]


def check_startup(stdout: str, *, dataset: str, n_train: int, n_test: int, classes: int, img: int, filters: int = 4):
    """The 'data:' and 'model:' lines: exact counts, the exact parameter count and a GFLOPs figure."""
    assert startup_line(stdout, "data:") == (f"data: {dataset}, {n_train} train / {n_test} test images, "
                                             f"{classes} classes, {img}x{img}")
    params = sum(p.numel() for p in UPANets(filters, classes, 1, img).parameters())
    model = startup_line(stdout, "model:")
    assert f"UPANets{filters} (blocks=1), {params:,} parameters" in model, model
    gflops = float(re.search(r", ([0-9.]+) GFLOPs per image$", model).group(1))
    assert gflops > 0


def check_speed_choice(stdout: str, checkpoint: Path) -> None:
    """--amp off with --channels-last unset: both layouts timed, the one they choose used, printed and saved."""
    speed = startup_line(stdout, "speed:")
    choice = load_ckpt(checkpoint)["speed_choice"]
    rates = choice["rates"]
    assert set(rates) == {"fp32", "fp32 + channels_last"} and all(rate > 0 for rate in rates.values())
    assert choice["amp"] == "fp32" and choice["source"] == "measured"
    winner = tuning.preferred(rates)
    assert choice["channels_last"] == (winner == "fp32 + channels_last")
    assert speed.startswith(f"speed: {winner} (measured now; images/s: ")
    assert f"(amp=fp32, channels_last={choice['channels_last']}, " in startup_line(stdout, "training ")


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and Python values only


def check_run_outputs(tmp_path: Path, run: str, *, epochs: int, lr: float, classes: int, img: int,
                      filters: int = 4) -> list[dict]:
    """Every file a finished run writes, checked for format and consistency; returns the metrics rows."""
    ckpt_dir, res_dir = tmp_path / "checkpoint" / run, tmp_path / "results" / run
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best.pth", "last.pth"]  # no temp files left behind
    assert sorted(p.name for p in res_dir.iterdir()) == ["args.json", "curves.png", "metrics.csv", "metrics.jsonl"]

    rows = read_metrics(res_dir / "metrics.jsonl")
    assert [list(row) for row in rows] == [METRIC_FIELDS] * epochs
    assert [row["epoch"] for row in rows] == list(range(1, epochs + 1))
    for i, row in enumerate(rows):
        assert 0 <= row["train_acc"] <= 100 and 0 <= row["test_acc"] <= 100
        assert row["best_acc"] == max(r["test_acc"] for r in rows[:i + 1])
        assert math.isfinite(row["train_loss"]) and math.isfinite(row["test_loss"]) and row["train_loss"] > 0
        assert row["epoch_seconds"] > 0 and row["train_images_per_second"] > 0
        assert row["lr"] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * i / epochs)), rel=1e-12)
    assert rows[0]["lr"] == lr

    with open(res_dir / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == METRIC_FIELDS
        assert [{k: float(v) for k, v in row.items()} for row in reader] == rows

    png = (res_dir / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(res_dir / "curves.png") as im:
        im.verify()

    args = json.loads((res_dir / "args.json").read_text())
    metadata = {key: args.pop(key) for key in logs.METADATA_KEYS}  # beside the flags, as in checkpoints
    command, status = args.pop("command"), args.pop("status")  # args.json's own: every start's command line
    assert len(command) == 1 and "main.py" in command[0] and status["state"] == "done"
    assert metadata["job"] is None  # names torchrun jobs only
    assert (args["epochs"], args["lr"], args["filters"], args["run_name"]) == (epochs, lr, filters, run)
    assert metadata["model_config"] == {"filters": filters, "num_classes": classes, "blocks": 1, "img": img,
                                        "head": "exc"}
    assert len(metadata["data"]["classes"]) == classes and len(metadata["data"]["mean"]) == 3

    last, best = load_ckpt(ckpt_dir / "last.pth"), load_ckpt(ckpt_dir / "best.pth")
    best_epoch = 1 + max(range(epochs), key=lambda i: (rows[i]["test_acc"], -i))  # the first epoch at the best
    for ckpt, epoch in ((last, epochs), (best, best_epoch)):
        assert {"model", "optimizer", "scheduler", "scaler", "epoch", "best_acc", "args", "rng"} <= set(ckpt)
        assert ckpt["epoch"] == epoch and ckpt["best_acc"] == rows[epoch - 1]["best_acc"]
        assert ckpt["epoch_state"] is None  # a finished epoch, not a mid-epoch stop
        assert type(ckpt["args"]) is dict and ckpt["args"] == {**args, "epochs": epochs}
        assert {key: ckpt[key] for key in metadata} == metadata
        assert set(ckpt["rng"]) >= {"python", "numpy", "torch"}
        keys = list(ckpt["model"])
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in keys)
        model = UPANets(filters, classes, 1, img)
        model.load_state_dict(ckpt["model"])  # strict: exactly this architecture
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    return rows


@torch.inference_mode()
def recompute_test_metrics(checkpoint: Path | dict, images: np.ndarray, labels: np.ndarray, mean, std,
                           *, filters: int, classes: int, img: int) -> dict[str, float]:
    """Loss / top-1 / top-5 (percent) of a checkpoint on the given uint8 (N, 3, H, W) test images, in-process."""
    model = UPANets(filters, classes, 1, img)
    load_weights(model, state_dict_of(checkpoint))
    model.eval()
    x = augment.normalize(torch.from_numpy(np.ascontiguousarray(images)), mean, std)
    y = torch.from_numpy(np.asarray(labels)).long()
    logits = model(x)
    top5 = logits.topk(min(5, classes), dim=1).indices
    return {"loss": F.cross_entropy(logits, y).item(),
            "acc1": 100 * (top5[:, 0] == y).double().mean().item(),
            "acc5": 100 * (top5 == y[:, None]).any(1).double().mean().item()}


def check_test_metrics_match(tmp_path: Path, run: str, rows: list[dict], fake, mean, std, *, classes, img):
    """The run's last test loss/accuracy equal what its last.pth gives on exactly the generated test set."""
    expected = recompute_test_metrics(tmp_path / "checkpoint" / run / "last.pth", fake.test_images, fake.test_labels,
                                      mean, std, filters=4, classes=classes, img=img)
    assert rows[-1]["test_loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert rows[-1]["test_acc"] == pytest.approx(expected["acc1"], abs=1e-9)
    saved = load_ckpt(tmp_path / "checkpoint" / run / "last.pth")["data"]  # what inference will normalise with
    assert saved["mean"] == pytest.approx(list(mean), abs=1e-12) and saved["std"] == pytest.approx(list(std), abs=1e-12)
    if hasattr(fake, "classes"):
        assert saved["classes"] == list(fake.classes)


# ------------------------------------------------------------------------------ a shared reference run


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """CIFAR-10 (Python 2 str-key pickles), 40 train / 20 test, 2 epochs at --lr 0.05, seed 0."""
    root = tmp_path_factory.mktemp("cifar_run")
    fake = make_cifar10(root / "data", n_train=40, n_test=20, py2_str_keys=True)
    # A speed cache of its own: check_speed_choice expects this run to measure, whichever tests ran before.
    result = run_main(["--dataset", "cifar10", "--data-dir", root / "data", "--no-download", "--lr", "0.05",
                       "--seed", "0", *tiny_flags(root, epochs=2)], cwd=root,
                      env={"XDG_CACHE_HOME": str(root / "cache")})
    return root, fake, result


def test_cifar10_python2_pickles_end_to_end(cifar_run):
    root, fake, result = cifar_run
    assert_success(result)
    check_startup(result.stdout, dataset="cifar10", n_train=40, n_test=20, classes=10, img=32)
    check_speed_choice(result.stdout, root / "checkpoint" / "cifar10-upanets4" / "last.pth")
    rows = check_run_outputs(root, "cifar10-upanets4", epochs=2, lr=0.05, classes=10, img=32)
    check_test_metrics_match(root, "cifar10-upanets4", rows, fake, CIFAR10_MEAN, CIFAR10_STD, classes=10, img=32)
    assert startup_line(result.stdout, "done:") == (
        f"done: best test accuracy {rows[-1]['best_acc']:.2f}%; checkpoints in "
        f"{root / 'checkpoint' / 'cifar10-upanets4'}, metrics in {root / 'results' / 'cifar10-upanets4'}")


def test_lr_flag_and_cosine_schedule(cifar_run):
    root, _, result = cifar_run
    assert_success(result)
    rows = read_metrics(root / "results" / "cifar10-upanets4" / "metrics.jsonl")
    assert [row["lr"] for row in rows] == [0.05, 0.025]  # cosine over 2 epochs: lr, then lr * 0.5
    assert re.search(r"^epoch 1/2 .*\| lr 0\.05 \|", result.stdout, re.M)
    assert re.search(r"^epoch 2/2 .*\| lr 0\.025 \|", result.stdout, re.M)
    last = load_ckpt(root / "checkpoint" / "cifar10-upanets4" / "last.pth")
    groups = last["optimizer"]["param_groups"]
    assert groups and all(g["initial_lr"] == 0.05 and g["lr"] == 0.0 for g in groups)  # annealed to 0 at the end
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 5e-4 for g in groups)
    assert last["scheduler"]["base_lrs"] == [0.05] * len(groups) and last["scheduler"]["last_epoch"] == 2


def test_printed_epoch_lines_are_the_metrics_rows(cifar_run):
    """Each epoch's line says what its metrics row holds, in the row's precision."""
    root, _, result = cifar_run
    rows = read_metrics(root / "results" / "cifar10-upanets4" / "metrics.jsonl")
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert len(lines) == len(rows) == 2
    for line, row in zip(lines, rows):
        assert line.startswith(
            f"epoch {row['epoch']}/2 | train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% | "
            f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.2f}% top-5 "), line
        assert f" | best {row['best_acc']:.2f}% | lr {row['lr']:.4g} | {row['epoch_seconds']:.1f}s, " in line


def test_cifar10_python3_pickles_and_original_flag_spellings(tmp_path, run_cli):
    fake = make_cifar10(tmp_path / "data", n_train=40, n_test=20, py2_str_keys=False)
    flags = tiny_flags(tmp_path, batch_size=None, save_path=None, epochs=2)
    result = run_cli(["--datasets", "cifar_10", "--data_dir", tmp_path / "data", "--no-download",
                      "--batch_size", "16", "--save_path", tmp_path / "results", "--no-channels-last", *flags],
                     cwd=tmp_path)
    assert_success(result)
    check_startup(result.stdout, dataset="cifar10", n_train=40, n_test=20, classes=10, img=32)
    assert "channels_last=False, processes=1, global batch 16)" in startup_line(result.stdout, "training ")
    rows = check_run_outputs(tmp_path, "cifar10-upanets4", epochs=2, lr=0.1, classes=10, img=32)
    check_test_metrics_match(tmp_path, "cifar10-upanets4", rows, fake, CIFAR10_MEAN, CIFAR10_STD, classes=10, img=32)
    args = json.loads((tmp_path / "results" / "cifar10-upanets4" / "args.json").read_text())
    assert (args["dataset"], args["batch_size"], args["save_path"]) == ("cifar10", 16, str(tmp_path / "results"))


def test_cifar100_end_to_end_with_a_final_batch_of_one(tmp_path, run_cli):
    # 17 images in batches of 8 would leave a last batch of 1, which BatchNorm cannot train on.
    fake = make_cifar100(tmp_path / "data", n_train=17, n_test=10, py2_str_keys=True)
    result = run_cli(["--dataset", "cifar_100", "--data-dir", tmp_path / "data", "--no-download",
                      *tiny_flags(tmp_path, epochs=2)], cwd=tmp_path)
    assert_success(result)
    check_startup(result.stdout, dataset="cifar100", n_train=17, n_test=10, classes=100, img=32)
    rows = check_run_outputs(tmp_path, "cifar100-upanets4", epochs=2, lr=0.1, classes=100, img=32)
    check_test_metrics_match(tmp_path, "cifar100-upanets4", rows, fake, (0.5071, 0.4865, 0.4409),
                             (0.2673, 0.2564, 0.2762), classes=100, img=32)
    assert all(row["train_images_per_second"] > 0 for row in rows)
    # every training image was used once per epoch (the batch of 1 was merged into the one before)
    last = load_ckpt(tmp_path / "checkpoint" / "cifar100-upanets4" / "last.pth")
    assert int(last["model"]["bn.num_batches_tracked"]) == 2 * 2  # 2 epochs of batches [8, 9]


def test_tiny_imagenet_end_to_end(tmp_path, run_cli):
    fake = make_tiny_imagenet(tmp_path / "data", n_classes=5, per_class=4, n_val=12, seed=3)
    result = run_cli(["--dataset", "tiny_imgnet", "--data-dir", tmp_path / "data", "--no-download",
                      *tiny_flags(tmp_path)], cwd=tmp_path)
    assert_success(result)
    check_startup(result.stdout, dataset="tiny-imagenet", n_train=20, n_test=12, classes=5, img=64)
    rows = check_run_outputs(tmp_path, "tiny-imagenet-upanets4", epochs=1, lr=0.1, classes=5, img=64)
    # the test loss is computed against the labels in val_annotations.txt, in its order
    check_test_metrics_match(tmp_path, "tiny-imagenet-upanets4", rows, fake, catalog.IMAGENET_MEAN, catalog.IMAGENET_STD,
                             classes=5, img=64)


def test_image_folder_end_to_end(tmp_path, run_cli):
    fake = make_image_folder(tmp_path / "data", classes=("ant", "bee", "cow"), per_class=8, val_per_class=5,
                             size=16, seed=1)
    result = run_cli(["--dataset", "folder", "--data-dir", tmp_path / "data", "--img-size", "16",
                      *tiny_flags(tmp_path, run_name="bugs")], cwd=tmp_path)
    assert_success(result)
    check_startup(result.stdout, dataset="folder", n_train=24, n_test=15, classes=3, img=16)
    rows = check_run_outputs(tmp_path, "bugs", epochs=1, lr=0.1, classes=3, img=16)
    mean, std = sources.channel_stats(torch.from_numpy(fake.train_images))  # measured on the training images
    check_test_metrics_match(tmp_path, "bugs", rows, fake, mean, std, classes=3, img=16)

    # Evaluating needs no more than the file and where the data is: the rest is read from the checkpoint.
    weights = tmp_path / "checkpoint" / "bugs" / "last.pth"
    result = run_cli(["--evaluate", "--weights", weights, "--data-dir", tmp_path / "data", "--workers", "0",
                      "--no-progress"], cwd=tmp_path)
    assert_success(result)
    assert f"from {weights}: --model upanets --dataset folder --filters 4 --blocks 1 --head exc --img-size 16\n" in result.stdout
    _, top1, _, images = _printed_eval(result.stdout, weights)
    assert (top1, images) == (f"{rows[-1]['test_acc']:.2f}", 15)
    # Without --data-dir, from another folder: the data is where the checkpoint says it was trained, said so.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_cli(["--evaluate", "--weights", weights, "--workers", "0", "--no-progress"], cwd=elsewhere)
    assert_success(result)
    assert f" --img-size 16 --data-dir {(tmp_path / 'data').resolve()}\n" in result.stdout
    assert _printed_eval(result.stdout, weights)[1] == top1


def test_synthetic_end_to_end(tmp_path, run_cli):
    result = run_cli(["--dataset", "synthetic", "--img-size", "8", "--seed", "3",
                      *tiny_flags(tmp_path, batch_size=64)], cwd=tmp_path)
    assert_success(result)
    check_startup(result.stdout, dataset="synthetic", n_train=2000, n_test=500, classes=10, img=8)
    rows = check_run_outputs(tmp_path, "synthetic-upanets4", epochs=1, lr=0.1, classes=10, img=8)
    bundle = sources.make_synthetic(3, img_size=8)
    fake = SimpleNamespace(test_images=bundle.test.images.numpy(), test_labels=bundle.test.labels.numpy())
    check_test_metrics_match(tmp_path, "synthetic-upanets4", rows, fake, bundle.mean, bundle.std, classes=10, img=8)


# ------------------------------------------------------------------------------------------- resume


def test_resume_is_exact(cifar_run, tmp_path, run_cli):
    """2 epochs in one go == 1 epoch, then `-r auto --epochs 2`: the same metrics and bit-identical weights."""
    ref_root, _, ref_result = cifar_run
    assert_success(ref_result)
    shutil.copytree(ref_root / "data", tmp_path / "data")
    common = ["--dataset", "cifar10", "--data-dir", tmp_path / "data", "--no-download", "--lr", "0.05",
              "--seed", "0"]
    # The reference run's speed cache: the same layout as the reference, whatever a probe now would time.
    same_choice = {"XDG_CACHE_HOME": str(ref_root / "cache")}
    first = run_cli([*common, *tiny_flags(tmp_path, epochs=1)], cwd=tmp_path, env=same_choice)
    assert_success(first)
    assert "(measured earlier, cached in " in startup_line(first.stdout, "speed:")
    second = run_cli([*common, *tiny_flags(tmp_path, epochs=2), "-r", "auto"], cwd=tmp_path)
    assert_success(second)
    assert f"resumed from {tmp_path / 'checkpoint' / 'cifar10-upanets4' / 'last.pth'} at epoch 2" in second.stdout

    def without_timings(rows):
        return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]

    ref_rows = read_metrics(ref_root / "results" / "cifar10-upanets4" / "metrics.jsonl")
    rows = read_metrics(tmp_path / "results" / "cifar10-upanets4" / "metrics.jsonl")
    assert len(rows) == 2 and without_timings(rows) == without_timings(ref_rows)

    ref = load_ckpt(ref_root / "checkpoint" / "cifar10-upanets4" / "last.pth")
    got = load_ckpt(tmp_path / "checkpoint" / "cifar10-upanets4" / "last.pth")
    assert list(got["model"]) == list(ref["model"])
    for key, tensor in ref["model"].items():
        assert torch.equal(got["model"][key], tensor), key
    for index, state in ref["optimizer"]["state"].items():  # momentum buffers too
        assert torch.equal(got["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"]), index
    assert (got["epoch"], got["best_acc"]) == (ref["epoch"], ref["best_acc"])


# ----------------------------------------------------------------------------------------- evaluate


def _printed_eval(stdout: str, weights: Path) -> tuple[str, str, str, int]:
    """(loss, top-1, top-5) as printed (4 and 2 decimals) and the image count of the 'evaluate' line."""
    line = startup_line(stdout, "evaluate ")
    match = re.fullmatch(rf"evaluate {re.escape(str(weights))}: test loss ([0-9.]+) \| top-1 ([0-9.]+)% \| "
                         r"top-5 ([0-9.]+)% \((\d+) images\)(; the checkpoint recorded [0-9.]+%)?", line)
    assert match, line
    return match.group(1), match.group(2), match.group(3), int(match.group(4))


def test_evaluate_original_checkpoint(tmp_path, run_cli):
    fake = make_cifar10(tmp_path / "data", n_train=5, n_test=30, seed=4)
    # no --dataset or --filters: a 10-class 32x32 UPANets8 of the original code's is taken for CIFAR-10
    result = run_cli(["--evaluate", "--weights", ORIGINAL_CKPT, "--data-dir", tmp_path / "data", "--no-download",
                      "--batch-size", "8", "--workers", "0", "--amp", "off", "--no-progress"], cwd=tmp_path)
    assert_success(result)
    assert f"from {ORIGINAL_CKPT}: --model upanets --dataset cifar10 --filters 8 --blocks 1 --head exc\n" in result.stdout
    loss, top1, top5, images = _printed_eval(result.stdout, ORIGINAL_CKPT)
    # the original code's own CIFAR normalisation, which its checkpoints were trained with
    original_mean, original_std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    expected = recompute_test_metrics(ORIGINAL_CKPT, fake.test_images, fake.test_labels, original_mean, original_std,
                                      filters=8, classes=10, img=32)
    assert "original code's checkpoint: normalising with its CIFAR mean/std" in result.stdout
    assert startup_line(result.stdout, "evaluate ").endswith("; the checkpoint recorded 71.25%")  # its 'acc'
    assert images == 30
    assert float(loss) == pytest.approx(expected["loss"], abs=6e-5)
    assert (top1, top5) == (f"{expected['acc1']:.2f}", f"{expected['acc5']:.2f}")
    assert not (tmp_path / "checkpoint").exists() and not (tmp_path / "results").exists()  # evaluation writes nothing


def test_evaluate_own_checkpoint_matches_its_last_epoch(cifar_run, run_cli):
    root, _, ref_result = cifar_run
    assert_success(ref_result)
    weights = root / "checkpoint" / "cifar10-upanets4" / "last.pth"
    before = weights.read_bytes()
    result = run_cli(["--evaluate", "--weights", weights, "--dataset", "cifar10", "--data-dir", root / "data",
                      "--no-download", "--filters", "4", "--batch-size", "16", "--workers", "0", "--no-progress"],
                     cwd=root)
    assert_success(result)
    loss, top1, _, images = _printed_eval(result.stdout, weights)
    last = read_metrics(root / "results" / "cifar10-upanets4" / "metrics.jsonl")[-1]
    assert images == 20
    assert top1 == f"{last['test_acc']:.2f}"
    assert loss == f"{last['test_loss']:.4f}"
    assert weights.read_bytes() == before


# ------------------------------------------------------------------------------------ it really learns


def test_learns_handwritten_digits(tmp_path, run_cli):
    write_image_folder(tmp_path / "digits", digits(size=16, n_train=1400))  # 1,400 train / 397 val
    result = run_cli(["--dataset", "folder", "--data-dir", tmp_path / "digits", "--img-size", "16",
                      *tiny_flags(tmp_path, epochs=3, batch_size=32, run_name="digits")], cwd=tmp_path)
    assert_success(result)
    check_startup(result.stdout, dataset="folder", n_train=1400, n_test=397, classes=10, img=16)
    rows = check_run_outputs(tmp_path, "digits", epochs=3, lr=0.1, classes=10, img=16)
    # chance is 10%; seeds 0-3 reached 88.7-93.9% after 3 epochs
    assert rows[-1]["test_acc"] > 75
    assert rows[-1]["train_loss"] < 0.6 * rows[0]["train_loss"]


# ------------------------------------------------------------------------------------------ --model


def test_a_registered_model_by_name_trains_records_its_name_and_evaluates_without_flags(tmp_path, run_cli):
    make_cifar10(tmp_path / "data", n_train=16, n_test=4, seed=2)
    data = ["--dataset", "cifar10", "--data-dir", tmp_path / "data", "--no-download", "--no-channels-last"]
    flags = [*data, *tiny_flags(tmp_path, filters=None), "--model", "upanets16", "--head", "last"]
    result = run_cli(flags, cwd=tmp_path)
    assert_success(result)
    assert "model: UPANets16 (blocks=1, head=last), " in result.stdout
    weights = tmp_path / "checkpoint" / "cifar10-upanets16-last" / "last.pth"
    checkpoint = load_ckpt(weights)
    assert checkpoint["model_name"] == "upanets16" and checkpoint["model_config"]["filters"] == 16
    assert checkpoint["data"]["dir"] == str((tmp_path / "data").resolve())

    evaluated = run_cli(["--evaluate", "--weights", weights, "--workers", "0", "--amp", "off", "--no-progress"],
                        cwd=tmp_path)
    assert_success(evaluated)
    assert f"from {weights}: --model upanets16 --dataset cifar10 --blocks 1 --head last --data-dir " in (
        evaluated.stdout)

    refused = run_cli([*flags, "--filters", "32"], cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.strip() == (
        "error: --filters is an option of --model upanets, not of upanets16 (whose options are --blocks, --head)")
