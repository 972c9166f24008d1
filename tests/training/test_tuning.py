"""tuning.py: --amp auto and an unset --channels-last pick the fastest option measured on this machine (a tie
within the margin going to the preferred option).

Most tests replace the timing with fixed rates per option, so the choice, the rounds, the cache and the
flags' limits are checked exactly; one test times the real steps of a tiny model.
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from models.upanets import UPANets
from upanets_lab.data.samples import make_cifar10
from upanets_lab.training import tuning
from upanets_lab.training.distributed import DistributedContext

from helpers import read_metrics, tiny_flags

# images/s per option, as a machine where bf16 is fast might give them
RATES = {"fp32": 100.0, "fp32 + channels_last": 120.0, "bf16": 200.0, "bf16 + channels_last": 230.0}


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def stub_timing(monkeypatch, rates: dict[str, float], first_step: float = 1.0) -> list[str]:
    """Steps that cost nothing and time at ``rates[option]`` (a first step alone at ``first_step`` times that);
    returns the list of options timed in full, in order."""
    timed = []

    def probe_step(model, amp, channels_last, device, batch_size, train, config=None):
        def step() -> None:
            pass

        step.option = tuning.label(amp, channels_last)
        return step

    def time_steps(step, device, batch_size, max_steps=tuning.MAX_TIMED_STEPS):
        if max_steps > 1:  # the first step alone is timed too, but only to drop hopeless options
            timed.append(step.option)
        return rates[step.option] * (first_step if max_steps == 1 else 1.0)

    monkeypatch.setattr(tuning, "probe_step", probe_step)
    monkeypatch.setattr(tuning, "time_steps", time_steps)
    return timed


@pytest.fixture
def fake_timing(monkeypatch):
    """Timing at RATES (read when timed, so a test may change them); the options timed in full, in order."""
    return stub_timing(monkeypatch, RATES)


def choose(model: UPANets | None = None, **overrides) -> tuning.SpeedChoice:
    kwargs = dict(amp_flag="auto", channels_last_flag=None, device=torch.device("cpu"), batch_size=100, train=True,
                  context=DistributedContext(), stored=None)
    kwargs.update(overrides)
    return tuning.choose(model or UPANets(4, 10, 1, 8), **kwargs)


def test_the_fastest_option_wins_and_is_cached(cache_home, fake_timing):
    choice = choose()
    assert (choice.amp, choice.channels_last, choice.source) == ("bf16", True, "measured")
    assert choice.rates == RATES and choice.amp_dtype is torch.bfloat16
    # the likely-fast options first, then a second round in the other order; fp32's first step ran at under half
    # the best rate, so it was not timed further
    order = ["bf16 + channels_last", "bf16", "fp32 + channels_last"]
    assert fake_timing == [*order, *reversed(order)]
    cache = json.loads((cache_home / "upanets" / "speed.json").read_text())
    assert cache["version"] == tuning.CACHE_VERSION and list(cache["entries"].values()) == [RATES]
    key = json.loads(next(iter(cache["entries"])))
    assert key["model"] == {"filters": 4, "num_classes": 10, "blocks": 1, "img": 8, "head": "exc"}
    assert key["batch_size"] == 100 and key["step"] == "train"
    assert key["threads"] == torch.get_num_threads() and key["device"] == tuning.device_name(torch.device("cpu"))

    fake_timing.clear()
    again = choose()
    assert (again.amp, again.channels_last, again.source, again.rates) == ("bf16", True, "cache", RATES)
    assert fake_timing == []  # the second run measures nothing
    assert choose(batch_size=50).source == "measured"  # another batch size is another entry


def test_an_option_whose_first_step_runs_at_under_half_the_best_is_not_timed(cache_home, monkeypatch):
    """On the CPU a first step is at most about 30% slower than later ones: one at half the best rate cannot win."""
    rates = {"bf16 + channels_last": 400.0, "bf16": 300.0, "fp32 + channels_last": 300.0, "fp32": 100.0}
    timed = stub_timing(monkeypatch, rates, first_step=0.8)  # a first step is slower than later ones
    choice = choose()
    assert choice.label == "bf16 + channels_last"
    assert "fp32" not in timed and set(timed) == {"bf16 + channels_last", "bf16", "fp32 + channels_last"}
    assert choice.rates["fp32"] == 80.0  # its first step's rate


@pytest.mark.parametrize("rates, expected", [
    ({"fp32": 100.0, "fp32 + channels_last": 109.0, "bf16": 50.0, "bf16 + channels_last": 60.0}, "fp32"),
    ({"fp32": 109.0, "fp32 + channels_last": 100.0, "bf16": 50.0, "bf16 + channels_last": 60.0}, "fp32"),
    ({"fp32": 100.0, "fp32 + channels_last": 112.0, "bf16": 50.0, "bf16 + channels_last": 60.0},
     "fp32 + channels_last"),
    ({"fp32": 100.0, "fp32 + channels_last": 120.0, "bf16": 200.0, "bf16 + channels_last": 215.0}, "bf16"),
    ({"fp32": 100.0, "fp32 + channels_last": 120.0, "bf16": 200.0, "bf16 + channels_last": 230.0},
     "bf16 + channels_last"),
], ids=["layouts-tie", "layouts-tie-other-winner", "layouts-apart", "bf16-layouts-tie", "bf16-layouts-apart"])
def test_options_within_the_margin_tie_and_go_to_the_preferred_one(rates, expected):
    """Ties resolve by PREFERENCE (fp32, then NCHW first), whichever option the noise made faster."""
    assert tuning.preferred(rates) == expected


def test_a_tie_is_said_in_the_speed_line(cache_home, monkeypatch, fake_timing):
    monkeypatch.setitem(RATES, "bf16", 225.0)
    choice = choose()
    assert choice.label == "bf16"
    assert choice.describe().endswith("; bf16 + channels_last, the fastest, is within 10%: a tie, which goes to "
                                      "the preferred option)")


def test_flags_that_fix_both_measure_nothing(cache_home, fake_timing):
    choice = choose(amp_flag="off", channels_last_flag=False)
    assert (choice.amp, choice.channels_last, choice.source, choice.rates) == ("fp32", False, "flags", {})
    assert fake_timing == [] and not cache_home.exists()
    assert choice.describe() == "speed: fp32 (set by --amp and --channels-last)"


@pytest.mark.parametrize("flags, options, expected", [
    (dict(amp_flag="bf16"), ["bf16", "bf16 + channels_last"], ("bf16", True)),
    (dict(amp_flag="off"), ["fp32", "fp32 + channels_last"], ("fp32", True)),
    (dict(channels_last_flag=False), ["fp32", "bf16"], ("bf16", False)),
], ids=["amp-bf16", "amp-off", "no-channels-last"])
def test_one_explicit_flag_leaves_the_other_choice_measured(flags, options, expected, cache_home, fake_timing):
    choice = choose(**flags)
    assert sorted(set(fake_timing)) == sorted(options)
    assert (choice.amp, choice.channels_last) == expected and set(choice.rates) == set(options)


def test_a_checkpoints_choice_is_kept_when_the_flags_allow_it(cache_home, fake_timing):
    stored = {"amp": "fp32", "channels_last": False, "source": "measured", "rates": {"fp32": 1.0}}
    kept = choose(stored=stored)
    assert (kept.amp, kept.channels_last, kept.source) == ("fp32", False, "checkpoint") and fake_timing == []
    # --amp bf16 rules the stored fp32 out: measured again among what the flags allow
    measured = choose(stored=stored, amp_flag="bf16")
    assert (measured.amp, measured.source) == ("bf16", "measured")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", json.dumps({"version": 0, "entries": {}}),
                                     json.dumps({"version": tuning.CACHE_VERSION, "entries": {"k": "no rates"}})],
                         ids=["corrupt", "a-list", "other-version", "bad-entry"])
def test_a_bad_cache_is_ignored_and_rewritten(content, cache_home, fake_timing):
    path = cache_home / "upanets" / "speed.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert choose().source == "measured"
    cache = json.loads(path.read_text())
    assert cache["version"] == tuning.CACHE_VERSION and list(cache["entries"].values()) == [RATES]


def test_a_cache_that_cannot_be_written_only_warns(tmp_path, monkeypatch, fake_timing):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))  # its 'upanets' folder cannot be made
    with pytest.warns(UserWarning, match="cannot write the speed cache"):
        choice = choose()
    assert (choice.amp, choice.channels_last, choice.source) == ("bf16", True, "measured")


def test_unsupported_precisions_are_refused():
    with pytest.raises(Exception, match="--amp fp16 needs a CUDA GPU"):
        tuning.candidates("fp16", None, torch.device("cpu"))
    assert tuning.candidates("auto", None, torch.device("cpu")) == [
        ("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]


def test_real_probe_times_every_option_without_touching_the_global_rngs(cache_home):
    """The real steps of a tiny model: every option gets a positive rate, quickly, and a run's random
    numbers are the same whether it measured or not."""
    model = UPANets(4, 10, 1, 8)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    choice = choose(model, batch_size=8)
    assert set(choice.rates) == set(RATES) and all(rate > 0 for rate in choice.rates.values())
    assert choice.label == tuning.preferred(choice.rates)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert (np.random.get_state()[1] == before[2]).all()


def test_cli_prints_stores_and_resumes_with_the_choice(tmp_path, run_cli):
    """--amp auto: four options timed, the choice printed, in args.json and the checkpoint; a resumed run keeps
    the checkpoint's choice without measuring."""
    make_cifar10(tmp_path / "data", n_train=16, n_test=4)
    flags = ["--dataset", "cifar10", "--data-dir", tmp_path / "data", "--no-download",
             *tiny_flags(tmp_path, amp="auto", run_name="auto")]
    first = run_cli(flags, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    saved = torch.load(tmp_path / "checkpoint" / "auto" / "last.pth", weights_only=True)["speed_choice"]
    assert set(saved["rates"]) == set(RATES) and saved["source"] in ("measured", "cache")
    assert saved == json.loads((tmp_path / "results" / "auto" / "args.json").read_text())["speed_choice"]
    best = tuning.preferred(saved["rates"])
    assert tuning.label(saved["amp"], saved["channels_last"]) == best
    speed_line = next(line for line in first.stdout.splitlines() if line.startswith("speed: "))
    assert speed_line.startswith(f"speed: {best} (")

    resumed = run_cli([*flags, "--epochs", "2", "--resume", "auto"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"speed: {best} (as the checkpoint was trained; images/s: " in resumed.stdout
    assert f"(amp={saved['amp']}, channels_last={saved['channels_last']}, " in resumed.stdout
    assert [row["epoch"] for row in read_metrics(tmp_path / "results" / "auto" / "metrics.jsonl")] == [1, 2]


def test_two_cold_cache_runs_of_one_command_train_the_same_model_when_the_options_tie(tmp_path, monkeypatch,
                                                                                     fake_timing):
    """Timings within the margin, the faster one a different layout each time: both runs take fp32 in NCHW and
    end with the same weights."""
    import main

    make_cifar10(tmp_path / "data", n_train=24, n_test=8, seed=1)
    flags = ["--dataset", "cifar10", "--data-dir", tmp_path / "data", "--no-download"]
    weights = []
    for run, (nchw, channels_last) in enumerate([(100.0, 104.0), (104.0, 100.0)]):
        monkeypatch.setitem(RATES, "fp32", nchw)
        monkeypatch.setitem(RATES, "fp32 + channels_last", channels_last)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / f"cold-cache-{run}"))
        assert main.cli([str(flag) for flag in [*flags, *tiny_flags(tmp_path, run_name="tie")]] +
                        (["--overwrite"] if run else [])) == 0
        checkpoint = torch.load(tmp_path / "checkpoint" / "tie" / "last.pth", weights_only=True)
        choice = checkpoint["speed_choice"]
        assert (choice["source"], choice["amp"], choice["channels_last"]) == ("measured", "fp32", False)
        weights.append(checkpoint["model"])
    assert list(weights[0]) == list(weights[1])
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
