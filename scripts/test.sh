#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian machine (scripts/setup.sh), then runs
# the whole suite. Each install is skipped when the tool is already present. Run as root (CI) or
# with sudo rights.
set -euo pipefail
cd "$(dirname "$0")/.."

# Installs what is missing and puts moto (target/venv) and Tansu (~/.cargo/bin) on PATH.
source scripts/setup.sh

# The fault suite appends its figures here; the table is printed after the run.
report_dir="target/tmp/fault-report"
rm -rf "$report_dir"

# A one-shot run gains nothing from incremental caches, which would double the target's size.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo test --lib --bins --tests --examples "$@"

if [ -d "$report_dir" ]; then
  echo
  echo "Fault suite figures (verdict: ok, MISSED, or - where the expected column is prose and the"
  echo "test's own assertions judge)"
  echo "-------------------"
  { printf "measure\tvalue\texpected\tverdict\n"; cat "$report_dir"/*.tsv; } | { column -t -s $'\t' 2>/dev/null || cat; }
  missed=$(awk -F'\t' '$4 == "MISSED"' "$report_dir"/*.tsv)
  if [ -n "$missed" ]; then
    echo
    echo "FLAGGED: $(printf '%s\n' "$missed" | wc -l) figure(s) missed their expected column:"
    printf '%s\n' "$missed" | awk -F'\t' '{ printf "  %s: %s (expected %s)\n", $1, $2, $3 }'
  fi
fi
