"""export.py: ONNX and torch.export programs that match the eager model and load without this repo."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.upanets import UPANets, load_weights
from upanets_lab.checkpoints import save_checkpoint
from upanets_lab.data import catalog

import export
from helpers import ORIGINAL_CKPT, CliResult, child_env, one_line_error, run_script, state_dict_of

CLASSES = ["ant", "bee", "cow"]
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
# Runs an exported file with onnxruntime or torch alone, in a folder without this repo and with `python -I`
# (no script folder on sys.path), and checks that none of this repo's code was imported for it (the
# environment has the repo's packages installed): argv = format, model file, inputs .npy, outputs .npy.
LOAD_ALONE = """
import importlib.util, json, sys
import numpy as np
assert importlib.util.find_spec("export") is None
fmt, path, inputs, outputs = sys.argv[1:]
x = np.load(inputs)
if fmt == "onnx":
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    logits = [session.run(None, {"images": x[:n]})[0] for n in (1, 3, 5)]
else:
    import torch
    extra = {"upanets.json": ""}
    module = torch.export.load(path, extra_files=extra).module()
    meta = json.loads(extra["upanets.json"])
    with torch.no_grad():
        logits = [module(torch.from_numpy(x[:n])).numpy() for n in (1, 3, 5)]
np.save(outputs, np.concatenate(logits))
assert not {"models", "upanets_lab"} & {name.split(".")[0] for name in sys.modules}
print(json.dumps(meta))
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A UPANets4 for 16x16 images in this repo's checkpoint format, with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = UPANets(4, len(CLASSES), 1, 16)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("export") / "best.pth"
    save_checkpoint({"model": model.state_dict(),
                     "model_config": {"filters": 4, "num_classes": len(CLASSES), "blocks": 1, "img": 16},
                     "data": {"dataset": "folder", "classes": CLASSES, "mean": MEAN, "std": STD}}, path)
    return path


@torch.inference_mode()
def eager_logits(weights: Path, model: UPANets, x: np.ndarray) -> np.ndarray:
    return load_weights(model, state_dict_of(weights)).eval()(torch.from_numpy(x)).numpy()


