#!/usr/bin/env bash
# The test run of `make test`: the main suite, and beside it the fault suite
# (tests/faults: partitions, packet loss, pauses, full disks). Fault scenarios spend
# most of their time waiting on deadlines, so they run as a second pytest process
# instead of adding minutes to the first; their output follows the main suite's.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
log=$(mktemp -t waypost-faults.XXXXXX)
"$BIN/python" -m pytest -q -m "not slow" -p no:cacheprovider tests/faults >"$log" 2>&1 &
faults=$!
"$BIN/python" -m pytest -q -m "not slow" --ignore=tests/faults "$@"
main=$?
wait "$faults"
fault_status=$?
echo "--- fault suite (tests/faults) ---"
cat "$log"
rm -f "$log"
if [ "$main" -ne 0 ] || [ "$fault_status" -ne 0 ]; then
  exit 1
fi
