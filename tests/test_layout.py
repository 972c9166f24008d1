"""The repository's shape: modules that say their job, no side effects at import, short functions, a README
layout table that matches the tree; and the small guarantees no other test pins (seeding, provenance, --sync-bn)."""
from __future__ import annotations

import argparse
import ast
import inspect
import json
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from models.upanets import UPANets
from upanets_lab import utils
from upanets_lab.training import distributed, engine, loop

from helpers import REPO_ROOT, child_env, one_line_error, run_main, tiny_flags

ROOT_SCRIPTS = sorted(REPO_ROOT.glob("*.py"))
LIBRARY = sorted([*(REPO_ROOT / "upanets_lab").rglob("*.py"), *(REPO_ROOT / "models").glob("*.py")])
SCRIPTS_AND_LIBRARY = ROOT_SCRIPTS + LIBRARY


def test_the_root_holds_what_users_run_or_copy():
    """The commands, hubconf.py and utils-free: at most 9 Python files; the library is one package."""
    assert len(ROOT_SCRIPTS) <= 9, [path.name for path in ROOT_SCRIPTS]
    assert {path.name for path in ROOT_SCRIPTS} >= {"main.py", "predict.py", "export.py", "landscape.py",
                                                     "compare.py", "sampledata.py", "hubconf.py"}
    packages = {path.parent.name for path in (REPO_ROOT / "upanets_lab").rglob("__init__.py")}
    assert packages == {"upanets_lab", "data", "training", "inference"}


def test_every_module_says_its_job_and_is_in_the_readme_layout():
    layout = (REPO_ROOT / "README.md").read_text().split("## Repository layout", 1)[1]
    listed = set(re.findall(r"`([\w/]+\.py)`", layout))
    for path in SCRIPTS_AND_LIBRARY:
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no module docstring"
        if path.name != "__init__.py":
            assert str(path.relative_to(REPO_ROOT)) in listed, f"{path} is missing from the README's layout"
    assert listed <= {str(p.relative_to(REPO_ROOT)) for p in SCRIPTS_AND_LIBRARY} | {
        f"benchmarks/{p.name}" for p in (REPO_ROOT / "benchmarks").glob("*.py")} | {
        f"materials/{p.name}" for p in (REPO_ROOT / "materials").glob("*.py")} | {
        "tests/helpers.py", "tests/stopping.py"}


def test_no_code_edits_sys_path():
    """The library is installed (editable, from the Pipfile): nothing reaches it by editing sys.path."""
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.split()
    edits = [name for name in files if re.search(r"sys\.path\.(insert|append)|sys\.path\[", (REPO_ROOT / name).read_text())
             and name != "tests/test_layout.py"]
    assert files and edits == []


def test_compare_reads_run_records_without_torch():
    code = "import sys, compare; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=child_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.strip() == "False", result


def test_main_reaches_the_train_step_within_three_calls(tmp_path, monkeypatch):
    """The epoch loop is visible: main.main -> loop.train -> engine.train_one_epoch -> engine.train_step."""
    import main

    chains = []
    real_step = engine.train_step

    def train_step(*args, **kwargs):
        frames = [frame.function for frame in inspect.stack()]
        chains.append(frames[1:frames.index("main")])  # the callers between main.main and this step, inner first
        return real_step(*args, **kwargs)

    monkeypatch.setattr(engine, "train_step", train_step)
    flags = ["--dataset", "synthetic", "--img-size", "8", "--no-channels-last", *tiny_flags(tmp_path, batch_size=500)]
    assert main.cli(flags) == 0
    assert chains and all(chain == ["train_one_epoch", "train"] for chain in chains), chains[0]


