"""Results a paper can report: model selection on a held-out validation split, evaluation in fp32 whatever
precision trained, and the same model from the same command whether the data cache was cold or warm."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.upanets import UPANets, load_weights
from upanets_lab.data import augment, sources
from upanets_lab.data.decoding import ImageDataset
from upanets_lab.data.samples import make_image_folder
from upanets_lab.errors import DataError

from helpers import one_line_error, read_metrics, run_main, run_script, tiny_flags

CLASSES = ("ant", "bee", "cow")


def bundle_of(labels: list[int], classes: int) -> sources.DataBundle:
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 8, 8).contiguous()
    split = ImageDataset(images, torch.tensor(labels))
    names = [f"c{i}" for i in range(classes)]
    return sources.DataBundle("folder", split, split, classes, 8, (0.5,) * 3, (0.2,) * 3, 1, names)


# ------------------------------------------------------------------------------------- the split itself


def test_validation_split_is_class_balanced_seeded_and_disjoint():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    bundle = bundle_of(labels, 3)
    train, val, split = sources.split_validation(bundle, 0.1, seed=3)
    held = split.indices
    assert torch.bincount(torch.tensor(labels)[held], minlength=3).tolist() == [5, 3, 2]
    assert len(train.train) == 90 and len(val.test) == 10 and val.test is not bundle.train
    # the held-out images are exactly the validation split, and gone from training
    assert torch.equal(val.test.images[:, 0, 0, 0].long(), held)
    assert not set(train.train.images[:, 0, 0, 0].tolist()) & set(held.tolist())
    assert torch.equal(sources.split_validation(bundle, 10, seed=3)[2].indices, held)  # a count gives the same
    assert not torch.equal(sources.split_validation(bundle, 10, seed=4)[2].indices, held)
    assert split.record() == sources.split_validation(bundle, 10, seed=3)[2].record()
    assert split.record()["images"] == 10 and split.record()["seed"] == 3


def test_largest_remainders_give_the_exact_count():
    labels = [0] * 7 + [1] * 7 + [2] * 7
    _, _, split = sources.split_validation(bundle_of(labels, 3), 4, seed=0)
    counts = torch.bincount(torch.tensor(labels)[split.indices], minlength=3).tolist()
    assert sum(counts) == 4 and sorted(counts) == [1, 1, 2]


@pytest.mark.parametrize("size, message", [
    (100, "--val-split 100 holds out 100 of the 100 training images; it must leave some"),
    (0.001, "--val-split 0.001 holds out 0 of the 100 training images"),
    (2.5, "--val-split 2.5 must be a whole number of images, or a fraction below 1"),
    (0.9, "--val-split 0.9 would leave class c2 without training images (it has 2)"),
])
def test_bad_validation_splits_are_refused(size, message):
    bundle = bundle_of([0] * 60 + [1] * 38 + [2] * 2, 3)
    with pytest.raises(DataError, match=re.escape(message)):
        sources.split_validation(bundle, size, seed=0)


# ----------------------------------------------------------------------------- a run with a validation split


@pytest.fixture(scope="module")
def split_run(tmp_path_factory):
    """UPANets4 on 3 classes x 12 images (6 held out), 3 epochs, trained in bf16 + channels_last."""
    root = tmp_path_factory.mktemp("split_run")
    fake = make_image_folder(root / "data", classes=CLASSES, per_class=12, val_per_class=5, size=16, seed=2)
    flags = ["--dataset", "folder", "--data-dir", root / "data", "--img-size", "16", "--val-split", "6",
             *tiny_flags(root, epochs=3, amp="bf16", run_name="split"), "--channels-last"]
    result = run_main(flags, cwd=root)
    assert result.returncode == 0, result
    return root, fake, result, flags


@torch.inference_mode()
def fp32_logits(checkpoint: Path, images: np.ndarray, mean, std) -> torch.Tensor:
    model = UPANets(4, 3, 1, 16)
    load_weights(model, torch.load(checkpoint, weights_only=True)["model"])
    return model.eval()(augment.normalize(torch.from_numpy(np.ascontiguousarray(images)), mean, std))


def test_best_pth_is_chosen_on_the_validation_split(split_run):
    root, _, result, _ = split_run
    assert "data: folder, 30 train (6 held out for validation) / 15 test images" in result.stdout
    rows = read_metrics(root / "results" / "split" / "metrics.jsonl")
    best_so_far = -1.0
    for row in rows:
        new_best = row["val_acc"] > best_so_far
        best_so_far = max(best_so_far, row["val_acc"])
        assert row["best_acc"] == best_so_far and (row["test_acc"] is not None) == new_best
    chosen = max(rows, key=lambda row: (row["val_acc"], -row["epoch"]))
    best = torch.load(root / "checkpoint" / "split" / "best.pth", weights_only=True)
    assert best["epoch"] == best["best"]["epoch"] == chosen["epoch"]
    assert best["best"]["test"]["acc1"] == chosen["test_acc"]
    assert (f"done: best validation accuracy {chosen['val_acc']:.2f}% at epoch {chosen['epoch']}; test accuracy "
            f"at the best validation epoch {chosen['test_acc']:.2f}% (epoch {chosen['epoch']})") in result.stdout
    record = json.loads((root / "results" / "split" / "args.json").read_text())["data"]["val_split"]
    assert record["images"] == 6 and record["seed"] == 0 and best["data"]["val_split"] == record


def test_evaluation_is_fp32_whatever_trains_and_predict_agrees_to_the_image(split_run):
    """Trained in bf16: the per-epoch test metrics, --evaluate (even with --amp bf16) and predict.py all give the
    fp32 model's numbers, and predict.py's class for every image is the fp32 logits' argmax."""
    root, fake, _, _ = split_run
    best_path = root / "checkpoint" / "split" / "best.pth"
    saved = torch.load(best_path, weights_only=True)["data"]
    logits = fp32_logits(best_path, fake.test_images, saved["mean"], saved["std"])
    labels = torch.from_numpy(fake.test_labels)
    loss, top1 = F.cross_entropy(logits, labels).item(), 100 * (logits.argmax(1) == labels).double().mean().item()
    row = next(row for row in read_metrics(root / "results" / "split" / "metrics.jsonl")
               if row["epoch"] == torch.load(best_path, weights_only=True)["epoch"])
    assert row["test_loss"] == pytest.approx(loss, rel=1e-4, abs=1e-6) and row["test_acc"] == pytest.approx(top1)

    evaluated = run_main(["--evaluate", "--weights", best_path, "--data-dir", root / "data", "--amp", "bf16",
                          "--batch-size", "4", "--workers", "0", "--no-progress"], cwd=root)
    assert evaluated.returncode == 0, evaluated
    assert f"test loss {loss:.4f} | top-1 {top1:.2f}% |" in evaluated.stdout
    out = root / "predictions.csv"
    predicted = run_script("predict.py", ["--weights", best_path, root / "data" / "val", "--csv", out,
                                          "--workers", "0", "--no-progress"], cwd=root)
    assert predicted.returncode == 0, predicted
    classes = [line.split(",")[1] for line in out.read_text().splitlines()[1:]]
    assert classes == [CLASSES[i] for i in logits.argmax(1).tolist()]


