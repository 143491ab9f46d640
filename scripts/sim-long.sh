#!/usr/bin/env bash
# Runs the simulation suite for about N minutes (default 30): as many proptest cases as fit, in
# rounds of 200 per property, each round with fresh random seeds. A failure stops the run and
# prints the shrunk sequence; proptest records its seed in tests/sim/proptest-regressions.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-30}"
cases="${SIM_ROUND:-200}"
end=$(( $(date +%s) + minutes * 60 ))
log="$(mktemp)"
cargo test --release --test sim --no-run --quiet
rounds=0
started=$(date +%s)
while [ "$(date +%s)" -lt "$end" ]; do
  if ! SIM_CASES="$cases" cargo test --release --quiet --test sim -- --nocapture >"$log" 2>&1; then
    cat "$log"
    echo "sim-long: a case failed in round $((rounds + 1))" >&2
    exit 1
  fi
  grep '^SIM ' "$log" || true
  rounds=$((rounds + 1))
done
echo "sim-long: $rounds rounds of $cases cases per property in $(( ($(date +%s) - started) / 60 )) minutes; no failure"
