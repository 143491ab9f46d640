#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and prints libFuzzer's execution counts.
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). The machine's toolchain is stable, so
# RUSTC_BOOTSTRAP=1 lets it take the sanitizer flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for target in www_authenticate link_header listing_json config webhook_body; do
  mkdir -p "corpus/$target"
  log="$(mktemp)"
  cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || {
    tail -40 "$log"; echo "fuzz target $target failed"; exit 1; }
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  echo "$target: $runs executions in ${seconds}s, no crash"
done
