#!/usr/bin/env bash
# Every check that needs a GPU, in one run of at most about 8 minutes: the CUDA tests, then the GPU benchmark
# (UPANets16 and UPANets64: train steps with and without --compile, eval, and whole-process epochs against the
# original recipe), its tables and a JSON file whose "summary" holds the headline numbers.
#
#   bash benchmarks/gpu_check.sh OUT            # on a CUDA machine; OUT gets the logs, tables and JSON
#   bash benchmarks/gpu_check.sh OUT --cpu      # the same script on the CPU, shortened: checks the script itself
#
# PYTHON picks the interpreter (default: python3). Each step has its own time limit, and a step that fails
# does not stop the next one; the exit code is the first failing step's. Each step's output goes to
# OUT/<step>.stdout and .stderr (benchmark.stdout holds the markdown tables); OUT/machine.log says what ran.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out=${1:?usage: bash benchmarks/gpu_check.sh OUT [--cpu]}
mode=${2:-}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# The library (upanets_lab) and models/ from this checkout, installed or not: a GPU machine may have torch but
# not this repo's environment.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

step() {  # step NAME SECONDS COMMAND...: run it with a time limit into OUT/NAME.stdout and .stderr
    local name=$1 seconds=$2
    shift 2
    echo "== $name (at most $seconds s): $*"
    local started=$SECONDS
    timeout "$seconds" "$@" >"$out/$name.stdout" 2>"$out/$name.stderr"
    local code=$?
    echo "   exit $code after $((SECONDS - started)) s"
    if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then status=$code; fi
}

{ nvidia-smi || echo "no nvidia-smi"; "$python" -c "import torch; print('torch', torch.__version__, 'cuda',
torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"; } >"$out/machine.log" 2>&1

if [ "$mode" = "--cpu" ]; then
    step tests 120 "$python" -m pytest -q -p no:cacheprovider tests/e2e/test_cuda.py
    step benchmark 300 "$python" benchmarks/benchmark.py --device cpu --quick --sections train,eval,epoch \
        --time-limit 240 --json "$out/benchmark.json"
else
    step tests 150 "$python" -m pytest -q -p no:cacheprovider tests/e2e/test_cuda.py
    # 16 and 64 filters; the epoch rows are 2 epochs of 10,000/2,000 images per process, the second timed alone.
    step benchmark 330 "$python" benchmarks/benchmark.py --device cuda --models 16,64 --compile \
        --sections train,eval,epoch --steps 20 --epoch-timeout 120 --time-limit 300 --json "$out/benchmark.json"
fi
echo "== summary (the tables are in $out/benchmark.stdout)"
"$python" -c "import json, sys; print(json.dumps(json.load(open(sys.argv[1]))['summary'], indent=2))" \
    "$out/benchmark.json" 2>/dev/null || echo "no benchmark.json"
exit "$status"
