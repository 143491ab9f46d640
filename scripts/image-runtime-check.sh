#!/usr/bin/env bash
# Proves the Dockerfile's runtime stage runs, without a Docker engine: assembles the stage's
# filesystem the way its instructions describe (its Debian base with debootstrap's minbase, which
# is what the `-slim` images are made of; its RUN lines run in that root; the binary the build
# stage made, which scripts/docker-build-check.sh leaves in target/release), then runs the binary
# there with chroot, as the image's USER and with only the image's ENV:
#   - `regwatch --help`;
#   - `regwatch check -c` against a docker-registry on the host's loopback;
#   - `regwatch run`, and the image's HEALTHCHECK command against it;
#   - every shared library the binary needs resolves inside the image.
# An instruction this script does not model fails it loudly. Needs root (chroot), debootstrap and
# docker-registry (scripts/setup.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

die() { echo "image-runtime-check: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (chroot); run it with sudo"
for tool in debootstrap docker-registry chroot python3 timeout; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (scripts/setup.sh installs it)"
done
binary="$root/target/release/regwatch"
[ -x "$binary" ] || die "no $binary: run scripts/docker-build-check.sh first (it builds the build stage)"

# Logical lines: comments dropped, backslash continuations joined (as docker-build-check.sh reads).
mapfile -t lines < <(sed -e '/^[[:space:]]*#/d' Dockerfile | sed -e ':a' -e '/\\$/{N;s/\\\n//;ba}' | sed -e '/^[[:space:]]*$/d')
# The runtime stage is the last one.
start=-1
for i in "${!lines[@]}"; do
  read -r instr _ <<<"${lines[$i]}"
  [ "${instr^^}" != FROM ] || start=$i
done
[ "$start" -ge 0 ] || die "no FROM in the Dockerfile"

work="$(mktemp -d "${TMPDIR:-/tmp}/regwatch-image.XXXXXX")"
registry_pid=""
daemon_pid=""
cleanup() {
  [ -z "$daemon_pid" ] || kill "$daemon_pid" 2>/dev/null || true
  [ -z "$registry_pid" ] || kill "$registry_pid" 2>/dev/null || true
  # Never through a mount a killed debootstrap may have left behind.
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
image="$work/root"
user=""
entrypoint=""
cmd=()
healthcheck=""
# Docker's default PATH, which the image's ENV may override.
envs=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")

# Runs a shell command in the image as root, with its resolver (RUN lines fetch packages).
in_image() { chroot "$image" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /bin/sh -c "$1"; }

read -r _ base <<<"${lines[$start]}"
case "$base" in
  debian:*-slim) suite="${base#debian:}"; suite="${suite%-slim}" ;;
  *) die "base image $base is not modelled (only debian:<suite>-slim)" ;;
esac
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
echo "image-runtime-check: FROM $base: debootstrap --variant=minbase $suite $mirror"
debootstrap --variant=minbase "$suite" "$image" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
cp /etc/resolv.conf "$image/etc/resolv.conf"