def run_alone(fmt: str, path: Path, x: np.ndarray, tmp: Path) -> tuple[np.ndarray, dict]:
    """The exported model's logits on x[:1], x[:3], x[:5] (concatenated) and its metadata, from a fresh process."""
    np.save(tmp / "inputs.npy", x)
    proc = subprocess.run([sys.executable, "-I", "-c", LOAD_ALONE, fmt, str(path), "inputs.npy", "outputs.npy"],
                          cwd=tmp, env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return np.load(tmp / "outputs.npy"), json.loads(proc.stdout)


def check_export(fmt: str, result: CliResult, weights: Path, tmp: Path) -> None:
    """The output line; the file at its default place (next to the weights, nothing else left there); the file,
    run without this repo, matches the eager model on batches of 1, 3 and 5 (traced with 2); its metadata."""
    out = weights.with_suffix(".onnx" if fmt == "onnx" else ".pt2")
    what, runner = ("ONNX opset 18", "onnxruntime") if fmt == "onnx" else ("torch.export program", "torch.export.load")
    assert result.returncode == 0 and result.stderr == "", result
    line = result.stdout.strip()
    assert line.startswith(f"exported {weights} to {out} ({what}; input float32 (batch, 3, 16, 16), normalised; "
                           f"output logits (batch, {len(CLASSES)})); max abs difference from the eager model, per "
                           f"unit of its largest logit, on a batch of 3 ({runner}): "), line
    assert float(line.rpartition(": ")[2]) <= 1e-4
    assert sorted(p.name for p in weights.parent.iterdir()) == sorted([weights.name, out.name])

    x = np.random.default_rng(0).standard_normal((5, 3, 16, 16), dtype=np.float32)
    logits, meta = run_alone(fmt, out, x, tmp)
    expected = eager_logits(weights, UPANets(4, len(CLASSES), 1, 16), x)
    assert np.abs(logits - np.concatenate([expected[:1], expected[:3], expected[:5]])).max() <= 1e-4
    assert meta["classes"] == CLASSES and (meta["mean"], meta["std"], meta["img_size"]) == (MEAN, STD, 16)


def test_onnx_with_dynamic_batch(checkpoint, tmp_path):
    weights = tmp_path / "run" / "best.pth"
    weights.parent.mkdir()
    weights.write_bytes(checkpoint.read_bytes())
    result = run_script("export.py", ["--weights", weights, "--format", "onnx"], cwd=tmp_path)
    check_export("onnx", result, weights, tmp_path)


def test_exported_program_with_dynamic_batch(checkpoint, capsys, tmp_path):
    weights = tmp_path / "run" / "best.pth"
    weights.parent.mkdir()
    weights.write_bytes(checkpoint.read_bytes())
    code = export.cli(["--weights", str(weights), "--format", "exported-program"])  # in-process: saves a start-up
    check_export("exported-program", CliResult(code, *capsys.readouterr()), weights, tmp_path)


def test_original_checkpoint_exports_with_classes_and_img_size(capsys, tmp_path):
    (tmp_path / "classes.txt").write_text("".join(f"c{i}\n" for i in range(10)))
    out = tmp_path / "original.pt2"
    code = export.cli([str(a) for a in ["--weights", ORIGINAL_CKPT, "--format", "exported-program", "--batch", "2",
                                        "--classes", tmp_path / "classes.txt", "--img-size", "32", "--out", out]])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "input float32 (2, 3, 32, 32), normalised; output logits (2, 10)); " in stdout
    assert "on a batch of 2 (torch.export.load)" in stdout
    extra = {"upanets.json": ""}
    module = torch.export.load(out, extra_files=extra).module()
    meta = json.loads(extra["upanets.json"])
    assert meta["classes"] == [f"c{i}" for i in range(10)] and meta["img_size"] == 32
    assert (tuple(meta["mean"]), tuple(meta["std"])) == catalog.ORIGINAL_CIFAR_NORMALIZATION
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        logits = module(torch.from_numpy(x)).numpy()
    assert np.abs(logits - eager_logits(ORIGINAL_CKPT, UPANets(8, 10, 1, 32), x)).max() <= 1e-4


def test_a_failed_check_writes_nothing(checkpoint, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # any difference, even 0, fails
    out = tmp_path / "model.pt2"
    code = export.cli([str(a) for a in ["--weights", checkpoint, "--format", "exported-program", "--out", out]])
    stdout, stderr = capsys.readouterr()
    error = one_line_error(CliResult(code, stdout, stderr))
    assert error.startswith("error: the exported model's logits differ from the eager model's by ")
    assert error.endswith(f"on a batch of 3; {out} was not written")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, message", [
    (["--batch", "0"], "--batch must be 'dynamic' or a positive integer, got '0'"),
    (["--batch", "two"], "--batch must be 'dynamic' or a positive integer, got 'two'"),
    (["--classes", "a,b"], "--classes names 2 classes but the model in {weights} has 3 outputs"),
    (["--img-size", "32"], "{weights} holds a model for 16x16 images, not --img-size 32"),
    (["--out", "{tmp}/file/model.onnx"], "cannot write to {tmp}/file: {tmp}/file is not a writable folder "
                                         "(not a folder)"),
])
def test_bad_input_is_one_line_error(flags, message, checkpoint, capsys, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    code = export.cli(["--weights", str(checkpoint), "--format", "onnx", *flags])
    error = one_line_error(CliResult(code, *capsys.readouterr()))
    assert error == f"error: {message.format(weights=checkpoint, tmp=tmp_path)}"
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["best.pth"]


def test_missing_weights_is_one_line_error(capsys, tmp_path):
    missing = tmp_path / "missing.pth"
    code = export.cli(["--weights", str(missing), "--format", "onnx"])
    assert one_line_error(CliResult(code, *capsys.readouterr())) == f"error: checkpoint not found: {missing}"
