#!/usr/bin/env bash
# The README's worked example: UPANets8 on scikit-learn's digits (an offline image folder, 16x16), three seeds
# of --head exc and of --head last, each selecting best.pth on 300 held-out training images; then compare.py's
# table (table.md, table.csv) and curves (curves.png) in this folder.
#
#   bash materials/compare_digits_heads/run.sh [WORK]      # WORK (default: a temporary folder) gets data and runs
#
# PYTHON picks the interpreter (default: .venv/bin/python, the environment `make setup` makes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
python=${PYTHON:-.venv/bin/python}
out=materials/compare_digits_heads
work=${1:-$(mktemp -d)}
export OMP_NUM_THREADS=1  # as the times in the README were taken

"$python" sampledata.py digits "$work/data" --size 16 --train 1400
for head in exc last; do
    for seed in 0 1 2; do
        "$python" main.py --dataset folder --data-dir "$work/data" --img-size 16 --filters 8 --epochs 10 \
            --batch-size 32 --val-split 300 --head "$head" --seed "$seed" --amp off --no-channels-last --device cpu \
            --no-progress --checkpoint-dir "$work/checkpoint" --save-path "$work/results" --run-name "digits-$head-s$seed"
    done
done
"$python" compare.py "$work"/results/digits-* --markdown "$out/table.md" --csv "$out/table.csv" \
    --plot "$out/curves.png"
