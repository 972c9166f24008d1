"""What a run keeps and drops when it resumes or restarts, and flags that reach the layers below. All in-process,
in about a second each.

* logs.MetricsLogger drops the rows past the epoch a run resumes from;
* main.py --stream reaches sources.load_data, so image-file sets are streamed rather than held in memory;
* distributed.init_distributed passes --dist-timeout to the process group (collectives), not only to the rendezvous;
* a mid-epoch checkpoint replays its epoch only for the same processes, batch size and seed (else restarts it).
"""
from __future__ import annotations

import argparse
import json
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from models.upanets import UPANets
from upanets_lab import commandline, errors
from upanets_lab.checkpoints import read_checkpoint
from upanets_lab.data import augment, decoding, sources
from upanets_lab.data.samples import make_image_folder
from upanets_lab.training import distributed, logs
from upanets_lab.training.checkpointing import Checkpointer, Selection, epoch_position
from upanets_lab.training.engine import EpochState, Runtime, Trainer
from upanets_lab.training.optimization import build_optimizer

import main
from helpers import read_metrics, tiny_flags


def _row(epoch: int, train_loss: float) -> dict:
    return {**{field: 1.0 for field in logs.METRIC_FIELDS}, "epoch": epoch, "train_loss": train_loss}


def test_metrics_logger_drops_rows_past_the_resumed_epoch(tmp_path):
    """A run that logged epoch 3 but crashed before its checkpoint resumes from epoch 2: the stale row 3 goes,
    the new one takes its place (in metrics.jsonl and metrics.csv); a fresh start (start_epoch 0) keeps nothing."""
    stale = [_row(epoch, 9.0) for epoch in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in stale))
    logs.MetricsLogger(tmp_path, start_epoch=2).log(_row(3, 0.5))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [(row["epoch"], row["train_loss"]) for row in rows] == [(1, 9.0), (2, 9.0), (3, 0.5)]
    csv_epochs = [line.split(",")[0] for line in (tmp_path / "metrics.csv").read_text().splitlines()[1:]]
    assert csv_epochs == ["1", "2", "3"]

    logs.MetricsLogger(tmp_path, start_epoch=0).log(_row(1, 0.25))
    assert [(row["epoch"], row["train_loss"]) for row in read_metrics(tmp_path / "metrics.jsonl")] == [(1, 0.25)]


class _Loaded(Exception):
    """Stops main.main once the data is loaded: what follows is not under test."""


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "in-memory"])
def test_stream_flag_streams_image_files(stream, tmp_path, monkeypatch):
    """--stream gives a streamed training set (decoded from disk every epoch); without it a small set is held in
    memory. Checked on the set main.py loads, before any training."""
    make_image_folder(tmp_path / "data", per_class=4, val_per_class=2, size=8)
    load_data, loaded = sources.load_data, []

    def recording_load_data(*args, **kwargs):
        loaded.append(load_data(*args, **kwargs))
        raise _Loaded

    monkeypatch.setattr(sources, "load_data", recording_load_data)
    flags = ["--dataset", "folder", "--data-dir", tmp_path / "data", "--img-size", "8", "--device", "cpu",
             *tiny_flags(tmp_path), *(["--stream"] if stream else [])]
    with pytest.raises(_Loaded):
        main.main(main.get_args_parser().parse_args([str(flag) for flag in flags]))
    expected = decoding.StreamingDataset if stream else decoding.ImageDataset
    assert isinstance(loaded[0].train, expected) and isinstance(loaded[0].test, expected)


