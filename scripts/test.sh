#!/usr/bin/env bash
# Run the whole test suite, then ruff. Extra arguments go to pytest
# (e.g. scripts/test.sh -x -k freespace). Exits non-zero if either fails.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

if [[ ! -x .venv/bin/python ]]; then
    ./scripts/setup.sh --install-only
fi

status=0
.venv/bin/python -m pytest -q tests "$@" || status=$?
if ((status == 5)); then
    echo "test.sh: pytest collected no tests" >&2
fi

lint=()
for path in pyfs tests bench mkfs.py; do
    [[ -e $path ]] && lint+=("$path")
done
echo "==> ruff check ${lint[*]}"
.venv/bin/ruff check "${lint[@]}" || status=$?

exit "$status"
