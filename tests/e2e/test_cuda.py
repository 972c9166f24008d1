"""CUDA checks: numerics on the GPU and short CLI runs through its fast paths.

Skipped without a CUDA device; run them on a GPU machine with
`python -m pytest -q tests/e2e/test_cuda.py`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.upanets import UPANets
from upanets_lab.data import augment

from helpers import FIXTURES, REPO_ROOT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

REFERENCE = FIXTURES / "forward_filters8_classes10_img32.pt"


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(REFERENCE, weights_only=True)


def _model(reference: dict, channels_last: bool = False) -> UPANets:
    model = UPANets(**reference["args"]).cuda()
    model.load_state_dict(reference["state_dict"])
    return model.to(memory_format=torch.channels_last) if channels_last else model


@pytest.mark.parametrize("channels_last", [False, True])
def test_reference_logits_fp32_on_cuda(reference: dict, channels_last: bool) -> None:
    model = _model(reference, channels_last).eval()
    x = reference["input"].cuda()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.backends.cudnn.flags(allow_tf32=False), torch.no_grad():
        logits = model(x).cpu()
    torch.testing.assert_close(logits, reference["logits_eval"], atol=1e-4, rtol=0)


def test_bf16_channels_last_close_to_fp32(reference: dict) -> None:
    model = _model(reference, channels_last=True).eval()
    x = reference["input"].cuda().contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x).float().cpu()
    expected = reference["logits_eval"]
    # bf16 keeps about three significant digits; through the whole network that is a few percent.
    error = (logits - expected).abs().max().item()
    assert error < 0.1 * expected.abs().max().item(), (error, logits, expected)


def test_random_crop_flip_on_cuda_flips_horizontally() -> None:
    """On the GPU the flip is branch-free (torch.where): each sample is its crop or the crop mirrored left-right
    (flip(3), never upside down), about half the time, and the same batch as the boolean-mask path gives."""
    images = torch.randint(0, 256, (2000, 3, 6, 7), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).cuda()

    def crop_flip(**kwargs) -> torch.Tensor:
        return augment.random_crop_flip(images, 2, torch.Generator(device="cuda").manual_seed(3), **kwargs)

    crops, out = crop_flip(flip=False), crop_flip()  # the crop offsets are drawn first, so both have the same crops
    same, mirrored = (out == crops).all((1, 2, 3)), (out == crops.flip(3)).all((1, 2, 3))
    assert not (same & mirrored).any()
    assert (same | mirrored).all(), f"{int((~(same | mirrored)).sum())} samples are neither the crop nor its mirror"
    assert 0.46 < mirrored.float().mean().item() < 0.54
    assert torch.equal(out, crop_flip(sync_free=False))


def _run(args: list[str], tmp_path: Path, launcher: list[str] | None = None,
         env: dict[str, str] | None = None) -> dict:
    command = (launcher or [sys.executable]) + [str(REPO_ROOT / "main.py"), "--dataset", "synthetic",
                                                "--no-progress", "--checkpoint-dir", str(tmp_path / "ck"),
                                                "--save-path", str(tmp_path / "res"), "--run-name", "run", *args]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    rows = [json.loads(line) for line in (tmp_path / "res" / "run" / "metrics.jsonl").read_text().splitlines()]
    checkpoint = torch.load(tmp_path / "ck" / "run" / "last.pth", map_location="cpu", weights_only=True)
    return {"stdout": done.stdout, "stderr": done.stderr, "rows": rows, "checkpoint": checkpoint}


def test_cli_trains_with_bf16_and_channels_last(tmp_path: Path) -> None:
    result = _run(["--device", "cuda", "--epochs", "2", "--filters", "8", "--amp", "bf16", "--channels-last"], tmp_path)
    assert "amp=bf16" in result["stdout"] and "channels_last=True" in result["stdout"]
    assert [row["epoch"] for row in result["rows"]] == [1, 2]
    assert result["rows"][-1]["test_acc"] > 60  # ten classes: chance is 10%
    assert all(torch.isfinite(t).all() for t in result["checkpoint"]["model"].values() if t.is_floating_point())


def test_cli_compile(tmp_path: Path) -> None:
    """--compile runs the model through torch.compile: dynamo logs the graph it traced from models/upanets.py
    (TORCH_LOGS=graph_code prints it under "TRACED GRAPH"), and the checkpoint holds the plain module's keys.
    Two epochs whose last batches are smaller (2,000 and 500 images in batches of 96) compile once for
    training and once for evaluation, not again for a batch size or an epoch."""
    result = _run(["--device", "cuda", "--epochs", "2", "--filters", "8", "--batch-size", "96", "--compile"],
                  tmp_path, env={"TORCH_LOGS": "graph_code,recompiles"})
    assert "TRACED GRAPH" in result["stderr"], result["stderr"][-3000:]
    assert result["stderr"].count("Recompiling function") <= 1, result["stderr"][-3000:]
    traced = [line for line in result["stderr"].splitlines() if "__graph_code" in line]
    assert any("models/upanets.py" in line for line in traced), result["stderr"][-3000:]
    assert not any(key.startswith("_orig_mod.") for key in result["checkpoint"]["model"])
    assert result["rows"][0]["test_acc"] > 20


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices for a 2-process NCCL run")
def test_torchrun_nccl_two_processes(tmp_path: Path) -> None:
    """Two ranks on two GPUs: the process group, NCCL and DDP run; each rank trains on half of every epoch."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = _run(["--device", "cuda", "--epochs", "2", "--filters", "4"], tmp_path, launcher)
    assert "processes=2" in result["stdout"] and "global batch 200" in result["stdout"], result["stdout"]
    assert [row["epoch"] for row in result["rows"]] == [1, 2]  # rank 0 logs each epoch once
    checkpoint = result["checkpoint"]
    assert checkpoint["world_size"] == 2 and checkpoint["epoch"] == 2
    # 2000 synthetic images, batch 100: 10 steps a rank and epoch (one process alone would take 20)
    assert int(checkpoint["model"]["bn.num_batches_tracked"]) == 2 * 10
    assert not any(key.startswith("module.") for key in checkpoint["model"])
    assert result["rows"][-1]["test_acc"] > 20
