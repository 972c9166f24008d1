"""Does the precision or the recipe cost accuracy? Final test accuracy over seeds on a real offline set.

    python benchmarks/digits_accuracy.py                      # 5 seeds x (ours fp32, ours bf16, original)
    python benchmarks/digits_accuracy.py --seeds 0,1,2 --variants ours-fp32,original --json out.json

scikit-learn's 1,797 handwritten digits, upscaled to 32x32 RGB and written as CIFAR-10 files (1,500 train /
297 test), are trained with UPANets8 for 8 epochs at batch 100 by `main.py --amp off` and `--amp bf16` (the
memory layout as main.py's defaults choose it) and by `benchmarks/baseline_train.py`, numerically the
original code's recipe. Every run is a separate process; the table shows each seed's last-epoch test
accuracy and the mean and standard deviation per variant.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sampledata import digits, write_cifar10  # noqa: E402  (the digits in CIFAR-10's file format)

VARIANTS = {
    "ours-fp32": ["main.py", "--amp", "off"],
    "ours-bf16": ["main.py", "--amp", "bf16"],
    "original": ["benchmarks/baseline_train.py"],
}


def run(variant: str, seed: int, data_dir: Path, args: argparse.Namespace) -> float:
    """The last epoch's test accuracy (percent) of one training process."""
    with tempfile.TemporaryDirectory(prefix="upanets-digits-") as out:
        command = [sys.executable, *VARIANTS[variant], "--data-dir", str(data_dir), "--filters", str(args.filters),
                   "--epochs", str(args.epochs), "--batch-size", "100", "--seed", str(seed), "--device", "cpu",
                   "--save-path", out]
        if variant.startswith("ours"):
            command += ["--dataset", "cifar10", "--no-download", "--no-progress", "--run-name", "digits",
                        "--checkpoint-dir", f"{out}/checkpoint"]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{variant}, seed {seed}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
        results = Path(out) / "digits" if variant.startswith("ours") else Path(out)
        rows = [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]["test_acc"]


def parse_list(value: str) -> list[str]:
    return [item for item in value.split(",") if item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=parse_list, default=["0", "1", "2", "3", "4"], help="comma-separated")
    parser.add_argument("--variants", type=parse_list, default=list(VARIANTS), help=f"from {', '.join(VARIANTS)}")
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="also write the accuracies here")
    args = parser.parse_args()
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {', '.join(sorted(unknown))}")
    seeds = [int(seed) for seed in args.seeds]

    accuracy: dict[str, list[float]] = {variant: [] for variant in args.variants}
    with tempfile.TemporaryDirectory(prefix="upanets-digits-data-") as data_dir:
        write_cifar10(data_dir, digits(size=32, n_train=1500))
        for seed in seeds:  # interleaved, so that a slow spell of the machine touches every variant alike
            for variant in args.variants:
                accuracy[variant].append(run(variant, seed, Path(data_dir), args))
                print(f"seed {seed} {variant}: {accuracy[variant][-1]:.2f}%", file=sys.stderr, flush=True)

    print(f"| UPANets{args.filters}, {args.epochs} epochs, digits 32x32 (1,500 / 297) | "
          + " | ".join(f"seed {seed}" for seed in seeds) + " | mean | std |")
    print("|---|" + "--:|" * (len(seeds) + 2))
    for variant, values in accuracy.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {variant} | " + " | ".join(f"{v:.2f}" for v in values)
              + f" | {statistics.mean(values):.2f} | {spread:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"seeds": seeds, "accuracy": accuracy}, indent=2) + "\n")


if __name__ == "__main__":
    main()