def test_importing_changes_nothing_in_the_process():
    """No module sets the umask, a signal handler or a generator's state when imported (import all, compare)."""
    code = """
import os, signal, sys, random
import numpy as np, torch
mask = os.umask(0o022); os.umask(mask)
before = (os.umask(mask), signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM),
          torch.get_rng_state().sum().item(), random.getstate()[1][:3], np.random.get_state()[1][:3].tolist())
os.umask(mask)
import main, predict, export, landscape, compare, sampledata, hubconf
import upanets_lab.checkpoints, upanets_lab.inference.trained, upanets_lab.training.loop, upanets_lab.data.samples
after = (os.umask(mask), signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM),
         torch.get_rng_state().sum().item(), random.getstate()[1][:3], np.random.get_state()[1][:3].tolist())
os.umask(mask)
print(before == after)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=child_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.strip() == "True", result


def test_main_runs_atexit_hooks():
    """main.py exits through the interpreter, so that what a user imports beside it gets its teardown."""
    code = "import atexit, sys, main; atexit.register(lambda: print('teardown ran')); sys.exit(main.cli(['--help']))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=child_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.rstrip().endswith("teardown ran"), result
    assert "os._exit" not in (REPO_ROOT / "main.py").read_text()


def test_seed_everything_seeds_python_numpy_and_torch():
    draws = []
    for _ in range(2):
        utils.seed_everything(7)
        draws.append((random.random(), np.random.random(), torch.rand(1).item()))
    utils.seed_everything(8)
    assert draws[0] == draws[1] and draws[0][1] != np.random.random() and draws[0][0] != random.random()


def test_provenance_names_the_code_and_the_machine(monkeypatch, tmp_path):
    record = utils.provenance(torch.device("cpu"))
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout, as CI's clean clone is
        assert record["git_commit"] == head.stdout.strip() and isinstance(record["git_dirty"], bool)
    assert record["torch"] == torch.__version__ and record["device"] == utils.device_name(torch.device("cpu"))
    assert set(record) >= {"torch", "cuda", "cudnn", "device"}
    monkeypatch.setattr(utils, "REPO_ROOT", tmp_path)  # not a git checkout: no commit is claimed
    assert "git_commit" not in utils.provenance(torch.device("cpu"))


def test_runs_record_their_provenance(tmp_path):
    result = run_main(["--dataset", "synthetic", "--img-size", "8", *tiny_flags(tmp_path, run_name="p")],
                      cwd=tmp_path)
    assert result.returncode == 0, result
    args = json.loads((tmp_path / "results" / "p" / "args.json").read_text())
    checkpoint = torch.load(tmp_path / "checkpoint" / "p" / "last.pth", weights_only=True)
    assert checkpoint["provenance"] == args["provenance"] and args["provenance"]["torch"] == torch.__version__


# ------------------------------------------------------------------------------------------------- --sync-bn


def test_sync_bn_makes_every_batchnorm_a_syncbatchnorm_under_torchrun(monkeypatch):
    """Under torchrun (two processes) the BatchNorm layers of the trained model become SyncBatchNorm, in place,
    before DistributedDataParallel wraps it."""
    wrapped = []
    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", lambda module, device_ids: wrapped.append(module)
                        or module)
    model = UPANets(4, 10, 1, 8)
    batchnorms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())  # 2-d and 1-d
    args = argparse.Namespace(sync_bn=True, compile=False, batch_size=8)
    runtime = engine.Runtime(torch.device("cpu"), context=distributed.DistributedContext(rank=0, world_size=2))
    train_model, eval_model = loop.wrap_for_training(model, args, runtime)
    assert wrapped == [model] and eval_model is model
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules()) == batchnorms > 0
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in model.modules())
    single = UPANets(4, 10, 1, 8)  # one process: nothing to synchronise with, the model stays as it is
    loop.wrap_for_training(single, args, engine.Runtime(torch.device("cpu")))
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in single.modules())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_sync_bn_on_the_cpu_is_refused_in_one_line(device, tmp_path):
    result = run_main(["--dataset", "synthetic", "--sync-bn", *tiny_flags(tmp_path), "--device", device], cwd=tmp_path)
    assert one_line_error(result) == "error: --sync-bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only)"
    assert not (tmp_path / "checkpoint" / "synthetic-upanets4" / "last.pth").exists()
