"""Failures under torchrun (CPU, gloo, two processes): restarts resume by themselves, and no process waits forever.

A group that `torchrun --max-restarts N` restarts after a process died resumes from the run's own last.pth (or
starts again when the crash came before the first checkpoint); a process that fails ends the others within
seconds, each with its message; a process whose peers never come gives up after --dist-timeout.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from test_distributed import RUN, ddp_flags

from models.upanets import UPANets
from upanets_lab import errors
from upanets_lab.data.samples import make_cifar10
from upanets_lab.training import distributed, loop

import main
from helpers import REPO_ROOT, TORCHRUN, child_env, one_line_error, read_metrics, run_main

# main.cli() in each process, where rank 1 alone meets a bad batch at its third step of the group's first start.
_FAILING_WORKER = """
import os
import sys

from upanets_lab.training import engine
from models.upanets import UPANets
from upanets_lab import errors
import main

if os.environ["RANK"] == "1" and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
    train_step = engine.train_step

    def failing_step(trainer, images, labels, state, runtime, indices=None):
        if state.step == 2:
            raise errors.DataError("rank 1 read a bad batch")
        train_step(trainer, images, labels, state, runtime, indices)

    engine.train_step = failing_step
sys.exit(main.cli(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """160 train images: ten steps of 8 per process and epoch, so that an epoch outlasts killing a process."""
    root = tmp_path_factory.mktemp("cifar")
    make_cifar10(root, n_train=160, n_test=21, seed=11)
    return root


def torchrun_lines(args: list, cwd: Path, on_line=None, timeout: float = 120) -> tuple[int, str]:
    """``torchrun --standalone --nproc_per_node 2 *args``; ``on_line(line, agent_pid)`` sees each output line
    as it comes. Returns the exit code and the output (stdout and stderr together).

    A rank that dies of SIGABRT inside torch (gloo's TCP transport aborts now and then on a loaded machine,
    pytorch/pytorch#188266; test_distributed.torchrun retries the same way) makes the launch run once more from
    clean output folders, with a warning that keeps the first attempt's output."""
    code, output = _torchrun_lines_once(args, cwd, on_line, timeout)
    if "(exitcode: -6)" in output:
        warnings.warn(f"torchrun aborted (retried once); its output:\n{output[-8000:]}", stacklevel=2)
        for folder in ("checkpoint", "results"):
            shutil.rmtree(cwd / folder, ignore_errors=True)
        code, output = _torchrun_lines_once(args, cwd, on_line, timeout)
    return code, output


def _torchrun_lines_once(args: list, cwd: Path, on_line, timeout: float) -> tuple[int, str]:
    if not TORCHRUN.exists():
        pytest.skip(f"torchrun not found next to {TORCHRUN.parent}")
    proc = subprocess.Popen([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", *map(str, args)], cwd=cwd,
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    # A hung group must fail the test, not the suite: the whole session (agent and workers) is killed.
    watchdog = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line, proc.pid)
        return proc.wait(), "".join(lines)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()


def test_group_restarted_after_sigkill_resumes_from_its_last_checkpoint(cifar, tmp_path):
    if shutil.which("pgrep") is None:
        pytest.skip("pgrep is needed to find torchrun's workers")
    killed = []

    def kill_a_worker_after_first_epoch(line: str, agent_pid: int) -> None:
        if line.startswith("epoch 1/") and not killed:  # printed once epoch 1's checkpoint is written
            workers = subprocess.run(["pgrep", "-P", str(agent_pid)], capture_output=True, text=True,
                                     check=False).stdout.split()
            killed.append(max(map(int, workers)))
            os.kill(killed[0], signal.SIGKILL)

    code, output = torchrun_lines(["--max-restarts", "1", REPO_ROOT / "main.py", *ddp_flags(tmp_path, cifar, epochs=3)],
                                  cwd=tmp_path, on_line=kill_a_worker_after_first_epoch)
    assert killed, output
    assert code == 0, output[-8000:]
    last = tmp_path / "checkpoint" / RUN / "last.pth"
    assert f"restart 1 under torchrun: resuming from {last}\n" in output
    assert output.count("done: best test accuracy") == 1
    assert [row["epoch"] for row in read_metrics(tmp_path / "results" / RUN / "metrics.jsonl")] == [1, 2, 3]
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 3 and checkpoint["world_size"] == 2 and checkpoint["epoch_state"] is None


def test_failure_on_one_rank_ends_every_rank_at_once_with_its_message(cifar, tmp_path):
    worker = tmp_path / "failing_worker.py"
    worker.write_text(_FAILING_WORKER.format())
    started = time.monotonic()
    code, output = torchrun_lines([worker, *ddp_flags(tmp_path, cifar)], cwd=tmp_path)
    seconds = time.monotonic() - started
    assert code != 0
    assert "error: rank 1 read a bad batch\n" in output  # rank 1's own line
    assert "error: process 1 of 2 failed: rank 1 read a bad batch\n" in output  # rank 0's, whose all-reduce broke
    assert seconds < 60, f"took {seconds:.0f} s (--dist-timeout is 300 s)"  # torchrun's start-up included
    assert not (tmp_path / "checkpoint" / RUN / "last.pth").exists()


def test_restart_after_a_failure_before_the_first_checkpoint_starts_over(cifar, tmp_path):
    worker = tmp_path / "failing_worker.py"
    worker.write_text(_FAILING_WORKER.format())
    code, output = torchrun_lines(["--max-restarts", "1", worker, *ddp_flags(tmp_path, cifar)], cwd=tmp_path)
    assert code == 0, output[-8000:]
    assert "error: rank 1 read a bad batch\n" in output
    assert "restart 1 under torchrun: no checkpoint yet, starting from epoch 1\n" in output
    assert [row["epoch"] for row in read_metrics(tmp_path / "results" / RUN / "metrics.jsonl")] == [1, 2]


def test_process_whose_peers_never_come_gives_up_after_the_timeout(cifar, tmp_path):
    with socket.socket() as s:  # a free port for the store that rank 0 hosts outside torchrun
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    started = time.monotonic()
    result = run_main([*ddp_flags(tmp_path, cifar), "--dist-timeout", "2"], cwd=tmp_path, env=env, timeout=60)
    assert time.monotonic() - started < 30
    assert one_line_error(result).startswith("error: process 0 of 2 could not reach the others within 2 s (")
    assert not (tmp_path / "checkpoint").exists()


def test_restarted_group_resumes_its_own_last_checkpoint_whatever_the_flags(tmp_path):
    """--overwrite or --resume PATH would undo the progress made before the crash; outside restarts they rule.
    Only a last.pth or args.json of this torchrun job counts as its own: a restart treats an earlier run's files
    as the first start did."""
    def folders(*flags: str, restarted: bool) -> loop.RunFolders:
        args = main.get_args_parser().parse_args(
            ["--run-name", "r", "--checkpoint-dir", str(tmp_path / "c"), "--save-path", str(tmp_path / "r"), *flags])
        context = distributed.DistributedContext(world_size=2, restart=int(restarted), job="this-job")
        return loop.RunFolders.for_training(args, context)

    other = tmp_path / "other.pth"
    other.touch()
    assert folders(restarted=True).resume is None  # the crash came before the first checkpoint
    assert folders("--resume", str(other), restarted=True).resume == other
    with pytest.raises(errors.UserError, match="no checkpoint at"):
        folders("--resume", "auto", restarted=True)

    # this job's first start logged an epoch and crashed before saving it: the restart starts over
    (tmp_path / "r" / "r").mkdir(parents=True)
    (tmp_path / "r" / "r" / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (tmp_path / "r" / "r" / "args.json").write_text(json.dumps({"job": "this-job"}))
    assert folders(restarted=True).resume is None
    (tmp_path / "r" / "r" / "args.json").write_text(json.dumps({"job": "an-earlier-job"}))
    with pytest.raises(errors.UserError, match="already exists"):
        folders(restarted=True)  # an earlier run's metrics: refused, as the first start was

    last = tmp_path / "c" / "r" / "last.pth"
    last.parent.mkdir(parents=True)
    torch.save({"model": UPANets(4, 10, 1, 8).state_dict(), "job": "an-earlier-job"}, last)
    assert folders("--overwrite", restarted=True).resume is None  # the replaced run's checkpoint
    assert folders("--resume", "auto", restarted=True).resume == last  # asked for, as at the first start
    with pytest.raises(errors.UserError, match="already exists"):
        folders(restarted=True)
    torch.save({"model": UPANets(4, 10, 1, 8).state_dict(), "job": "this-job"}, last)
    for flags in ((), ("--overwrite",), ("--resume", str(other)), ("--resume", "auto")):
        assert folders(*flags, restarted=True).resume == last, flags
    assert folders("--overwrite", restarted=False).resume is None
    assert folders("--resume", str(other), restarted=False).resume == other
    with pytest.raises(errors.UserError, match="already exists"):
        folders(restarted=False)
