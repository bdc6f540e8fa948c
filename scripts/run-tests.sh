#!/usr/bin/env bash
# The test run of `make test`: the main suite, and beside it a second lane: the fault
# suite (tests/faults: partitions, packet loss, pauses, full disks), the OpenAPI fuzz and
# suites that mostly wait (Prometheus scrapes, actor lease expiry, etcd elections and
# member kills in cluster mode). The main lane runs on two xdist workers.
# Fault scenarios spend most of their time waiting on deadlines, so the machine's second
# core is free for them; the second lane's output follows the main suite's.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
log=$(mktemp -t waypost-faults.XXXXXX)
LANE2=(tests/faults tests/integration/test_openapi_fuzz.py tests/integration/test_prometheus.py
       tests/integration/test_actors.py tests/integration/test_cluster.py)
"$BIN/python" -m pytest -q -m "not slow" -p no:cacheprovider "${LANE2[@]}" >"$log" 2>&1 &
faults=$!
"$BIN/python" -m pytest -q -m "not slow" -n 2 --dist worksteal "${LANE2[@]/#/--ignore=}" "$@"
main=$?
wait "$faults"
fault_status=$?
echo "--- second lane (tests/faults, the OpenAPI fuzz, Prometheus, actors, cluster) ---"
cat "$log"
rm -f "$log"
if [ "$main" -ne 0 ] || [ "$fault_status" -ne 0 ]; then
  exit 1
fi
