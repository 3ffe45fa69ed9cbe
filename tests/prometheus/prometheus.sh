#!/usr/bin/env bash
# Prometheus and promtool from their Go module, for the monitoring tests: Debian's package is
# built without Kubernetes service discovery, which the sample repo's scrape configuration uses.
#
#   tests/prometheus/prometheus.sh build   build once per version into the cache (minutes cold)
#   tests/prometheus/prometheus.sh bin     print the directory holding prometheus and promtool
#
# Binaries live outside the repo in ${GAMEZONE_CACHE:-$HOME/.cache/gamezone}/prometheus/<version>/bin.
# The web UI's assets are not built in (the HTTP API, which the tests use, is whole).
set -euo pipefail
VERSION=v0.316.0 # Prometheus 3.x's Go module version
CACHE=${GAMEZONE_CACHE:-$HOME/.cache/gamezone}
VERSION_DIR="$CACHE/prometheus/$VERSION"
BIN="$VERSION_DIR/bin"
say() { printf '[prometheus] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

build() {
  command -v go >/dev/null || die "go is missing: install Go 1.26 or newer"
  [[ -f "$VERSION_DIR/.complete" ]] && { say "up to date in $BIN"; return 0; }
  mkdir -p "$VERSION_DIR"
  exec 9>"$VERSION_DIR/.lock"
  flock -n 9 || { say "another build holds $VERSION_DIR/.lock; waiting for it"; flock 9; }
  [[ -f "$VERSION_DIR/.complete" ]] && { say "up to date in $BIN"; return 0; }
  local stage started=$SECONDS
  stage=$(mktemp -d "$VERSION_DIR/bin.partial.XXXXXX")
  # shellcheck disable=SC2064 # expand now: the directory is fixed
  trap "rm -rf '$stage'" EXIT
  say "building prometheus and promtool $VERSION (cold: module downloads and minutes of compiling; log in $VERSION_DIR/build.log)"
  GOFLAGS='' CGO_ENABLED=0 GOBIN="$stage" go install -ldflags "-s -w" \
    "github.com/prometheus/prometheus/cmd/prometheus@$VERSION" \
    "github.com/prometheus/prometheus/cmd/promtool@$VERSION" >"$VERSION_DIR/build.log" 2>&1 ||
    { tail -n 20 "$VERSION_DIR/build.log" >&2; die "the build failed (log above and in $VERSION_DIR/build.log)"; }
  rm -rf "$BIN"
  mv "$stage" "$BIN"
  echo "$VERSION" >"$VERSION_DIR/.complete"
  say "built in $((SECONDS - started))s into $BIN"
}

case ${1:-} in
  build) build ;;
  bin)
    [[ -f "$VERSION_DIR/.complete" ]] || die "not built: run $0 build"
    echo "$BIN"
    ;;
  *) die "usage: $0 build|bin" ;;
esac
