#!/usr/bin/env bash
# Regenerate Pipfile.lock from Pipfile, the same way every time.
#
#   1. `pipenv lock` resolves Pipfile against pipenv's default index (plus whatever
#      pip's own configuration adds) and records versions + sha256 hashes.
#   2. `_meta.sources` is then emptied so that no registry host name is committed.
#      Nothing else is touched: `_meta.hash` covers only the Pipfile, so it stays
#      valid, and `pipenv sync` / `pipenv install --deploy` accept the file.
#
# Idempotent: running it twice in a row leaves the same file (unless upstream
# indexes published new releases in between).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
export PIPENV_VENV_IN_PROJECT="${PIPENV_VENV_IN_PROJECT:-1}"
export PIPENV_YES="${PIPENV_YES:-1}"
export PIPENV_NOSPIN="${PIPENV_NOSPIN:-1}"
export PIPENV_VERBOSITY="${PIPENV_VERBOSITY:--1}"

if command -v pipenv >/dev/null 2>&1; then
    PIPENV=(pipenv)
elif "$PYTHON" -m pipenv --version >/dev/null 2>&1; then
    PIPENV=("$PYTHON" -m pipenv)
else
    echo "lock.sh: pipenv not found; run 'make setup' (or '$PYTHON -m pip install --user pipenv')" >&2
    exit 1
fi

# pipenv's resolver leaves pipenv-request/response-*.json behind in $TMPDIR; keep them in a
# private temp dir that is removed on exit.
lock_tmp="$(mktemp -d)"
trap 'rm -rf "$lock_tmp"' EXIT
[ -f Pipfile.lock ] && cp -p Pipfile.lock "$lock_tmp/Pipfile.lock.prev"
TMPDIR="$lock_tmp" "${PIPENV[@]}" lock

"$PYTHON" - <<'PY'
import json

path = "Pipfile.lock"
with open(path, encoding="utf-8") as f:
    lock = json.load(f)
lock["_meta"]["sources"] = []
# Same layout as pipenv writes it: indent 4, trailing newline.
with open(path, "w", encoding="utf-8") as f:
    f.write(json.dumps(lock, indent=4, separators=(",", ": ")) + "\n")
PY

# Unchanged content keeps its old mtime, so `make setup` (stamp newer than Pipfile.lock) stays a no-op.
if [ -f "$lock_tmp/Pipfile.lock.prev" ] && cmp -s Pipfile.lock "$lock_tmp/Pipfile.lock.prev"; then
    touch -r "$lock_tmp/Pipfile.lock.prev" Pipfile.lock
fi

if grep -q -E "https?://" Pipfile.lock; then
    echo "lock.sh: Pipfile.lock still names a registry address" >&2
    exit 1
fi
echo "lock.sh: Pipfile.lock written (_meta.sources = [])"
