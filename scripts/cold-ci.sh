#!/usr/bin/env bash
# Measures what CI (or the demo) costs on a fresh machine: `.ci/run` (or `scripts/demo.sh`) in a
# fresh clone of HEAD, with every build cache empty (GAMEZONE_CACHE, cargo's home and target, Go's build and module caches,
# npm's cache) under DIR, each output line stamped with the time since the start and the load
# average, and a summary of the long steps at the end. What the machine already has stays:
# Debian packages, the Rust toolchain, Go, hadolint.
#
#   scripts/cold-ci.sh DIR        run CI (DIR must not exist; about 14 GB; removed with rm -rf DIR)
#   scripts/cold-ci.sh DIR demo   run the demo instead, then stop it (about 6 GB)
#
# Without an idle machine the figures are an upper bound: the summary prints the load seen.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${1:?usage: scripts/cold-ci.sh DIR [demo]}
WHAT=${2:-ci}
case $WHAT in ci) RUN=(.ci/run) ;; demo) RUN=(scripts/demo.sh) ;; *) echo "cold-ci: run ci or demo, not $WHAT" >&2; exit 2 ;; esac
[[ ! -e "$DIR" ]] || { echo "cold-ci: $DIR exists; give a new directory" >&2; exit 2; }
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
LOG="$DIR/run.log"

git clone -q "$ROOT" "$DIR/repo"
# CI clones beside ../shared.
[[ -d "$ROOT/../shared" ]] && ln -s "$(cd "$ROOT/../shared" && pwd)" "$DIR/shared"

export GAMEZONE_CACHE="$DIR/cache" CARGO_HOME="$DIR/cargo-home" GOCACHE="$DIR/go-build" \
  GOMODCACHE="$DIR/go-mod" npm_config_cache="$DIR/npm-cache"
unset CARGO_TARGET_DIR GAMEZONE_TOOLS GAMEZONE_TOOLS_TARGET GAMEZONE_S3S_FS GAMEZONE_KUBECONFIG

start=$(date +%s)
stamp() {
  while IFS= read -r line; do
    printf '%s +%ss [%s] %s\n' "$(date +%T)" "$(($(date +%s) - start))" "$(cut -d' ' -f1 /proc/loadavg)" "$line"
  done
}
# Load and disk every 5 minutes, to say how idle the machine was.
(while sleep 300; do echo "$(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg) cache $(du -sh "$DIR" 2>/dev/null | cut -f1)"; done) \
  >"$DIR/samples.log" &
sampler=$!
trap 'kill "$sampler" 2>/dev/null || true' EXIT

echo "cold $WHAT run of $(git -C "$DIR/repo" rev-parse --short HEAD) in $DIR; log: $LOG" >&2
set +e
(cd "$DIR/repo" && "${RUN[@]}") 2>&1 | stamp | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
total=$(($(date +%s) - start))
# A failed demo's logs (the operator's, the registry's, the node's) outlive its `down`.
if [[ $WHAT == demo && $rc != 0 && -d "$GAMEZONE_CACHE/demo" ]]; then
  mkdir -p "$DIR/demo-logs"
  (cd "$GAMEZONE_CACHE/demo" && find . -name '*.log' -size -50M -exec cp --parents {} "$DIR/demo-logs/" \;) || true
  echo "the failed demo's logs: $DIR/demo-logs" >&2
fi
[[ $WHAT != demo ]] || (cd "$DIR/repo" && scripts/demo.sh down >/dev/null 2>&1) || true

{
  echo
  echo "=== cold $WHAT: exit $rc after $((total / 60)) min $((total % 60)) s"
  grep -E 'built after|build took|built [a-z-]+ in|Finished|test result:|passed|failed' "$LOG" | grep -v 'Compiling' | tail -n 60
  echo "--- load and disk every 5 min"
  cat "$DIR/samples.log"
} | tee -a "$LOG"
exit "$rc"
