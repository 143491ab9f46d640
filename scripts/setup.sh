#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12, skipping whatever is already present:
# Debian's docker-registry and build packages, moto (in a virtualenv under target/) and Tansu.
# scripts/test.sh sources it, which also puts the tools on PATH; run alone, it only installs.
# Run as root (CI) or with sudo rights.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# moto's server mode, the AWS ECR API the ECR tests talk to. Debian's Python is externally managed
# (PEP 668: `pip install` as root is refused, and python3-pip is not installed), so moto goes into
# a virtualenv of its own under target/. tests/support/mod.rs looks for it there too.
moto_venv="$PWD/target/venv"
need_moto=0
command -v moto_server >/dev/null 2>&1 || [ -x "$moto_venv/bin/moto_server" ] || need_moto=1

# Debian packages: the real registry the tests run, and what rdkafka and aws-lc need to build.
missing=()
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
pkgs=(build-essential cmake pkg-config libssl-dev zlib1g-dev ca-certificates)
[ "$need_moto" -eq 0 ] || pkgs+=(python3-venv)
for pkg in "${pkgs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup.sh: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

if [ "$need_moto" -eq 1 ]; then
  echo "setup.sh: installing moto[server] into $moto_venv"
  rm -rf "$moto_venv"
  # Debian's own interpreter, which python3-venv completes (a pyenv shim may come first on PATH).
  /usr/bin/python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install --quiet 'moto[server]'
  "$moto_venv/bin/moto_server" --help >/dev/null
fi
export PATH="$moto_venv/bin:$PATH"

# Tansu, the Kafka-protocol broker the end-to-end tests publish to (memory engine needs dynostore).
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v tansu >/dev/null 2>&1; then
  echo "setup.sh: installing tansu 0.6.0 (first time only; takes a few minutes)"
  cargo install tansu --locked --version 0.6.0 --features dynostore
fi