for ((i = start + 1; i < ${#lines[@]}; i++)); do
  line="${lines[$i]}"
  read -r instr rest <<<"$line"
  case "${instr^^}" in
    RUN)
      [ -z "$user" ] || die "RUN after USER is not modelled: $line"
      echo "  RUN ${rest:0:100}…"
      in_image "$rest" >"$work/run.log" 2>&1 || { tail -20 "$work/run.log" >&2; die "RUN failed: $rest"; } ;;
    COPY)
      read -r from src dest extra <<<"$rest"
      [ "$from" = "--from=build" ] && [ -z "${extra:-}" ] || die "COPY not modelled: $line"
      # The build stage works in /src, where docker-build-check.sh builds this repository.
      [[ "$src" == /src/* ]] || die "COPY from outside the build stage's /src: $line"
      mkdir -p "$(dirname "$image$dest")"
      cp "$root/${src#/src/}" "$image$dest"
      echo "  COPY $src -> $dest" ;;
    USER)
      # Docker's rules: a missing group is group 0; names would need the image's passwd.
      [[ "$rest" =~ ^[0-9]+(:[0-9]+)?$ ]] || die "USER by name is not modelled: $line"
      user="$rest"
      [[ "$user" == *:* ]] || user="$user:0"
      echo "  USER $user" ;;
    ENV)
      [[ "$rest" =~ ^[A-Za-z_][A-Za-z0-9_]*=[^[:space:]]*$ ]] || die "ENV other than one KEY=value is not modelled: $line"
      envs+=("$rest"); echo "  ENV $rest" ;;
    ENTRYPOINT)
      entrypoint="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])[0])' "$rest")"
      echo "  ENTRYPOINT $entrypoint" ;;
    HEALTHCHECK)
      healthcheck="$(python3 -c 'import json,sys; c=json.loads(sys.argv[1][sys.argv[1].index("CMD")+3:]); print(json.dumps(c))' "$rest")"
      echo "  HEALTHCHECK ${healthcheck:0:60}…" ;;
    CMD)
      mapfile -t cmd < <(python3 -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])))' "$rest")
      echo "  CMD ${cmd[*]}" ;;
    VOLUME | EXPOSE | LABEL) echo "  ${instr^^} (nothing to assemble)" ;;
    *) die "instruction $instr in the runtime stage is not modelled: $line" ;;
  esac
done
[ -n "$entrypoint" ] || die "the runtime stage has no ENTRYPOINT"
[ -n "$user" ] && [ "${user%%:*}" != 0 ] || die "the runtime stage runs as root (USER ${user:-unset})"
[ "${#cmd[@]}" -gt 0 ] || die "the runtime stage has no CMD"

# Runs the entrypoint with ARGS in the image as its USER, with only its ENV.
as_image() { chroot --userspec="$user" "$image" /usr/bin/env -i "${envs[@]}" "$entrypoint" "$@"; }

# TLS to registries and brokers needs the CA bundle; nothing in this check talks TLS, so look.
[ -s "$image/etc/ssl/certs/ca-certificates.crt" ] || die "the image has no CA bundle (ca-certificates)"
missing="$(chroot "$image" /usr/bin/ldd "$entrypoint" | grep 'not found' || true)"
[ -z "$missing" ] || die "libraries missing in the image: $missing"
echo "image-runtime-check: the binary's libraries, inside the image:"
chroot "$image" /usr/bin/ldd "$entrypoint" | awk '{ print "    " $1 }'

help="$(as_image --help)" || die "regwatch --help failed inside the image"
grep -q '^Usage: regwatch' <<<"$help" || die "regwatch --help printed no usage: $help"
echo "image-runtime-check: --help works as user $user"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
registry_port="$(free_port)"
admin_port="$(free_port)"
cat >"$work/registry.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/registry-data
http:
  addr: 127.0.0.1:$registry_port
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
up=0
for _ in $(seq 100); do
  if python3 -c "import socket; socket.create_connection(('127.0.0.1', $registry_port), 1)" 2>/dev/null; then
    up=1
    break
  fi
  sleep 0.1
done
[ "$up" -eq 1 ] || { cat "$work/registry.log" >&2; die "docker-registry did not start"; }
cat >"$image/etc/regwatch/regwatch.toml" <<EOF
[daemon]
state_dir    = "/var/lib/regwatch"
admin_listen = "127.0.0.1:$admin_port"

[[registry]]
name     = "local"
kind     = "oci"
url      = "http://127.0.0.1:$registry_port"
insecure = true
EOF
check="$(as_image check 2>&1)" || die "regwatch check failed inside the image: $check"
echo "$check" | grep -q 'local .*ok' || die "regwatch check did not say ok: $check"
echo "image-runtime-check: check -c (from the image's REGWATCH_CONFIG) against docker-registry: $(echo "$check" | head -1)"

# The image's default command, in the background as the process itself (not a subshell), so
# that killing it stops the daemon.
chroot --userspec="$user" "$image" /usr/bin/env -i "${envs[@]}" "$entrypoint" "${cmd[@]}" \
  >"$work/daemon.log" 2>&1 &
daemon_pid=$!
# The image's HEALTHCHECK command (["bash", "-c", SCRIPT]), pointed at this run's admin port.
[ -n "$healthcheck" ] || die "the runtime stage has no HEALTHCHECK"
mapfile -t probe < <(python3 -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])))' "$healthcheck" | sed "s/9188/$admin_port/")
healthy=0
for _ in $(seq 100); do
  # Docker's HEALTHCHECK --timeout is 5 s.
  if timeout 5 chroot --userspec="$user" "$image" /usr/bin/env -i "${envs[@]}" "${probe[@]}"; then
    healthy=1
    break
  fi
  sleep 0.1
done
[ "$healthy" -eq 1 ] || { cat "$work/daemon.log" >&2; die "the HEALTHCHECK never passed: ${probe[*]}"; }
kill "$daemon_pid"
wait "$daemon_pid" 2>/dev/null || true
daemon_pid=""
[ -n "$(ls -A "$image/var/lib/regwatch")" ] || die "the daemon wrote no state to /var/lib/regwatch"
echo "image-runtime-check: run as user $user, HEALTHCHECK passed, state written to /var/lib/regwatch"
echo "image-runtime-check: ok, the runtime stage runs"
