#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian machine, then runs the whole suite.
# Each install is skipped when the tool is already present. Run as root (CI) or with sudo rights.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# Debian packages: the real registry the tests run, and what rdkafka and aws-lc need to build.
missing=()
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
for pkg in build-essential cmake pkg-config libssl-dev zlib1g-dev ca-certificates; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test.sh: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# moto's server mode, the AWS ECR API the ECR tests talk to.
if ! command -v moto_server >/dev/null 2>&1; then
  echo "test.sh: installing moto[server]"
  python3 -m pip install --quiet 'moto[server]'
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi

# Tansu, the Kafka-protocol broker the end-to-end tests publish to (memory engine needs dynostore).
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v tansu >/dev/null 2>&1; then
  echo "test.sh: installing tansu 0.6.0 (first time only; takes a few minutes)"
  cargo install tansu --locked --version 0.6.0 --features dynostore
fi

# The fault suite appends its figures here; the table is printed after the run.
report_dir="target/tmp/fault-report"
rm -rf "$report_dir"

cargo test --lib --bins --tests --examples "$@"

if [ -d "$report_dir" ]; then
  echo
  echo "Fault suite figures"
  echo "-------------------"
  { printf "measure\tvalue\texpected\n"; cat "$report_dir"/*.tsv; } | { column -t -s $'\t' 2>/dev/null || cat; }
fi
