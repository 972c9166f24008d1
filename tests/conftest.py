"""Fixtures for the end-to-end tests that run the training CLI (main.py) as a subprocess (helpers.py has the rest).

The suite's own in-process torch work is limited to one thread, as every child process is (helpers.child_env).
Children keep their speed cache (tuning.py) in a folder of this test session, never in the user's ~/.cache.
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence

import pytest
import torch

from helpers import MAIN, child_env, run_main

torch.set_num_threads(1)
CACHE_HOME = tempfile.mkdtemp(prefix="upanets-test-cache-")
atexit.register(shutil.rmtree, CACHE_HOME, ignore_errors=True)
os.environ["XDG_CACHE_HOME"] = CACHE_HOME  # for in-process runs too; children inherit it


@pytest.fixture
def run_cli():
    """run_cli(args, cwd, env=None, timeout=180) -> (returncode, stdout, stderr) of `python main.py *args`."""
    return run_main


@pytest.fixture
def popen_cli():
    """popen_cli(args, cwd, env=None) -> a line-buffered text Popen of `python main.py *args` (stdout/stderr piped)."""
    procs = []

    def start(args: Sequence[str | os.PathLike], cwd: str | os.PathLike, env: dict[str, str] | None = None):
        proc = subprocess.Popen([sys.executable, str(MAIN), *map(str, args)], cwd=cwd, env=child_env(env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:  # never leave a child behind when a test fails half-way
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            stream.close()
