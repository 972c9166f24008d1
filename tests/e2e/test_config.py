"""``--config FILE`` (YAML, or a run's args.json) and the command line itself: defaults shown, no abbreviations,
one-line errors for keys and values that do not fit."""
from __future__ import annotations

import argparse
import json
import os

import pytest

from upanets_lab import commandline
from upanets_lab.errors import UserError
from upanets_lab.training import logs

import main
from helpers import one_line_error, run_main


def parse(argv: list[str]) -> argparse.Namespace:
    args = argparse.Namespace()
    return commandline.parse_args(main.get_args_parser(), argv, args, record_keys=logs.RECORD_KEYS)


def test_config_sets_defaults_that_flags_override(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("epochs: 7\nbatch-size: 32\nlr: 0.05\nhead: last\nmodel_ema: true\nauto_augment: ta_wide\n"
                      "data_dir: some/where\nresume: auto\n")
    args = parse(["--config", str(config), "--lr", "0.2"])
    assert (args.epochs, args.batch_size, args.lr, args.head, args.model_ema) == (7, 32, 0.2, "last", True)
    assert args.auto_augment == "ta_wide" and str(args.data_dir) == "some/where"
    assert args.resume is None  # what an invocation does (resume, evaluate, ...) comes from its command line only
    assert parse([]).epochs == 100  # a parser is not left with another run's defaults


@pytest.mark.parametrize("content, message", [
    ("epochs: 2\nepoch: 3\nfoo: 1\n", "unknown keys epoch, foo"),
    ("epochs: ten\n", "epochs must be an integer, got 'ten'"),
    ("epochs: 2.5\n", "epochs must be an integer, got 2.5"),
    ("lr: [0.1]\n", "lr must be one value, got [0.1]"),
    ("lr: fast\n", "lr must be a number, got 'fast'"),
    ("head: middle\n", "head must be one of exc, exc-gap, last"),
    ("model_ema: 1\n", "model_ema must be true or false"),
    ("dataset: imagenet\n", "dataset: unknown dataset 'imagenet' (choose from cifar10"),
    ("epochs: null\n", "epochs must have a value"),
    ("- epochs\n", "expected a mapping of flag names to values, got list"),
    ("epochs: [\n", "not YAML or JSON"),
], ids=["unknown", "word", "fraction", "list", "not-a-number", "choice", "bool", "dataset", "null", "not-a-mapping",
        "broken"])
def test_config_keys_and_values_are_checked(content, message, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")) as info:
        parse(["--config", str(config)])
    assert str(info.value).startswith(f"--config {config}: ")


def test_config_errors_are_one_line_before_any_work(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("batch_size: 8\nlearning_rate: 0.1\n")
    error = one_line_error(run_main(["--config", config, "--dataset", "synthetic"], cwd=tmp_path))
    assert error == (f"error: --config {config}: unknown key learning_rate (keys are main.py's flags, e.g. "
                     "batch_size; see --help)")
    missing = one_line_error(run_main(["--config", tmp_path / "missing.yaml"], cwd=tmp_path))
    assert missing.startswith(f"error: --config {tmp_path / 'missing.yaml'}: cannot read it (No such file")
    assert not (tmp_path / "checkpoint").exists() and not (tmp_path / "results").exists()


def test_an_args_json_is_a_config(tmp_path):
    """What main.py writes as args.json reads back as the same flags, its record keys skipped."""
    args = parse(["--epochs", "3", "--head", "exc-gap", "--recipe", "fast", "--seed", "4"])
    record = {**{key: value for key, value in vars(args).items()}, "model_config": {"filters": 16},
              "data": {}, "speed_choice": {}, "job": None, "provenance": {}, "command": ["python main.py"],
              "status": {"state": "done"}}
    path = tmp_path / "args.json"
    path.write_text(json.dumps(record, default=str))
    again = parse(["--config", str(path), "--run-name", "again"])
    assert {**vars(again), "run_name": None, "config": None} == {**vars(args), "config": None}


def test_help_shows_defaults_and_groups(capsys):
    with pytest.raises(SystemExit):
        main.get_args_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for expected in ("--epochs EPOCHS", "(default: 100)", "--lr LR", "(default: 0.1)", "(default: 100)",
                     "data:", "model:", "optimisation", "augmentation", "evaluation:", "speed:", "output:",
                     "distributed (under torchrun):"):
        assert expected in text, expected
    assert "(default: None)" not in text and "(default: False)" not in text


def test_abbreviations_are_refused(capsys):
    """``--epoch 1`` is not taken for --epochs."""
    with pytest.raises(SystemExit) as info:
        main.get_args_parser().parse_args(["--epoch", "1"])
    assert info.value.code == 2 and "unrecognized arguments: --epoch 1" in capsys.readouterr().err


def test_workers_default_to_the_cores_at_most_four():
    cores = len(os.sched_getaffinity(0))
    assert main.get_args_parser().parse_args([]).workers == min(4, cores) == commandline.default_workers()
