"""The registered baselines through the same pipeline as UPANets: train by --model NAME, resume exactly,
--evaluate without --model (rebuilt from the checkpoint), predict.py and export.py; pytorch-cifar's own
checkpoint files evaluated, and one of another architecture named in one line."""
from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

import models
from upanets_lab.data.samples import make_cifar10

from helpers import REPO_ROOT, one_line_error, read_metrics, run_main, run_script, tiny_flags, torchrun
from stopping import run_until

TIMING_FIELDS = ("epoch_seconds", "train_images_per_second")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo_data")
    make_cifar10(root, n_train=48, n_test=12, seed=6)
    return root


def flags(data, root, name: str, epochs: int = 2) -> list:
    return ["--dataset", "cifar10", "--data-dir", data, "--no-download", "--no-channels-last", "--model", name,
            "--seed", "2", *tiny_flags(root, epochs=epochs, filters=None)]


@pytest.fixture(scope="module")
def mobilenet_run(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("mobilenet")
    result = run_main(flags(data, root, "mobilenetv2"), cwd=root)
    assert result.returncode == 0, result
    return root, result


def test_a_baseline_trains_by_name_and_records_it(mobilenet_run):
    root, result = mobilenet_run
    assert "model: mobilenetv2, 2,296,922 parameters, " in result.stdout
    checkpoint = torch.load(root / "checkpoint" / "cifar10-mobilenetv2" / "last.pth", weights_only=True)
    assert checkpoint["model_name"] == "mobilenetv2" and checkpoint["model_config"] == {"num_classes": 10, "img": 32}
    assert [row["epoch"] for row in read_metrics(root / "results" / "cifar10-mobilenetv2" / "metrics.jsonl")] == [1, 2]


def test_a_baseline_resumes_exactly_from_a_mid_epoch_stop(mobilenet_run, data, tmp_path):
    root, _ = mobilenet_run
    assert run_until([str(f) for f in flags(data, tmp_path, "mobilenetv2")], epoch=2, step=3) == 143
    assert run_main([*flags(data, tmp_path, "mobilenetv2"), "--resume", "auto"], cwd=tmp_path).returncode == 0
    strip = lambda rows: [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]  # noqa: E731
    run = "cifar10-mobilenetv2"
    assert strip(read_metrics(tmp_path / "results" / run / "metrics.jsonl")) == strip(
        read_metrics(root / "results" / run / "metrics.jsonl"))
    got, expected = (torch.load(r / "checkpoint" / run / "last.pth", weights_only=True)["model"] for r in (tmp_path, root))
    assert all(torch.equal(got[key], value) for key, value in expected.items())


def test_evaluate_predict_and_export_rebuild_the_baseline_from_its_checkpoint(mobilenet_run, data, tmp_path):
    root, _ = mobilenet_run
    weights = root / "checkpoint" / "cifar10-mobilenetv2" / "last.pth"
    result = run_main(["--evaluate", "--weights", weights, "--workers", "0", "--no-progress"], cwd=tmp_path)
    assert result.returncode == 0, result
    assert f"from {weights}: --model mobilenetv2 --dataset cifar10 --data-dir " in result.stdout
    top1 = float(re.search(r"top-1 ([0-9.]+)%", result.stdout).group(1))
    assert top1 == pytest.approx(read_metrics(root / "results" / "cifar10-mobilenetv2" / "metrics.jsonl")[-1]["test_acc"])
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    predicted = run_script("predict.py", ["--weights", weights, tmp_path / "red.png"], cwd=tmp_path)
    assert predicted.returncode == 0 and "red.png" in predicted.stdout, predicted
    exported = run_script("export.py", ["--weights", weights, "--format", "onnx", "--out", tmp_path / "m.onnx"],
                          cwd=tmp_path)
    assert exported.returncode == 0 and (tmp_path / "m.onnx").is_file(), exported


def test_pytorch_cifars_checkpoint_is_evaluated_and_another_architecture_named(data, tmp_path):
    torch.manual_seed(0)
    model = models.create_model("shufflenetv2", num_classes=10, img_size=32)
    path = tmp_path / "ckpt.pth"
    torch.save({"net": {f"module.{k}": v for k, v in model.state_dict().items()}, "acc": 91.25, "epoch": 199}, path)
    evaluate = ["--evaluate", "--weights", path, "--data-dir", data, "--no-download", "--workers", "0", "--no-progress"]
    result = run_main([*evaluate, "--model", "shufflenetv2"], cwd=tmp_path)
    assert result.returncode == 0, result
    assert "pytorch-cifar's checkpoint: normalising with its CIFAR mean/std" in result.stdout
    assert re.search(r"\(12 images\); the checkpoint recorded 91\.25%$", result.stdout, re.M), result.stdout
    refused = run_main([*evaluate, "--model", "resnet18"], cwd=tmp_path)
    assert one_line_error(refused) == (f"error: {path} holds shufflenetv2 weights, not resnet18; pass --model "
                                       "shufflenetv2, or leave --model out")


def test_list_models_prints_every_name_with_its_size(tmp_path):
    result = run_main(["--list-models", "resnet*", "--dataset", "cifar100"], cwd=tmp_path)
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].endswith("(cifar100: 100 classes, 32x32)")
    assert [line.split()[0] for line in lines[1:]] == models.list_models("resnet*")
    resnet18 = next(line for line in lines if line.startswith("resnet18 "))
    assert resnet18.split()[1] == f"{11173962 + 90 * 513:,}"
    assert one_line_error(run_main(["--list-models", "nothing*"], cwd=tmp_path)).startswith(
        "error: no registered model matches 'nothing*'")


