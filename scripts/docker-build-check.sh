#!/usr/bin/env bash
# Proves the Dockerfile's build stage builds, without a Docker engine: reads the stage that runs
# `cargo build`, copies exactly what its COPY lines bring into the image into an empty directory,
# and runs its cargo RUN lines there, verbatim. The Dockerfile is the only source of truth, so the
# check cannot drift from it; an instruction this script does not model fails it loudly.
#
# The copy's target/ is a symlink to the worktree's, so what is already built is reused: cargo's
# fingerprints of a path package do not depend on where it lives, and `cp -a` keeps mtimes.
set -euo pipefail
# Optional argument: another Dockerfile to try against this repository as the build context.
dockerfile="$(realpath "${1:-$(dirname "$0")/../Dockerfile}")"
cd "$(dirname "$0")/.."
root="$PWD"

die() { echo "docker-build-check: $*" >&2; exit 1; }

[ -f "$dockerfile" ] || die "no Dockerfile"
# A .dockerignore would change what COPY brings in; this script does not model it.
[ ! -e "$root/.dockerignore" ] || die ".dockerignore exists; teach this script its rules first"

# Logical lines: comments dropped, backslash continuations joined.
mapfile -t lines < <(sed -e '/^[[:space:]]*#/d' "$dockerfile" | sed -e ':a' -e '/\\$/{N;s/\\\n//;ba}' | sed -e '/^[[:space:]]*$/d')

# The build stage is the one whose RUN lines call `cargo build`.
stage_start=-1 stage_end=${#lines[@]} build_stage=-1
for i in "${!lines[@]}"; do
  read -r instr _ <<<"${lines[$i]}"
  case "${instr^^}" in
    FROM)
      if [ "$build_stage" -ge 0 ]; then stage_end=$i; break; fi
      stage_start=$i ;;
    RUN)
      if [[ "${lines[$i]}" == *"cargo build"* ]]; then build_stage=$stage_start; fi ;;
  esac
done
[ "$build_stage" -ge 0 ] || die "no stage of the Dockerfile runs \`cargo build\`"

# Outside the repository, as /src is in the image: no parent manifest can claim it as a workspace.
work="$(mktemp -d "${TMPDIR:-/tmp}/regwatch-docker-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
image="$work/image"          # stands for the image's filesystem root
mkdir -p "$image"
workdir=/
ran=0

# `COPY [--flag…] SRC… DEST`, with Docker's rules: a directory's contents are copied into DEST; a
# file lands in DEST when DEST ends in `/` or there are several sources, and is DEST otherwise.
copy() {
  local args=() a
  read -r -a args <<<"$1"
  for a in "${args[@]}"; do
    case "$a" in
      --from=*) return 0 ;;  # from another stage or image, not from the build context
      --chown=* | --chmod=* | --link) ;;
      --*) die "COPY flag $a is not modelled: $1" ;;
    esac
  done
  local paths=()
  for a in "${args[@]}"; do [[ "$a" == --* ]] || paths+=("$a"); done
  [[ "${paths[0]}" != \[* ]] || die "COPY in JSON form is not modelled: $1"
  [ "${#paths[@]}" -ge 2 ] || die "COPY needs a source and a destination: $1"
  local dest="${paths[-1]}" srcs=("${paths[@]:0:${#paths[@]}-1}")
  [[ "$dest" == /* ]] || dest="${workdir%/}/$dest"
  local to_dir=0
  if [[ "$dest" == */ ]] || [ "${#srcs[@]}" -gt 1 ]; then to_dir=1; fi
  for a in "${srcs[@]}"; do
    [[ "$a" != *[\*\?\[]* ]] || die "COPY wildcards are not modelled: $1"
    local src="$root/$a"
    [ -e "$src" ] || die "COPY source $a does not exist (line: COPY $1)"
    if [ -d "$src" ]; then
      mkdir -p "$image$dest"
      cp -a "$src/." "$image$dest/"
    elif [ "$to_dir" -eq 1 ]; then
      mkdir -p "$image$dest"
      cp -a "$src" "$image$dest/"
    else
      mkdir -p "$(dirname "$image$dest")"
      cp -a "$src" "$image$dest"
    fi
  done
}

echo "docker-build-check: build stage of $dockerfile (line: ${lines[$build_stage]})"
for ((i = build_stage + 1; i < stage_end; i++)); do
  line="${lines[$i]}"
  read -r instr rest <<<"$line"
  case "${instr^^}" in
    WORKDIR)
      [[ "$rest" == /* ]] || die "relative WORKDIR is not modelled: $line"
      workdir="$rest"
      mkdir -p "$image$workdir" ;;
    COPY)
      copy "$rest"
      echo "  COPY $rest" ;;
    RUN)
      if [[ "$rest" != *cargo* ]]; then
        echo "  skipped, not a cargo command: RUN ${rest:0:60}…"
        continue
      fi
      mkdir -p "$image$workdir"
      mkdir -p "$root/target"
      [ -e "$image$workdir/target" ] || ln -s "$root/target" "$image$workdir/target"
      echo "  RUN $rest   (in a copy holding only: $(cd "$image$workdir" && ls -A | grep -vx target | tr '\n' ' '))"
      (cd "$image$workdir" && /bin/sh -c "$rest") \
        || die "the Dockerfile's build command failed on the files its COPY lines bring in: RUN $rest"
      ran=$((ran + 1)) ;;
    *) die "instruction ${instr} in the build stage is not modelled: $line" ;;
  esac
done
[ "$ran" -gt 0 ] || die "the build stage ran no cargo command"
echo "docker-build-check: ok, the build stage builds from its COPY lines alone"
