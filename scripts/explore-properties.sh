#!/usr/bin/env bash
# Finds new cases for the property tests: runs every test that uses hypothesis RUNS times
# (default 3) with the "explore" profile, fresh random examples each run, where `make
# test` runs the same derandomized examples every time and so never fails by chance.
# A failure found here is kept in .hypothesis/ and replays on the next run; add it to the
# test as an @example before fixing the code.
# Usage: scripts/explore-properties.sh [RUNS] [pytest args...]
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
shift || true
mapfile -t files < <(grep -rl --include='test_*.py' -e '^from hypothesis' -e '^import hypothesis' tests | sort)
status=0
for i in $(seq 1 "$runs"); do
  echo "--- explore run $i of $runs ---"
  WAYPOST_HYPOTHESIS_PROFILE=explore .venv/bin/python -m pytest -q -m "not slow" "${files[@]}" "$@" || status=1
done
exit "$status"
