"""predict.py and the inference spec it shares with export.py (trained.inference_spec).

One tiny model is trained with main.py on a generated image folder; its predictions on the val images must give
main.py --evaluate's top-1 accuracy. Fallbacks for older checkpoints and the original code's are checked in-process.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.upanets import UPANets, load_weights
from upanets_lab.checkpoints import save_checkpoint
from upanets_lab.data import augment, catalog
from upanets_lab.data.samples import make_image_folder, make_tiny_imagenet
from upanets_lab.errors import UserError
from upanets_lab.inference.trained import inference_spec

import predict
from helpers import ORIGINAL_CKPT, CliResult, one_line_error, run_main, run_script, tiny_flags

CLASSES = ("ant", "bee", "cow")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """UPANets4 trained for 2 epochs on 3 classes x 8 images of 20x18 pixels, read at 16x16; 5 val images a class."""
    root = tmp_path_factory.mktemp("folder_run")
    fake = make_image_folder(root / "data", classes=CLASSES, per_class=8, val_per_class=5, size=(20, 18), seed=1)
    result = run_main(["--dataset", "folder", "--data-dir", root / "data", "--img-size", "16", "--no-channels-last",
                       *tiny_flags(root, epochs=2)], cwd=root)
    assert result.returncode == 0, result
    return root, fake, root / "checkpoint" / "folder-upanets4" / "best.pth"


def run_predict(capsys, argv: list) -> CliResult:
    """predict.py in-process: (exit code, stdout, stderr)."""
    code = predict.cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return CliResult(code, out, err)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def write_images(folder: Path, n: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    """n random RGB PNGs named 0.png.. in folder; returns their pixels as uint8 (3, H, W)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    for i, array in enumerate(pixels):
        Image.fromarray(array).save(folder / f"{i}.png")
    return [array.transpose(2, 0, 1) for array in pixels]


# ------------------------------------------------------------------------------------------ a trained model


def test_predictions_agree_with_evaluate(folder_run):
    root, _, weights = folder_run
    evaluated = run_main(["--evaluate", "--weights", weights, "--dataset", "folder", "--data-dir", root / "data",
                          "--img-size", "16", "--filters", "4", "--batch-size", "4", "--workers", "0", "--amp", "off",
                          "--no-progress"], cwd=root)
    assert evaluated.returncode == 0, evaluated
    top1 = re.search(r"\| top-1 ([0-9.]+)% \|.*\((\d+) images\)", evaluated.stdout)
    assert top1 and top1.group(2) == "15", evaluated.stdout

    out = root / "predictions.csv"
    result = run_script("predict.py", ["--weights", weights, root / "data" / "val", "--csv", out, "--batch-size", "4",
                                       "--workers", "0", "--no-progress"], cwd=root)
    assert result.returncode == 0 and result.stderr == "", result
    header, rows = read_csv(out)
    # 3 classes: top-k defaults to all of them
    assert header == ["path", "class", "probability", "class_2", "probability_2", "class_3", "probability_3"]
    assert [Path(row["path"]) for row in rows] == sorted((root / "data" / "val").rglob("*.png"))
    correct = sum(row["class"] == Path(row["path"]).parent.name for row in rows)
    assert f"{100 * correct / len(rows):.2f}" == top1.group(1)
    for row in rows:
        assert sorted(row[key] for key in ("class", "class_2", "class_3")) == list(CLASSES)
        probabilities = [float(row[key]) for key in ("probability", "probability_2", "probability_3")]
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1, abs=1e-5)

    table = result.stdout.splitlines()
    assert table[0].split() == ["file", "top-1", "top-2", "top-3"]
    assert len(table) == 1 + 15 + 1 and table[-1] == f"predicted 15 images with {weights}; wrote {out}"
    first = rows[0]
    assert table[1].split() == [first["path"], first["class"], f"{float(first['probability']):.4f}",
                                first["class_2"], f"{float(first['probability_2']):.4f}",
                                first["class_3"], f"{float(first['probability_3']):.4f}"]


def test_topk_columns_and_single_files(folder_run, capsys, tmp_path):
    root, _, weights = folder_run
    files = [root / "data" / "val" / "cow" / "0.png", root / "data" / "val" / "ant" / "1.png"]
    result = run_predict(capsys, ["--weights", weights, *files, "--topk", "2", "--csv", tmp_path / "p.csv",
                                  "--workers", "0"])
    assert result.returncode == 0, result
    header, rows = read_csv(tmp_path / "p.csv")
    assert header == ["path", "class", "probability", "class_2", "probability_2"]
    assert [row["path"] for row in rows] == [str(f) for f in files]  # files named keep their order