def test_weights_start_a_training_run_from_a_pytorch_cifar_checkpoint(data, tmp_path):
    """--weights without --evaluate: the model and its weights come from the file (pytorch-cifar's here); the
    run trains on from them, and its first evaluation is that of the file's weights."""
    torch.manual_seed(1)
    start = models.create_model("shufflenetv2", num_classes=10, img_size=32)
    path = tmp_path / "ckpt.pth"
    torch.save({"net": {f"module.{k}": v for k, v in start.state_dict().items()}, "acc": 50.0, "epoch": 3}, path)
    run_flags = ["--weights", path, "--data-dir", data, "--no-download", "--no-channels-last", "--lr", "1e-12",
                 "--momentum", "0", "--weight-decay", "0", *tiny_flags(tmp_path, filters=None, run_name="tuned")]
    result = run_main(run_flags, cwd=tmp_path)
    assert result.returncode == 0, result
    assert f"from {path}: --model shufflenetv2 --dataset cifar10" in result.stdout
    assert f"starting from the weights of {path}\n" in result.stdout
    trained = torch.load(tmp_path / "checkpoint" / "tuned" / "last.pth", weights_only=True)
    assert trained["model_name"] == "shufflenetv2"
    for key, value in start.state_dict().items():  # a learning rate of 1e-12 leaves the weights where they began
        if value.is_floating_point() and "running" not in key:
            torch.testing.assert_close(trained["model"][key], value, rtol=0, atol=1e-6)


def test_a_torchvision_model_trains_evaluates_and_refuses_missing_pretrained_weights(data, tmp_path):
    run_flags = flags(data, tmp_path, "torchvision:resnet18", epochs=1)
    result = run_main(run_flags, cwd=tmp_path)
    assert result.returncode == 0, result
    weights = tmp_path / "checkpoint" / "cifar10-torchvision-resnet18" / "last.pth"
    assert torch.load(weights, weights_only=True)["model_name"] == "torchvision:resnet18"
    evaluated = run_main(["--evaluate", "--weights", weights, "--workers", "0", "--no-progress"], cwd=tmp_path)
    assert evaluated.returncode == 0 and "from " in evaluated.stdout and "--model torchvision:resnet18" in (
        evaluated.stdout), evaluated

    empty_cache = {"TORCH_HOME": str(tmp_path / "torch-home")}
    missing = run_main([*run_flags, "--pretrained", "--run-name", "pretrained"], cwd=tmp_path, env=empty_cache)
    assert one_line_error(missing).startswith("error: --model torchvision:resnet18: the pretrained weights of "
                                              "torchvision:resnet18 are not in the local cache: put resnet18-")
    assert not (tmp_path / "checkpoint" / "pretrained").exists()
    refused = run_main([*flags(data, tmp_path, "upanets16"), "--pretrained"], cwd=tmp_path)
    assert one_line_error(refused) == ("error: --pretrained is an option of --model torchvision:NAME or timm:NAME, "
                                       "not of upanets16 (whose options are --blocks, --head)")


def test_a_baseline_run_records_no_upanets_options_and_its_args_json_repeats_it(mobilenet_run, tmp_path):
    """--filters, --blocks and --head mean nothing to mobilenetv2: left unset, so --config of its args.json works."""
    root, _ = mobilenet_run
    record = root / "results" / "cifar10-mobilenetv2" / "args.json"
    args = json.loads(record.read_text())
    assert (args["filters"], args["blocks"], args["head"]) == (None, None, None)
    again = run_main(["--config", record, "--run-name", "again", "--epochs", "1", "--checkpoint-dir",
                      tmp_path / "checkpoint", "--save-path", tmp_path / "results"], cwd=tmp_path)
    assert again.returncode == 0, again
    assert json.loads((tmp_path / "results" / "again" / "args.json").read_text())["model"] == "mobilenetv2"


def test_a_model_that_cannot_take_the_image_size_is_one_line(tmp_path):
    result = run_main(["--model", "torchvision:vit_b_16", "--dataset", "synthetic", "--img-size", "32",
                       *tiny_flags(tmp_path, filters=None)], cwd=tmp_path)
    assert one_line_error(result).startswith("error: --model torchvision:vit_b_16 does not run on 32x32 images (")
    assert not (tmp_path / "checkpoint" / "synthetic-torchvision-vit_b_16" / "last.pth").exists()


def test_landscape_of_a_baseline(mobilenet_run, tmp_path):
    root, _ = mobilenet_run
    weights = root / "checkpoint" / "cifar10-mobilenetv2" / "last.pth"
    result = run_script("landscape.py", ["--weights", weights, "--points", "3", "--images", "8", "--batch-size", "8",
                                         "--workers", "0", "--out", tmp_path / "out", "--no-progress"], cwd=tmp_path)
    assert result.returncode == 0, result
    assert f"{weights}: mobilenetv2, loss " in result.stdout
    rows = (tmp_path / "out" / "landscape.csv").read_text().splitlines()
    assert rows[0] == "checkpoint,alpha,loss,accuracy" and len(rows) == 4


def test_a_baseline_trains_under_torchrun(data, tmp_path):
    result = torchrun([REPO_ROOT / "main.py", *flags(data, tmp_path, "shufflenetv2", epochs=1), "--device", "cpu"],
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    checkpoint = torch.load(tmp_path / "checkpoint" / "cifar10-shufflenetv2" / "last.pth", weights_only=True)
    assert checkpoint["world_size"] == 2 and checkpoint["model_name"] == "shufflenetv2"
