#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12, skipping whatever is already present:
# Debian's docker-registry, debootstrap and build packages, moto and kubernetes-validate (in a
# virtualenv under target/) and Tansu; it says how to get kubectl where it is missing.
# scripts/test.sh sources it, which also puts the tools on PATH; run alone, it only installs.
# Run as root (CI) or with sudo rights.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# The suite's Python tools: moto's server mode (the AWS ECR API the ECR tests talk to) and
# kubernetes-validate (the Kubernetes schemas deploy/kubernetes is checked against, offline).
# Debian's Python is externally managed (PEP 668: `pip install` as root is refused, and
# python3-pip is not installed), so they go into a virtualenv under target/. tests/support/mod.rs
# and tests/kubernetes.rs look for them there.
venv="$PWD/target/venv"
need_moto=0
command -v moto_server >/dev/null 2>&1 || [ -x "$venv/bin/moto_server" ] || need_moto=1
need_validate=0
[ -x "$venv/bin/kubernetes-validate" ] || need_validate=1

# Debian packages: the real registry the tests run, and what rdkafka and aws-lc need to build.
missing=()
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# debootstrap assembles the image's runtime stage (scripts/image-runtime-check.sh, run by .ci/run).
pkgs=(build-essential cmake pkg-config libssl-dev zlib1g-dev ca-certificates debootstrap)
[ "$need_moto$need_validate" = "00" ] || pkgs+=(python3-venv)
for pkg in "${pkgs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup.sh: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

if [ "$need_moto$need_validate" != "00" ] && [ ! -x "$venv/bin/pip" ]; then
  rm -rf "$venv"
  # Debian's own interpreter, which python3-venv completes (a pyenv shim may come first on PATH).
  /usr/bin/python3 -m venv "$venv"
fi
if [ "$need_moto" -eq 1 ]; then
  echo "setup.sh: installing moto[server] into $venv"
  "$venv/bin/pip" install --quiet 'moto[server]'
  "$venv/bin/moto_server" --help >/dev/null
fi
if [ "$need_validate" -eq 1 ]; then
  echo "setup.sh: installing kubernetes-validate into $venv"
  "$venv/bin/pip" install --quiet 'kubernetes-validate==1.*'
  "$venv/bin/kubernetes-validate" --version >/dev/null
fi
# After the system's: a moto_server found first (pyenv, say) stays the one used.
export PATH="$PATH:$venv/bin"

# kubectl renders deploy/kubernetes (kustomize is built in): tests/kubernetes.rs needs it. Debian
# does not package it (this machine's image has it), so it is not installed here.
command -v kubectl >/dev/null 2>&1 || echo "setup.sh: kubectl is missing, and tests/kubernetes.rs fails without it: install it from https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/ (or the pkgs.k8s.io apt repository)" >&2

# Tansu, the Kafka-protocol broker the end-to-end tests publish to (memory engine needs dynostore).
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v tansu >/dev/null 2>&1; then
  echo "setup.sh: installing tansu 0.6.0 (first time only; takes a few minutes)"
  cargo install tansu --locked --version 0.6.0 --features dynostore
fi

# mdBook builds the reference in docs/ (tests/docs.rs builds it and checks its links and keys).
# Without its server and watcher, which nothing here uses: fewer crates to build.
if ! command -v mdbook >/dev/null 2>&1; then
  echo "setup.sh: installing mdbook 0.5.4 (first time only; about a minute)"
  cargo install mdbook --locked --version 0.5.4 --no-default-features --features search
fi
