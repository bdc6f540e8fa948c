#!/usr/bin/env bash
# `make test` under load: runs it RUNS times in a row (default 3), each with one extra
# process keeping one core busy for the whole run (a plain busy loop at normal priority),
# and reports each run's result and time. Users run `make test` on laptops that are doing
# other things and CI machines are shared: the suite must pass there too.
# Usage: scripts/stress-tests.sh [RUNS]    (logs in $STRESS_LOGS, default a temp folder)
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
logs="${STRESS_LOGS:-$(mktemp -d -t waypost-stress.XXXXXX)}"
mkdir -p "$logs"
busy=""
stop_busy() { [ -n "$busy" ] && kill "$busy" 2>/dev/null; wait "$busy" 2>/dev/null; busy=""; }
trap stop_busy EXIT
failed=0
summary=()
for i in $(seq 1 "$runs"); do
  python3 -c 'while True: pass' &
  busy=$!
  log="$logs/run-$i.log"
  start=$(date +%s)
  make test >"$log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  stop_busy
  # pytest's closing lines (main lane, then the second lane).
  counts=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error)' "$log" | sed 's/=//g' | paste -sd ';' -)
  if [ "$rc" -eq 0 ]; then verdict=passed; else verdict="FAILED (exit $rc)"; failed=1; fi
  line="run $i of $runs: $verdict in ${took}s  [$counts]  log: $log"
  echo "$line"
  summary+=("$line")
done
echo "--- stress-tests: $runs runs, one busy core beside each ---"
printf '%s\n' "${summary[@]}"
exit "$failed"
