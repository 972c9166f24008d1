"""Does the precision or the recipe cost accuracy? Final test accuracy over seeds on a real offline set.

    python benchmarks/digits_accuracy.py                      # 5 seeds x (ours fp32, ours bf16, original)
    python benchmarks/digits_accuracy.py --variants paper,modern,fast --json recipes.json   # the --recipe presets
    python benchmarks/digits_accuracy.py --seeds 0,1,2 --variants ours-fp32,original --json out.json

scikit-learn's 1,797 handwritten digits, upscaled to 32x32 RGB and written as CIFAR-10 files (1,500 train /
297 test), are trained with UPANets8 for 8 epochs at batch 100 by `main.py --amp off` and `--amp bf16` (the
memory layout as main.py's defaults choose it), by `main.py --recipe paper / modern / fast` (the precision
and layout main.py measures) and by `benchmarks/baseline_train.py`, numerically the original code's recipe.
Every run is a separate process; the table shows each seed's last-epoch test accuracy (for runs with an EMA
model, of the trained and of the EMA weights, as two rows) and the mean and standard deviation per variant,
and each variant's mean wall time per run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from upanets_lab.data.samples import digits, write_cifar10  # the digits in CIFAR-10's file format

REPO = Path(__file__).resolve().parents[1]

VARIANTS = {
    "ours-fp32": ["main.py", "--amp", "off"],
    "ours-bf16": ["main.py", "--amp", "bf16"],
    "original": ["benchmarks/baseline_train.py"],
    "paper": ["main.py", "--recipe", "paper"],
    "modern": ["main.py", "--recipe", "modern"],
    "fast": ["main.py", "--recipe", "fast"],
}


def run(variant: str, seed: int, data_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """The last epoch's test accuracy (percent) of one training process ("test", and "ema_test" where the run has
    an EMA model), and the process's wall time in seconds ("seconds")."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="upanets-digits-") as out:
        command = [sys.executable, *VARIANTS[variant], "--data-dir", str(data_dir), "--filters", str(args.filters),
                   "--epochs", str(args.epochs), "--batch-size", "100", "--seed", str(seed), "--device", "cpu",
                   "--save-path", out]
        by_main = VARIANTS[variant][0] == "main.py"
        if by_main:
            command += ["--dataset", "cifar10", "--no-download", "--no-progress", "--run-name", "digits",
                        "--checkpoint-dir", f"{out}/checkpoint"]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{variant}, seed {seed}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
        results = Path(out) / "digits" if by_main else Path(out)
        rows = [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    return {"test": last["test_acc"], **({"ema_test": last["ema_test_acc"]} if "ema_test_acc" in last else {}),
            "seconds": time.perf_counter() - started}


def parse_list(value: str) -> list[str]:
    return [item for item in value.split(",") if item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=parse_list, default=["0", "1", "2", "3", "4"], help="comma-separated")
    parser.add_argument("--variants", type=parse_list, default=["ours-fp32", "ours-bf16", "original"],
                        help=f"from {', '.join(VARIANTS)}")
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="also write the accuracies here")
    args = parser.parse_args()
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {', '.join(sorted(unknown))}")
    seeds = [int(seed) for seed in args.seeds]

    accuracy: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {variant: [] for variant in args.variants}
    with tempfile.TemporaryDirectory(prefix="upanets-digits-data-") as data_dir:
        write_cifar10(data_dir, digits(size=32, n_train=1500))
        for seed in seeds:  # interleaved, so that a slow spell of the machine touches every variant alike
            for variant in args.variants:
                measured = run(variant, seed, Path(data_dir), args)
                seconds[variant].append(measured.pop("seconds"))
                for kind, value in measured.items():
                    accuracy.setdefault(variant if kind == "test" else f"{variant} (EMA weights)", []).append(value)
                print(f"seed {seed} {variant}: {measured}", file=sys.stderr, flush=True)
    print(table(accuracy, seconds, seeds, args))
    if args.json:
        args.json.write_text(json.dumps({"seeds": seeds, "accuracy": accuracy, "seconds": seconds}, indent=2) + "\n")


def table(accuracy: dict[str, list[float]], seconds: dict[str, list[float]], seeds: list[int],
          args: argparse.Namespace) -> str:
    """A markdown table: a row per variant (and its EMA weights), a column per seed, mean, sd, seconds a run."""
    lines = [f"| UPANets{args.filters}, {args.epochs} epochs, digits 32x32 (1,500 / 297) | "
             + " | ".join(f"seed {seed}" for seed in seeds) + " | mean | std | s / run |",
             "|---|" + "--:|" * (len(seeds) + 3)]
    for name, values in accuracy.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        wall = statistics.mean(seconds[name.removesuffix(" (EMA weights)")])
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values)
                     + f" | {statistics.mean(values):.2f} | {spread:.2f} | {wall:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