def test_resuming_with_another_split_is_refused(split_run, tmp_path):
    root, _, _, flags = split_run
    other = [str(flag) for flag in flags]
    other[other.index("--val-split") + 1] = "9"
    error = one_line_error(run_main([*other, "--resume", "auto", "--epochs", "4"], cwd=root))
    assert "was trained with another validation split (6 images, seed 0) than this run's (9 images, seed 0)" in error


def test_a_split_larger_than_the_set_is_one_line(split_run, tmp_path):
    root, _, _, flags = split_run
    other = [str(flag) for flag in flags]
    other[other.index("--val-split") + 1] = "500"
    other[other.index("--run-name") + 1] = "too-big"
    error = one_line_error(run_main(other, cwd=root))
    assert error == "error: --val-split 500 holds out 500 of the 36 training images; it must leave some for " \
                    "training and take at least one"


# ------------------------------------------------------------------------------ the same model every time


def test_cold_and_warm_caches_give_bit_identical_checkpoints(tmp_path):
    """The first run decodes the image folder into its cache (through DataLoader workers), the second reads the
    cache: both end with the same weights, since nothing that runs only sometimes draws from the generators."""
    make_image_folder(tmp_path / "data", classes=CLASSES, per_class=6, val_per_class=2, size=12, seed=4)
    caches = lambda: sorted((tmp_path / "data").glob(".upanets_cache_*"))  # noqa: E731
    assert caches() == []
    for name in ("cold", "warm"):
        result = run_main(["--dataset", "folder", "--data-dir", tmp_path / "data", "--img-size", "16",
                           *tiny_flags(tmp_path, run_name=name, workers=1)], cwd=tmp_path)
        assert result.returncode == 0, result
        assert len(caches()) == 2
    cold, warm = (torch.load(tmp_path / "checkpoint" / name / "last.pth", weights_only=True)["model"]
                  for name in ("cold", "warm"))
    assert all(torch.equal(cold[key], warm[key]) for key in cold)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_an_eval_precision_the_cpu_lacks_is_refused_by_its_own_name(split_run, tmp_path):
    """--eval-amp fp16 on the CPU fails before any work, naming --eval-amp (not --amp), in every script."""
    root, _, _, flags = split_run
    best = root / "checkpoint" / "split" / "best.pth"
    expected = "error: --eval-amp fp16 needs a CUDA GPU; on the CPU use --eval-amp bf16 or off"
    other = [str(flag) for flag in flags]
    other[other.index("--run-name") + 1] = "fp16-eval"
    for result in (run_main([*other, "--eval-amp", "fp16"], cwd=root),
                   run_main(["--evaluate", "--weights", best, "--data-dir", root / "data", "--eval-amp", "fp16",
                             "--device", "cpu"], cwd=root),
                   run_script("predict.py", ["--weights", best, root / "data" / "val", "--eval-amp", "fp16",
                                             "--device", "cpu"], cwd=root),
                   run_script("landscape.py", ["--weights", best, "--data-dir", root / "data", "--eval-amp", "fp16",
                                               "--device", "cpu", "--out", tmp_path / "ls"], cwd=root)):
        assert one_line_error(result) == expected
    assert not (root / "checkpoint" / "fp16-eval").exists() and not (tmp_path / "ls" / "landscape.csv").exists()