def test_unreadable_images_are_skipped_and_counted(folder_run, capsys, tmp_path):
    root, _, weights = folder_run
    images = tmp_path / "images"
    for name in CLASSES:
        (images / name).mkdir(parents=True)
        for src in sorted((root / "data" / "val" / name).iterdir()):
            (images / name / src.name).write_bytes(src.read_bytes())
    corrupt, truncated = images / "ant" / "corrupt.png", images / "cow" / "truncated.jpg"
    corrupt.write_bytes(b"not an image")
    truncated.write_bytes((images / "cow" / "0.png").read_bytes()[:120])
    (images / "notes.txt").write_text("not an image, and not an image's name: ignored")

    result = run_predict(capsys, ["--weights", weights, images, "--csv", tmp_path / "p.csv", "--batch-size", "4",
                                  "--workers", "0"])
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    warnings = result.stderr.splitlines()
    assert len(warnings) == 3, result.stderr
    assert warnings[0].startswith(f"warning: skipped: cannot read image {corrupt} (")
    assert warnings[1].startswith(f"warning: skipped: cannot read image {truncated} (")
    assert warnings[2] == "warning: skipped 2 unreadable images"
    _, rows = read_csv(tmp_path / "p.csv")
    assert len(rows) == 15 and {row["path"] for row in rows}.isdisjoint({str(corrupt), str(truncated)})


# ---------------------------------------------------------------------------- the original code's checkpoint


@torch.inference_mode()
def original_probabilities(pixels: list[np.ndarray]) -> torch.Tensor:
    model = load_weights(UPANets(8, 10, 1, 32), torch.load(ORIGINAL_CKPT, weights_only=True)["net"]).eval()
    return model(augment.normalize(torch.from_numpy(np.stack(pixels)), *catalog.ORIGINAL_CIFAR_NORMALIZATION)).softmax(1)


def test_original_checkpoint_with_classes_and_img_size(capsys, tmp_path):
    pixels = write_images(tmp_path / "images", 3)
    names = [f"name {i}" for i in range(10)]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    result = run_predict(capsys, ["--weights", ORIGINAL_CKPT, tmp_path / "images", "--classes",
                                  tmp_path / "classes.txt", "--img-size", "32", "--topk", "1", "--csv",
                                  tmp_path / "p.csv", "--workers", "0"])
    assert result.returncode == 0, result
    _, rows = read_csv(tmp_path / "p.csv")
    expected = original_probabilities(pixels).max(1)
    assert [row["class"] for row in rows] == [names[i] for i in expected.indices.tolist()]
    assert [float(row["probability"]) for row in rows] == pytest.approx(expected.values.tolist(), abs=2e-6)


def test_original_checkpoint_alone_is_taken_for_cifar10(capsys, tmp_path):
    pixels = write_images(tmp_path / "images", 2, seed=1)
    result = run_predict(capsys, ["--weights", ORIGINAL_CKPT, tmp_path / "images", "--csv", tmp_path / "p.csv",
                                  "--workers", "0"])
    assert result.returncode == 0, result
    assert result.stderr == (f"warning: {ORIGINAL_CKPT} is the original code's checkpoint of a 10-class model for "
                             "32x32 images: taking it for cifar10 (pass --dataset otherwise)\n")
    _, rows = read_csv(tmp_path / "p.csv")
    assert [row["class"] for row in rows] == [catalog.CIFAR10_CLASSES[i]
                                              for i in original_probabilities(pixels).argmax(1).tolist()]


# ------------------------------------------------------------------------------------------------ bad input


