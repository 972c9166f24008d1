"""Every bad input and fault the training CLI meets: it fails with exit 2 (or 128 + signal) and a one-line message
saying what is wrong, before doing any damage, and never loses or corrupts a checkpoint.

Each test runs `python main.py` as a subprocess (see helpers.py) and checks the exit code, the message and the
state of the checkpoint files afterwards.
"""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from upanets_lab import checkpoints as checkpointing
from upanets_lab.data.samples import make_cifar10, make_cifar100, make_image_folder, write_cifar_pickle

from helpers import ORIGINAL_CKPT, LineReader, child_env, one_line_error, read_metrics, run_main, run_script, tiny_flags

TIMING_FIELDS = ("epoch_seconds", "train_images_per_second")


# ------------------------------------------------------------------------------------------- helpers


def snapshot(*folders: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every file under the folders, to prove that a failed run touched nothing."""
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns)
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def all_weights_finite(folder: Path) -> bool:
    """Whether every checkpoint under folder holds only finite floating-point weights."""
    for path in folder.rglob("*.pth"):
        model = torch.load(path, map_location="cpu", weights_only=True)["model"]
        if not all(torch.isfinite(t).all() for t in model.values() if t.is_floating_point()):
            return False
    return True


def assert_nothing_started(result, cwd: Path):
    """Rejected before any work: nothing on stdout (no 'data:' line), nothing created, no traceback."""
    assert result.stdout == "", result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert list(cwd.iterdir()) == [], list(cwd.iterdir())


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A finished 1-epoch run 'good' on CIFAR-10 (40 train / 20 test); tests copy it with `copy_good_run`."""
    root = tmp_path_factory.mktemp("good_run")
    make_cifar10(root / "data", n_train=40, n_test=20)
    result = run_main(["--dataset", "cifar10", "--data-dir", root / "data", "--no-download",
                       *tiny_flags(root, run_name="good")], cwd=root)
    assert result.returncode == 0, result
    return root


def copy_good_run(good_run: Path, tmp_path: Path) -> dict[str, tuple[bytes, int]]:
    """Copy the good run's checkpoint/ and results/ into tmp_path (mtimes kept); return their snapshot."""
    for folder in ("checkpoint", "results"):
        shutil.copytree(good_run / folder, tmp_path / folder)
    assert (tmp_path / "checkpoint" / "good" / "last.pth").is_file()
    return snapshot(tmp_path / "checkpoint", tmp_path / "results")


# ------------------------------------------------------------------------------------ stop signals


@pytest.fixture(scope="module")
def signal_data(tmp_path_factory):
    """480 training images in batches of 8: 60 steps per epoch, so that a signal sent once training starts lands
    in the middle of the first epoch even when the machine is busy (test_resume_exact stops runs at chosen
    steps)."""
    root = tmp_path_factory.mktemp("signal_data")
    make_cifar10(root, n_train=480, n_test=20, seed=5)
    return root


def signal_run_flags(data_dir: Path, root: Path) -> list[str]:
    return ["--dataset", "cifar10", "--data-dir", data_dir, "--no-download", "--seed", "1",
            *tiny_flags(root, epochs=2, run_name="sig")]


@pytest.fixture(scope="module")
def uninterrupted_run(signal_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    result = run_main(signal_run_flags(signal_data, root), cwd=root)
    assert result.returncode == 0, result
    return root


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_stop_signal_mid_epoch_saves_and_resumes_exactly(signum, exit_code, signal_data, uninterrupted_run,
                                                         tmp_path, popen_cli, run_cli):
    proc = popen_cli(signal_run_flags(signal_data, tmp_path), cwd=tmp_path)
    reader = LineReader(proc)
    reader.wait_for("training sig ", timeout=120)
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == exit_code
    stdout, stderr = reader.finish()
    assert "Traceback" not in stderr and "epoch 1/2" not in stdout, (stdout, stderr)
    match = re.fullmatch(rf"stopped by signal {int(signum)} at epoch 1, step (\d+); "
                         r"continue by running the same command with --resume auto", stderr.strip())
    assert match, stderr
    step = int(match.group(1))
    assert 1 <= step < 60  # in the middle of the epoch

    ckpt_dir = tmp_path / "checkpoint" / "sig"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.pth"]  # no best.pth: no epoch finished
    last = torch.load(ckpt_dir / "last.pth", map_location="cpu", weights_only=True)
    (position,) = last["epoch_state"]["ranks"]
    assert last["epoch"] == 0 and position["step"] == step and int(position["seen"]) == 8 * step
    assert not (tmp_path / "results" / "sig" / "metrics.jsonl").exists()  # no epoch finished, nothing logged

    resumed = run_cli([*signal_run_flags(signal_data, tmp_path), "--resume", "auto"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed
    assert f"resumed from {ckpt_dir / 'last.pth'} at epoch 1, step {step}" in resumed.stdout
    rows = read_metrics(tmp_path / "results" / "sig" / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [1, 2]

    # nothing was lost: the interrupted-and-resumed run equals the uninterrupted one, bit for bit
    ref_rows = read_metrics(uninterrupted_run / "results" / "sig" / "metrics.jsonl")
    strip = lambda rows: [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]  # noqa: E731
    assert strip(rows) == strip(ref_rows)
    ref = torch.load(uninterrupted_run / "checkpoint" / "sig" / "last.pth", map_location="cpu", weights_only=True)
    got = torch.load(ckpt_dir / "last.pth", map_location="cpu", weights_only=True)
    assert got["epoch"] == 2 and got["epoch_state"] is None
    for key, tensor in ref["model"].items():
        assert torch.equal(got["model"][key], tensor), key


# --------------------------------------------------------------------------------- atomic checkpoints

_BIG_WRITER = """
import sys
import torch
from upanets_lab import checkpoints as checkpointing
state = {{"model": {{"big": torch.ones(75_000_000)}}, "epoch": 2}}  # 300 MB
print("writing", flush=True)
checkpointing.save_checkpoint(state, sys.argv[1])
print("written", flush=True)
"""


def _growing_file(path: Path, previous_size: int) -> Path | None:
    """A file that a writer of `path` is filling: a temp file beside it or `path` itself (a writer that is not
    atomic), once past the previous file's size and 1 MB."""
    for candidate in (*path.parent.glob(f".{path.name}.*.tmp"), path):
        try:
            if candidate.stat().st_size > max(previous_size, 1_000_000):
                return candidate
        except FileNotFoundError:  # renamed or removed since it was listed
            pass
    return None


def test_sigkill_while_saving_leaves_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "run" / "last.pth"
    previous = {"model": {"w": torch.arange(10.0)}, "epoch": 1}
    checkpointing.save_checkpoint(previous, path)
    before = path.read_bytes()
    script = tmp_path / "writer.py"
    script.write_text(_BIG_WRITER.format())
    proc = subprocess.Popen([sys.executable, str(script), str(path)], env=child_env(), stdout=subprocess.PIPE,
                            text=True)
    try:
        deadline, partial = time.monotonic() + 60, None
        # Any partial write counts, so that a writer that is not atomic is killed mid-write too and fails below.
        while partial is None and time.monotonic() < deadline and proc.poll() is None:
            partial = _growing_file(path, len(before))
            if partial is None:
                time.sleep(0.002)
        assert partial is not None and proc.poll() is None, "the writer finished before it could be killed"
        proc.kill()  # SIGKILL: no handler, no cleanup
        assert proc.wait(timeout=30) == -signal.SIGKILL
        written = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    try:
        assert "written" not in written
        assert path.read_bytes() == before  # the previous checkpoint is untouched...
        loaded = torch.load(path, weights_only=True)  # ...and loads
        assert loaded["epoch"] == 1 and torch.equal(loaded["model"]["w"], previous["model"]["w"])
        assert partial.stat().st_size < 300_000_000  # the kill landed mid-write
    finally:
        partial.unlink()  # hundreds of MB left by the killed writer (in a dot-file, unless it wrote over the target)


# ---------------------------------------------------------------------------------- non-finite loss


@pytest.mark.parametrize("n_train, message", [
    (40, "training loss became non-finite at epoch 1, step 2; stopped without saving"),
    # a single step: the loss it reports is finite, but the update it makes ruins the weights
    (8, "test loss became non-finite after epoch 1, step 1; stopped without saving"),
], ids=["during-epoch", "after-last-step"])
def test_non_finite_loss_stops_without_saving(n_train, message, tmp_path, run_cli):
    make_cifar10(tmp_path / "data", n_train=n_train, n_test=20)
    result = run_cli(["--dataset", "cifar10", "--data-dir", tmp_path / "data", "--no-download", "--lr", "1e30",
                      *tiny_flags(tmp_path, epochs=2)], cwd=tmp_path)
    error = one_line_error(result)
    assert error.startswith(f"error: {message} (the last checkpoint is kept). Try a lower --lr or --amp off"), error
    assert not list(tmp_path.glob("checkpoint/**/*.pth"))  # no checkpoint, let alone a NaN one
    assert not (tmp_path / "results" / "cifar10-upanets4" / "metrics.jsonl").exists()


def test_stop_signal_after_non_finite_loss_saves_nothing(tmp_path, popen_cli):
    """A stop between two loss checks must not save the ruined weights as a resumable checkpoint."""
    make_cifar10(tmp_path / "data", n_train=400, n_test=10)  # 50 steps: the only loss check is at the end
    proc = popen_cli(["--dataset", "cifar10", "--data-dir", tmp_path / "data", "--no-download", "--lr", "1e30",
                      *tiny_flags(tmp_path)], cwd=tmp_path)
    reader = LineReader(proc)
    reader.wait_for("training ", timeout=120)
    time.sleep(1.0)  # some steps in: the loss has been NaN since step 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 2
    _, stderr = reader.finish()
    assert "Traceback" not in stderr
    assert re.fullmatch(r"error: training loss became non-finite at epoch 1, step [23]; stopped without saving "
                        r"\(the last checkpoint is kept\)\. Try a lower --lr or --amp off", stderr.strip()), stderr
    assert not list(tmp_path.glob("checkpoint/**/*.pth"))


def test_non_finite_loss_keeps_the_previous_checkpoint(good_run, tmp_path, run_cli):
    before = copy_good_run(good_run, tmp_path)
    ckpts = {k: v for k, v in before.items() if k.endswith(".pth")}
    result = run_cli(["--dataset", "cifar10", "--data-dir", good_run / "data", "--no-download", "--lr", "1e30",
                      "--overwrite", *tiny_flags(tmp_path, run_name="good")], cwd=tmp_path)
    error = one_line_error(result)
    assert "training loss became non-finite at epoch 1, step 2; stopped without saving" in error
    assert snapshot(tmp_path / "checkpoint") == ckpts  # last.pth and best.pth: same bytes, same mtimes
    assert all_weights_finite(tmp_path / "checkpoint")
    for name in ("metrics.jsonl", "metrics.csv"):  # the replaced run's metrics are kept too
        assert (tmp_path / "results" / "good" / name).read_bytes() == (good_run / "results" / "good" / name).read_bytes()


# ------------------------------------------------------------------------------- loading checkpoints


class _WritesMarker:
    """Unpickling this calls open(marker, 'w'): a stand-in for a checkpoint that runs code on load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _bad_checkpoint(kind: str, tmp_path: Path, good_run: Path) -> tuple[Path, str]:
    """Write a bad checkpoint of the given kind; return its path and the message fragment it must get."""
    path = tmp_path / f"{kind}.pth"
    good = (good_run / "checkpoint" / "good" / "last.pth").read_bytes()
    cannot_read = f"cannot read checkpoint {path}: the file is truncated, corrupt or not a PyTorch checkpoint ("
    if kind == "code-on-load":
        marker = tmp_path / "MARKER"
        torch.save({"model": _WritesMarker(marker), "epoch": 1}, path)
        # the payload is live: an unsafe load does run it
        torch.load(path, weights_only=False)
        assert marker.exists()
        marker.unlink()
        return path, (f"refusing to load {path}: unpickling it would import io.open, which can run code; "
                      "only checkpoints of tensors and plain Python values are accepted")
    if kind == "truncated":
        path.write_bytes(good[:len(good) // 2])
        return path, cannot_read
    if kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        return path, cannot_read
    if kind == "text-file":
        path.write_text("epoch 1 | train loss 2.3\n")
        return path, cannot_read
    if kind == "saved-list":
        torch.save([torch.zeros(3), 1], path)
        return path, f"{path} is not a checkpoint: expected a dict, got list"
    if kind == "other-architecture":
        shutil.copy(ORIGINAL_CKPT, path)
        return path, (f"{path} holds UPANets(filters=8, num_classes=10, blocks=1, img=32) but this run builds "
                      "UPANets(filters=4, num_classes=10, blocks=1, img=32); match --filters/--blocks/--dataset "
                      "to the checkpoint")
    raise AssertionError(kind)


BAD_CHECKPOINTS = ["code-on-load", "truncated", "random-bytes", "text-file", "saved-list", "other-architecture"]


@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
def test_evaluate_refuses_bad_checkpoint(kind, good_run, tmp_path, run_cli):
    path, fragment = _bad_checkpoint(kind, tmp_path, good_run)
    result = run_cli(["--evaluate", "--weights", path, "--dataset", "cifar10", "--data-dir", good_run / "data",
                      "--no-download", "--filters", "4", "--workers", "0", "--no-progress"], cwd=tmp_path)
    assert one_line_error(result).startswith(f"error: {fragment}")
    assert "evaluate " not in result.stdout
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("kind", ["code-on-load", "truncated", "other-classes"])
def test_resume_refuses_bad_checkpoint(kind, good_run, tmp_path, run_cli):
    if kind == "other-classes":  # the good run's CIFAR-10 checkpoint, for a 100-class run
        path = tmp_path / "cifar10.pth"
        shutil.copy(good_run / "checkpoint" / "good" / "last.pth", path)
        fragment = (f"{path} holds UPANets(filters=4, num_classes=10, blocks=1, img=32) but this run builds "
                    "UPANets(filters=4, num_classes=100, blocks=1, img=32)")
        make_cifar100(tmp_path / "data", n_train=16, n_test=4)
        data_flags = ["--dataset", "cifar100", "--data-dir", tmp_path / "data"]
    else:
        path, fragment = _bad_checkpoint(kind, tmp_path, good_run)
        data_flags = ["--dataset", "cifar10", "--data-dir", good_run / "data"]
    result = run_cli([*data_flags, "--no-download", "--resume", path, *tiny_flags(tmp_path, run_name="new")],
                     cwd=tmp_path)
    assert one_line_error(result).startswith(f"error: {fragment}")
    assert "training " not in result.stdout
    assert not (tmp_path / "MARKER").exists()
    assert not (tmp_path / "checkpoint").exists()


def test_resume_refuses_weights_only_checkpoint(tmp_path, run_cli):
    make_cifar10(tmp_path / "data", n_train=16, n_test=4)
    result = run_cli(["--dataset", "cifar10", "--data-dir", tmp_path / "data", "--no-download", "--resume",
                      ORIGINAL_CKPT, *tiny_flags(tmp_path, filters=8)], cwd=tmp_path)
    assert one_line_error(result) == (f"error: {ORIGINAL_CKPT} holds weights only; it cannot be resumed "
                                      "(start a new run instead)")
    assert "data:" not in result.stdout  # refused before the data is read or speeds are measured
    assert not (tmp_path / "checkpoint").exists()


# ------------------------------------------------------------------------------------------ bad data


def _cifar_with(tmp_path: Path, file: str, damage) -> tuple[list, Path]:
    make_cifar10(tmp_path / "data", n_train=20, n_test=10)
    path = tmp_path / "data" / "cifar-10-batches-py" / file
    damage(path)
    return ["--dataset", "cifar10", "--data-dir", tmp_path / "data"], path


def _folder_with(tmp_path: Path, damage) -> tuple[list, Path]:
    make_image_folder(tmp_path / "data", classes=("cat", "dog"), per_class=4, size=16)
    return ["--dataset", "folder", "--data-dir", tmp_path / "data", "--img-size", "16"], damage(tmp_path / "data")


def _empty_class(root: Path) -> Path:
    for image in (root / "train" / "dog").iterdir():
        image.unlink()
    return root / "train" / "dog"


def _unreadable_image(root: Path) -> Path:
    path = root / "val" / "cat" / "1.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    return path


def _batch(n: int, data_shape=None, labels=None) -> dict:
    data = np.zeros(data_shape or (n, 3072), dtype=np.uint8)
    return {"batch_label": "training batch 2 of 5", "data": data, "labels": labels or [0] * n,
            "filenames": [f"{i}.png" for i in range(n)]}


BAD_DATA = {
    "missing-dir": (lambda tmp: (["--dataset", "cifar10", "--data-dir", tmp / "nowhere"],
                                 tmp / "nowhere" / "cifar-10-batches-py"),
                    "CIFAR-10 not found at {path}; pass --download to fetch it"),
    "truncated-batch": (lambda tmp: _cifar_with(tmp, "data_batch_1", lambda p: p.write_bytes(
        p.read_bytes()[:len(p.read_bytes()) // 2])), "{path} is truncated or corrupt"),
    "corrupt-pickle": (lambda tmp: _cifar_with(tmp, "test_batch", lambda p: p.write_bytes(
        np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())), "{path} is truncated or corrupt"),
    "wrong-image-shape": (lambda tmp: _cifar_with(tmp, "data_batch_2", lambda p: write_cifar_pickle(
        p, _batch(4, data_shape=(4, 3000)), True)), "{path}: 'data' is uint8 (4, 3000), expected uint8 (N, 3072)"),
    "label-out-of-range": (lambda tmp: _cifar_with(tmp, "data_batch_3", lambda p: write_cifar_pickle(
        p, _batch(4, labels=[0, 3, 10, 9]), True)), "{path}: labels span [0, 10], outside [0, 10)"),
    "empty-class-folder": (lambda tmp: _folder_with(tmp, _empty_class), "{path} has no images"),
    "unreadable-image": (lambda tmp: _folder_with(tmp, _unreadable_image), "cannot read image {path} ("),
}


@pytest.mark.parametrize("kind", list(BAD_DATA))
def test_bad_data_is_rejected_and_existing_checkpoint_kept(kind, good_run, tmp_path, run_cli):
    make, message = BAD_DATA[kind]
    data_flags, path = make(tmp_path)
    before = copy_good_run(good_run, tmp_path)
    result = run_cli([*data_flags, "--no-download", "--resume", "auto",
                      *tiny_flags(tmp_path, run_name="good", epochs=2)], cwd=tmp_path)
    error = one_line_error(result)
    assert message.format(path=path) in error, error
    assert "data:" not in result.stdout
    assert snapshot(tmp_path / "checkpoint", tmp_path / "results") == before


# ---------------------------------------------------------------------------------------- bad flags


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "-1"], "error: --epochs must be a positive integer, got -1"),
    (["--batch-size", "0"], "error: --batch-size must be a positive integer, got 0"),
    (["--filters", "6"], "error: --filters must be a positive multiple of 4*blocks = 4, got filters=6"),
    (["--lr", "nan"], "error: --lr must be a positive number, got nan"),
    (["--lr", "1e39"], "error: --lr must be at most 3.403e+38, got 1e+39"),
    (["--resume", "missing.pth"], "error: --resume missing.pth: no checkpoint at missing.pth"),
    (["--evaluate"], "error: --evaluate needs --weights PATH (a checkpoint to evaluate)"),
    (["--evaluate", "--weights", "/tmp"], "error: /tmp is a folder; give a checkpoint file in it, such as /tmp/best.pth"),
    (["--batch-size", "1"], "error: --batch-size must be at least 2 for training (BatchNorm needs two samples a batch)"),
    (["--seed", "-1"], "error: --seed must be >= 0, got -1"),
    (["--checkpoint-dir", "/dev/null"], "error: cannot write to /dev/null/cifar10-upanets16: "
                                        "/dev/null is not a writable folder (not a folder)"),
    # root passes permission checks there, yet no folder can be made
    (["--save-path", "/proc/x"], "error: cannot write to /proc/x/cifar10-upanets16: /proc is not a writable "
                                 "folder (No such file or directory)"),
], ids=["negative-epochs", "zero-batch", "filters-6", "lr-nan", "lr-overflows-float32", "resume-missing",
        "evaluate-no-weights", "weights-a-folder", "batch-of-one", "negative-seed", "checkpoint-dir-is-a-file", "save-path-in-proc"])
def test_bad_flags_are_rejected_before_any_work(flags, message, tmp_path, run_cli):
    started = time.monotonic()
    # --no-download: were a check missing, the run would stop at once on the missing ./data (another error
    # message) rather than try the network
    result = run_cli([*flags, "--no-download"], cwd=tmp_path)
    assert one_line_error(result) == message
    assert_nothing_started(result, tmp_path)
    assert time.monotonic() - started < 30


def test_unknown_dataset_is_a_usage_error(tmp_path, run_cli):
    result = run_cli(["--dataset", "mnist"], cwd=tmp_path)
    assert one_line_error(result) == (
        "error: argument --dataset/--datasets: unknown dataset 'mnist' (choose from cifar10, cifar100, "
        "tiny-imagenet, folder, synthetic, cifar_10, cifar_100, tiny_imgnet) (see main.py --help)")
    assert_nothing_started(result, tmp_path)


# ------------------------------------------------------------------------------------ run name clash


def test_second_run_with_same_name_refuses_then_overwrite_runs(good_run, tmp_path, run_cli):
    before = copy_good_run(good_run, tmp_path)
    flags = ["--dataset", "cifar10", "--data-dir", good_run / "data", "--no-download", "--seed", "7",
             *tiny_flags(tmp_path, run_name="good")]
    result = run_cli(flags, cwd=tmp_path)
    ckpt_dir = tmp_path / "checkpoint" / "good"
    assert one_line_error(result) == (f"error: run 'good' already exists ({ckpt_dir / 'last.pth'}); pass --resume "
                                      "auto to continue it, --overwrite to start it over, or choose another --run-name")
    assert result.stdout == ""
    assert snapshot(tmp_path / "checkpoint", tmp_path / "results") == before

    result = run_cli([*flags, "--overwrite"], cwd=tmp_path)
    assert result.returncode == 0, result
    last = torch.load(ckpt_dir / "last.pth", map_location="cpu", weights_only=True)
    assert last["args"]["seed"] == 7 and last["epoch"] == 1  # a new run replaced the old one
    assert before[str(ckpt_dir / "last.pth")][0] != (ckpt_dir / "last.pth").read_bytes()
    assert [row["epoch"] for row in read_metrics(tmp_path / "results" / "good" / "metrics.jsonl")] == [1]


@pytest.mark.parametrize("script, flags", [
    ("main.py", ["--epochs", "ten"]),
    ("main.py", ["--dataset", "imagenet"]),
    ("main.py", ["--model", "resnet1000"]),
    ("predict.py", ["--weights", "x.pth", "--topk", "many", "a.png"]),
    ("export.py", ["--weights", "x.pth", "--format", "tflite"]),
    ("landscape.py", ["--weights", "x.pth", "--points", "x"]),
    ("compare.py", ["runs", "--no-such-flag"]),
    ("sampledata.py", ["digits", "out", "--size", "x"]),
], ids=["main-int", "main-dataset", "main-model", "predict", "export", "landscape", "compare", "sampledata"])
def test_every_scripts_flag_errors_are_one_line(script, flags, tmp_path):
    """argparse's own errors too: one `error:` line naming the flag, exit code 2; --help still shows the usage."""
    result = run_script(script, flags, cwd=tmp_path)
    line = one_line_error(result)
    named = [flag for flag in flags if flag.startswith("--")]
    assert any(flag in line for flag in named) and line.endswith(f"(see {script} --help)"), line
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_an_unknown_model_names_the_nearest_ones(tmp_path):
    result = run_script("main.py", ["--model", "resnet19"], cwd=tmp_path)
    assert one_line_error(result) == ("error: argument --model: unknown model 'resnet19'; did you mean resnet18 or "
                                      "resnet152 or resnet101? (see main.py --help)")


def test_help_still_shows_the_usage(tmp_path):
    result = run_script("main.py", ["--help"], cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("usage: main.py")
    assert "--model NAME" in result.stdout and "upanets16" in result.stdout
