"""When memory or disk runs out: one line, exit 2, and no checkpoint lost or left half-written.

Full disks are small tmpfs mounts made by the test (the suite runs as root; without the right to mount,
those tests are skipped). Memory runs out for real under an address-space limit (RLIMIT_AS) set on the
child process, or up front where the size of the data is known before allocating.
"""
from __future__ import annotations

import contextlib
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from upanets_lab import files
from upanets_lab.data import sources
from upanets_lab.data.samples import make_image_folder
from upanets_lab.training import engine

import main
from helpers import MAIN, ORIGINAL_CKPT, child_env, one_line_error, read_metrics, tiny_flags

NO_SPACE = "No space left on device"


@contextlib.contextmanager
def tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of ``size_bytes`` (rounded up to pages) mounted at ``path`` for the block."""
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def synthetic_flags(tmp_path: Path, **overrides) -> list[str]:
    return ["--dataset", "synthetic", "--img-size", "8", "--seed", "1",
            *tiny_flags(tmp_path, **{"batch_size": 250, "run_name": "run", **overrides})]


def run(flags: list, cwd: Path, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    """``python main.py *flags``, optionally with its address space limited to ``limit_bytes``."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, str(MAIN), *map(str, flags)], cwd=cwd, env=child_env(),
                          capture_output=True, text=True, timeout=300, preexec_fn=limit if limit_bytes else None)


# ------------------------------------------------------------------------------------------ full disk


@pytest.fixture(scope="module")
def checkpoint_size(tmp_path_factory) -> int:
    """Bytes of last.pth for the synthetic_flags run (the same model, so the same size, every time)."""
    root = tmp_path_factory.mktemp("size")
    result = run(synthetic_flags(root, epochs=1), root)
    assert result.returncode == 0, result.stderr
    return (root / "checkpoint" / "run" / "last.pth").stat().st_size


