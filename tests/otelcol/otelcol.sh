#!/usr/bin/env bash
# An OpenTelemetry Collector from its Go modules, for the log pipeline test: the module in
# tests/otelcol/go holds exactly the components the sample repo's monitoring/otel-collector.yaml
# names, plus the file exporter the test reads, all at one collector release.
#
#   tests/otelcol/otelcol.sh build   build once per module content into the cache (minutes cold)
#   tests/otelcol/otelcol.sh bin     print the directory holding otelcol
#
# Binaries live outside the repo in ${GAMEZONE_CACHE:-$HOME/.cache/gamezone}/otelcol/<version>/bin.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODULE="$HERE/go"
# The collector release is the one go.mod requires: one place to change it.
VERSION=$(awk '$1 == "go.opentelemetry.io/collector/otelcol" { print $2 }' "$MODULE/go.mod")
CACHE=${GAMEZONE_CACHE:-$HOME/.cache/gamezone}
VERSION_DIR="$CACHE/otelcol/$VERSION"
BIN="$VERSION_DIR/bin"
say() { printf '[otelcol] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# The module is in this repo, so its content (not only the release) decides the binary.
fingerprint() {
  (cd "$MODULE" && cat go.mod go.sum main.go && go version) | sha256sum | cut -d' ' -f1
}

built() { [[ -f "$VERSION_DIR/.complete" && "$(cat "$VERSION_DIR/.complete")" == "$VERSION $(fingerprint)" ]]; }

build() {
  command -v go >/dev/null || die "go is missing: install Go 1.26 or newer"
  [[ -n "$VERSION" ]] || die "$MODULE/go.mod requires no go.opentelemetry.io/collector/otelcol"
  built && { say "up to date in $BIN"; return 0; }
  mkdir -p "$VERSION_DIR"
  exec 9>"$VERSION_DIR/.lock"
  flock -n 9 || { say "another build holds $VERSION_DIR/.lock; waiting for it"; flock 9; }
  built && { say "up to date in $BIN"; return 0; }
  rm -f "$VERSION_DIR/.complete"
  local stage started=$SECONDS
  stage=$(mktemp -d "$VERSION_DIR/bin.partial.XXXXXX")
  # shellcheck disable=SC2064 # expand now: the directory is fixed
  trap "rm -rf '$stage'" EXIT
  say "building otelcol $VERSION (cold: module downloads and minutes of compiling; log in $VERSION_DIR/build.log)"
  (cd "$MODULE" && GOFLAGS=-mod=mod GOSUMDB=off GOTOOLCHAIN=local CGO_ENABLED=0 \
    go build -o "$stage/otelcol" -ldflags "-s -w -X main.version=$VERSION" .) >"$VERSION_DIR/build.log" 2>&1 ||
    { tail -n 20 "$VERSION_DIR/build.log" >&2; die "the build failed (log above and in $VERSION_DIR/build.log)"; }
  "$stage/otelcol" components >/dev/null 2>>"$VERSION_DIR/build.log" ||
    die "the built otelcol does not run (see $VERSION_DIR/build.log)"
  rm -rf "$BIN"
  mv "$stage" "$BIN"
  echo "$VERSION $(fingerprint)" >"$VERSION_DIR/.complete"
  say "built in $((SECONDS - started))s into $BIN"
}

case ${1:-} in
  build) build ;;
  bin)
    built || die "not built (or built from another tests/otelcol/go): run $0 build"
    echo "$BIN"
    ;;
  *) die "usage: $0 build|bin" ;;
esac