def bad_inputs(tmp: Path) -> dict[str, tuple[list, str]]:
    """name -> (argv, the error line)."""
    (tmp / "empty" / "sub").mkdir(parents=True)
    (tmp / "empty" / "sub" / "readme.txt").write_text("no images here")
    write_images(tmp / "images", 1)
    (tmp / "junk.pth").write_bytes(b"\x00junk" * 10)
    images, original = tmp / "images", ORIGINAL_CKPT
    return {
        "missing weights": (["--weights", tmp / "missing.pth", images], f"checkpoint not found: {tmp / 'missing.pth'}"),
        "corrupt weights": (["--weights", tmp / "junk.pth", images], f"cannot read checkpoint {tmp / 'junk.pth'}: "),
        "weights a folder": (["--weights", tmp, images],
                             f"{tmp} is a folder; give a checkpoint file in it, such as {tmp / 'best.pth'}"),
        "no images": (["--weights", original, tmp / "empty"], "no images (.jpg, "),
        "missing path": (["--weights", original, tmp / "nowhere"], f"{tmp / 'nowhere'}: no such file or folder"),
        "topk 0": (["--weights", original, images, "--topk", "0"], "--topk must be a positive integer, got 0"),
        "topk > classes": (["--weights", original, images, "--topk", "11"], "--topk 11 exceeds the model's 10 classes"),
        "classes count": (["--weights", original, images, "--classes", "cat,dog"],
                          f"--classes names 2 classes but the model in {original} has 10 outputs"),
        "classes file missing": (["--weights", original, images, "--classes", tmp / "classes.txt"],
                                 f"--classes {tmp / 'classes.txt'}: no such file"),
        "img size": (["--weights", original, images, "--img-size", "64"],
                     f"{original} holds a model for 32x32 images, not --img-size 64"),
        "dataset classes": (["--weights", original, images, "--dataset", "cifar100"],
                            f"cifar100 has 100 classes but the model in {original} has 10 outputs"),
        "batch size": (["--weights", original, images, "--batch-size", "0"], "--batch-size must be a positive"),
        "device": (["--weights", original, images, "--device", "gpu9"], "--device 'gpu9' is not a device name"),
    }


@pytest.mark.parametrize("case", ["missing weights", "corrupt weights", "weights a folder", "no images",
                                  "missing path", "topk 0", "topk > classes", "classes count", "classes file missing",
                                  "img size", "dataset classes", "batch size", "device"])
def test_bad_input_is_one_line_error(case, capsys, tmp_path):
    argv, message = bad_inputs(tmp_path)[case]
    result = run_predict(capsys, [*argv, "--workers", "0", "--csv", tmp_path / "p.csv"])
    assert one_line_error(result).startswith(f"error: {message}")
    assert not (tmp_path / "p.csv").exists()


# ----------------------------------------------------------------------------------------- the spec's fallbacks


def bare_checkpoint(path: Path, num_classes: int, img: int, **extra) -> Path:
    """Weights of a UPANets4 without model_config/data, as older checkpoints of ours were, plus ``extra``."""
    save_checkpoint({"model": UPANets(4, num_classes, 1, img).state_dict(), **extra}, path)
    return path


def test_older_checkpoint_uses_its_recorded_dataset(tmp_path):
    spec = inference_spec(bare_checkpoint(tmp_path / "old.pth", 10, 32, args={"dataset": "cifar10", "seed": 0}))
    assert spec.classes == list(catalog.CIFAR10_CLASSES) and spec.warnings == []
    # trained by this repo: CIFAR-10's own statistics, not the original code's
    assert (spec.mean, spec.std) == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert (spec.model.filters, spec.model.num_classes, spec.img_size, spec.model.training) == (4, 10, 32, False)


def test_dataset_names_and_tiny_imagenet_wnids(tmp_path):
    cifar100 = inference_spec(bare_checkpoint(tmp_path / "c100.pth", 100, 32), dataset="cifar_100")
    assert cifar100.classes == list(catalog.CIFAR100_CLASSES) and len(set(cifar100.classes)) == 100
    assert cifar100.classes[:3] == ["apple", "aquarium_fish", "baby"] and cifar100.classes[-1] == "worm"
    fake = make_tiny_imagenet(tmp_path / "data", n_classes=3, per_class=1, n_val=1)
    tiny = inference_spec(bare_checkpoint(tmp_path / "tiny.pth", 3, 64), dataset="tiny-imagenet",
                          data_dir=tmp_path / "data")
    assert tiny.classes == fake.classes and (tiny.mean, tiny.std) == (catalog.IMAGENET_MEAN, catalog.IMAGENET_STD)


def test_nothing_known_names_classes_by_number_and_asks_for_the_dataset(tmp_path):
    path = bare_checkpoint(tmp_path / "bare.pth", 3, 16)
    spec = inference_spec(path)
    assert spec.classes == ["0", "1", "2"] and spec.mean is None
    assert spec.warnings == [f"{path} names no classes: calling them 0..2 (pass --classes or --dataset)"]
    with pytest.raises(UserError, match=r"does not say how its inputs were normalised; pass --dataset NAME"):
        spec.normalization()