def test_full_disk_at_the_first_checkpoint_is_one_line_and_leaves_no_file(tmp_path, checkpoint_size):
    size = checkpoint_size
    with tmpfs(tmp_path / "disk", size // 2) as disk:
        result = run(synthetic_flags(tmp_path, checkpoint_dir=disk), tmp_path)
        error = one_line_error(result)
        # nothing to resume from yet, so no resume hint
        assert error == (f"error: cannot write {disk / 'run' / 'last.pth'}: {NO_SPACE}; free space or fix the "
                         "permissions")
        assert [p.name for p in (disk / "run").iterdir()] == []  # no temporary or partial file left behind


def test_full_disk_at_a_later_checkpoint_keeps_the_earlier_one(tmp_path, checkpoint_size):
    size = checkpoint_size
    # Room for epoch 1's last.pth and best.pth, not for epoch 2's new last.pth beside them.
    with tmpfs(tmp_path / "disk", 2 * size + size // 2) as disk:
        result = run(synthetic_flags(tmp_path, checkpoint_dir=disk, epochs=2), tmp_path)
        error = one_line_error(result)
        last = disk / "run" / "last.pth"
        assert error == (f"error: cannot write {last}: {NO_SPACE}; free space or fix the permissions, then "
                         "continue with --resume auto")
        assert sorted(p.name for p in (disk / "run").iterdir()) == ["best.pth", "last.pth"]
        assert last.read_bytes() == (disk / "run" / "best.pth").read_bytes()  # both written after epoch 1
        assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 1
        # epoch 2 was logged before its checkpoint failed; resuming from epoch 1 drops that row
        assert [row["epoch"] for row in read_metrics(tmp_path / "results" / "run" / "metrics.jsonl")] == [1, 2]


def test_full_disk_for_metrics_names_the_file(tmp_path):
    with tmpfs(tmp_path / "disk", 8192) as disk:  # two pages: args.json, and not all of epoch 1's metrics files
        result = run(synthetic_flags(tmp_path, save_path=disk, epochs=2), tmp_path)
        error = one_line_error(result)
        match = re.fullmatch(rf"error: cannot write ({re.escape(str(disk / 'run'))}/\S+): {NO_SPACE}; free space "
                             r"or fix the permissions", error)
        assert match, error
        assert match.group(1).rsplit("/", 1)[1] in ("metrics.jsonl", "metrics.csv", "curves.png")
        assert not [p for p in (disk / "run").iterdir() if p.name.startswith(".")]  # no temporary files
    # epoch 1's metrics are written before its checkpoint, so there is none to resume (and no resume hint)
    assert not (tmp_path / "checkpoint" / "run" / "last.pth").exists()


def test_full_disk_for_the_image_cache_is_an_error(tmp_path):
    """The decoded-image cache is written beside the data; a full disk there stops the run (its own files would
    meet it next), while a data folder that is only read-only trains on without the cache (test_data.py)."""
    with tmpfs(tmp_path / "disk", 48 * 4096) as disk:  # the 32 PNGs (a page each), not their 96 KiB cache
        make_image_folder(disk, classes=("cat", "dog"), per_class=8, size=32)
        result = run(["--dataset", "folder", "--data-dir", disk, "--img-size", "32",
                      *tiny_flags(tmp_path, run_name="run")], tmp_path)
        error = one_line_error(result)
        match = re.fullmatch(rf"error: cannot write ({re.escape(str(disk))}/\.upanets_cache_(train|val)_32\.pt): "
                             rf"{NO_SPACE}; free space or fix the permissions", error)
        assert match, error
        assert not Path(match.group(1)).exists()  # no partial cache ...
        assert not list(disk.glob("*.tmp")) and not list(disk.glob(".*.tmp"))  # ... and no temporary file


def test_read_only_data_folder_trains_without_the_cache(tmp_path):
    with tmpfs(tmp_path / "disk", 2**20) as disk:
        fake = make_image_folder(disk, classes=("cat", "dog"), per_class=3, size=16)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        cache = rf"{re.escape(str(disk))}/\.upanets_cache_(train|val)_16"
        with pytest.warns(UserWarning, match=f"cannot write cache {cache}"):
            bundle = sources.load_data("folder", disk, img_size=16, workers=0)
        assert torch.equal(bundle.train.images, torch.from_numpy(fake.train_images))
        assert not [p.name for p in disk.iterdir() if p.name.startswith(".")]


def test_atomic_write_leaves_another_writers_temporary_file_and_removes_an_old_one(tmp_path):
    """Temporary files of a killed writer go once they are an hour old; a younger one may be another process's
    write in progress (two runs writing the speed cache at once), which must not fail for it."""
    path = tmp_path / "speed.json"
    live, old = tmp_path / ".speed.json.abcd1234.tmp", tmp_path / ".speed.json.wxyz5678.tmp"
    live.write_text("being written")
    old.write_text("left by a killed writer")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    with files.atomic_write(path, "w") as f:
        f.write("{}")
    assert path.read_text() == "{}" and live.read_text() == "being written" and not old.exists()


# ---------------------------------------------------------------------------------------------- memory


def test_data_too_big_for_memory_fails_before_allocating(tmp_path):
    result = run(["--dataset", "synthetic", "--img-size", "4096", "--batch-size", "2", "--no-progress"], tmp_path)
    error = one_line_error(result)
    assert re.fullmatch(r"error: out of memory: the synthetic set at --img-size 4096 needs about [0-9,.]+ GiB of "
                        r"memory, more than the [0-9,.]+ GiB available; use a smaller --img-size", error), error
    assert "data:" not in result.stdout
    assert not list(tmp_path.rglob("*.pth"))


def test_out_of_memory_in_a_step_keeps_the_checkpoint(tmp_path):
    """A real allocation failure: a run resumed with a huge batch under a limited address space."""
    # The checkpoint comes from a quick epoch on a few images of the same size (the model is all that must match).
    make_image_folder(tmp_path / "few", classes=[str(c) for c in range(10)], per_class=2, size=64)
    first = run(["--dataset", "folder", "--data-dir", tmp_path / "few", "--img-size", "64",
                 *tiny_flags(tmp_path, run_name="run")], tmp_path)
    assert first.returncode == 0, first.stderr
    last = tmp_path / "checkpoint" / "run" / "last.pth"
    before = last.read_bytes()
    # Room for Python, torch and the data, not for the activations of a batch of 2,000 64x64 images.
    result = run(["--dataset", "synthetic", "--img-size", "64", "--resume", "auto",
                  *tiny_flags(tmp_path, run_name="run", epochs=2, batch_size=2000)], tmp_path, limit_bytes=6 * 2**30)
    error = one_line_error(result)
    assert re.fullmatch(r"error: out of memory on the CPU \(a request for [0-9.]+ GiB\); use a smaller "
                        r"--batch-size \(now 2000\), --img-size or --filters \(now 4\), then continue with "
                        r"--resume auto", error), error
    assert last.read_bytes() == before


def test_gpu_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys):
    """torch.OutOfMemoryError, as the CUDA allocator raises it, from a train step (raised here on the CPU)."""
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity "
                                     "of 79.19 GiB of which 1.25 GiB is free.")

    monkeypatch.setattr(engine, "train_step", out_of_memory)
    assert main.cli([str(flag) for flag in synthetic_flags(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: out of memory on the GPU (a request for 20.00 GiB); use a smaller --batch-size (now 250), "
        "--img-size or --filters (now 4)")


def test_out_of_memory_while_evaluating_names_only_what_evaluation_can_change(tmp_path, monkeypatch, capsys):
    """The evaluated weights fix the model and its image size: --batch-size is the one flag to change."""
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB.")

    monkeypatch.setattr(main, "evaluate", out_of_memory)
    flags = ["--evaluate", "--weights", ORIGINAL_CKPT, "--dataset", "synthetic", "--batch-size", "64", "--device", "cpu",
             "--amp", "off", "--no-channels-last", "--workers", "0", "--no-progress"]
    assert main.cli([str(flag) for flag in flags]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: out of memory on the GPU (a request for 3.00 GiB); use a smaller --batch-size (now 64)")


def test_unrelated_runtime_errors_are_not_reported_as_memory(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(engine, "train_step", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main.cli([str(flag) for flag in synthetic_flags(tmp_path)])