def test_init_distributed_passes_the_timeout_to_the_process_group(monkeypatch):
    """--dist-timeout bounds the collectives too (init_process_group's timeout), not only joining the group:
    without it a rank whose peer died waits torch's default 30 minutes in its next all-reduce."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    store, calls = dist.HashStore(), {}

    def rendezvous(url, timeout):
        calls["rendezvous"] = timeout
        yield store, 0, 2

    monkeypatch.setattr(dist, "rendezvous", rendezvous)
    monkeypatch.setattr(distributed, "_fresh_store", lambda store, context, timeout: calls.update(store=timeout) or store)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.update(group=kwargs))
    context = distributed.init_distributed("cpu", timeout=7)
    limit = timedelta(seconds=7)
    assert calls["rendezvous"] == calls["store"] == limit
    assert calls["group"].get("timeout") == limit and calls["group"]["backend"] == "gloo"
    assert (context.rank, context.world_size, context.store) == (0, 2, store) and context.job


def _checkpointer(folder, world_size: int, batch_size: int = 8, seed: int = 0, rank: int = 0) -> Checkpointer:
    model = UPANets(4, 10, 1, 8)
    optimizer = build_optimizer(model, "sgd", lr=0.1, momentum=0.9, weight_decay=0.0)
    transform = augment.DeviceTransform((0.5,) * 3, (0.25,) * 3, device="cpu", pad=1, flip=True)
    trainer = Trainer(model, nn.CrossEntropyLoss(), optimizer, torch.amp.GradScaler("cpu", enabled=False), transform)
    runtime = Runtime(torch.device("cpu"), context=distributed.DistributedContext(rank=rank, world_size=world_size))
    return Checkpointer(folder, model, trainer, argparse.Namespace(batch_size=batch_size, seed=seed), runtime, {})


def _positions(saver: Checkpointer, world_size: int) -> list[dict]:
    """Mid-epoch positions at step 3 of ``world_size`` processes, each with its own sums and generator state."""
    positions = []
    for rank in range(world_size):
        state = EpochState.zeros(torch.device("cpu"))
        state.step = 3
        state.seen += 24 + rank
        saver.trainer.augment.generator.manual_seed(123 + rank)
        positions.append(epoch_position(state, saver.trainer))
    return positions


@pytest.mark.parametrize("saved_world, resumed_world, batch_size, seed, replays", [
    (1, 1, 8, 0, True),
    (2, 2, 8, 0, True),  # each process resumes its own position
    (2, 1, 8, 0, False),  # torchrun's batches and augmentation streams are not one process's
    (1, 2, 8, 0, False),
    (1, 1, 16, 0, False),
    (1, 1, 8, 1, False),
], ids=["same", "same-ddp", "ddp-to-single", "single-to-ddp", "other-batch-size", "other-seed"])
def test_mid_epoch_checkpoint_replays_only_the_same_batches(saved_world, resumed_world, batch_size, seed, replays,
                                                             tmp_path):
    """Checkpointer.restore continues inside the epoch (its step, sums and augmentation RNG) only when the
    resumed run would draw the same batches; otherwise it resumes at the start of that epoch."""
    saver = _checkpointer(tmp_path, saved_world)
    positions = _positions(saver, saved_world)
    saver.save(0, Selection(), positions=positions)
    for rank in range(resumed_world):
        resumer = _checkpointer(tmp_path, resumed_world, batch_size, seed, rank=rank)
        point = resumer.restore(read_checkpoint(saver.last))
        assert point.epoch == 0
        if replays:
            assert point.epoch_state is not None and point.epoch_state.step == 3
            assert int(point.epoch_state.seen) == 24 + rank
            assert torch.equal(point.augment_state, positions[rank]["augment_rng"])
        else:
            assert point.epoch_state is None and point.augment_state is None


def test_a_mid_epoch_checkpoint_of_the_earlier_format_replays_in_one_process_only(tmp_path):
    """Before ``ranks`` existed, a mid-epoch checkpoint held rank 0's position at the top of ``epoch_state``."""
    for world_size, replays in ((1, True), (2, False)):
        saver = _checkpointer(tmp_path, world_size)
        state = saver.state(0, Selection(), _positions(saver, 1))
        state["epoch_state"].update(state["epoch_state"].pop("ranks")[0])
        torch.save(state, tmp_path / "old.pth")
        point = _checkpointer(tmp_path, world_size).restore(read_checkpoint(tmp_path / "old.pth"))
        assert (point.epoch_state is not None) == replays
        if replays:
            assert point.epoch_state.step == 3 and point.augment_state is not None


@pytest.mark.parametrize("error, line", [
    (errors.WriteError(28, "No space left on device", "/runs/last.pth"),
     "error: cannot write /runs/last.pth: No space left on device; free space or fix the permissions, then go on"),
    (errors.WriteError(21, "Is a directory", "/runs/out"),
     "error: cannot write /runs/out: Is a directory; give a file, not a folder, then go on"),
    (PermissionError(13, "Permission denied", "/data/train"),
     "error: cannot use /data/train: Permission denied, then go on"),
    (errors.DataError("/data/x.png is truncated"), "error: /data/x.png is truncated"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB."),
     "error: out of memory on the GPU (a request for 2.00 GiB); use less, then go on"),
], ids=["full-disk", "written-path-is-a-folder", "unreadable-folder", "data-error", "out-of-memory"])
def test_run_cli_turns_what_a_user_can_fix_into_one_line(error, line, capsys):
    """A failed write says so and how to go on; other file errors do not claim to be writes."""
    def run() -> None:
        raise error

    assert commandline.run_cli(run, memory_remedy=lambda: "use less", after_failure=lambda: ", then go on") == 2
    assert capsys.readouterr().err.splitlines() == [line]
    with pytest.raises(RuntimeError, match="not about memory"):
        commandline.run_cli(lambda: (_ for _ in ()).throw(RuntimeError("not about memory")), memory_remedy=lambda: "")
