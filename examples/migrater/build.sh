#!/usr/bin/env bash
# Builds the migrater's binaries once into $GAMEZONE_CACHE/migrate/ and prints the path last.
#   build.sh [migrate]   golang-migrate's CLI (MySQL/MariaDB driver only, static, CGO off),
#                        cached by version: migrate/<version>/migrate
#   build.sh entrypoint  gamezone-migrate (entrypoint/), cached by a hash of its source:
#                        migrate/gamezone-migrate-<hash>/gamezone-migrate
# Idempotent: a finished build is marked by .complete, written last, and is reused.
#   MIGRATE_VERSION   golang-migrate version (default below)
#   GAMEZONE_CACHE    cache root (default ~/.cache/gamezone)
set -euo pipefail

what="${1:-migrate}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="${MIGRATE_VERSION:-v4.20.1}"
cache="${GAMEZONE_CACHE:-$HOME/.cache/gamezone}"
export GOFLAGS=-mod=mod GOSUMDB=off GOTOOLCHAIN=local CGO_ENABLED=0

case "$what" in
  migrate) name=migrate; dest="$cache/migrate/$version" ;;
  entrypoint)
    name=gamezone-migrate
    hash="$(cat "$here/entrypoint/go.mod" "$here/entrypoint/main.go" | sha256sum | cut -c1-12)"
    dest="$cache/migrate/gamezone-migrate-$hash" ;;
  *) echo "build.sh: unknown target '$what'; use migrate or entrypoint" >&2; exit 2 ;;
esac
bin="$dest/$name"

if [[ -f "$dest/.complete" && -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: go is not on PATH; install Go 1.25 or newer" >&2; exit 1; }

mkdir -p "$cache/migrate"
staging="$(mktemp -d "$cache/migrate/.partial-$name-XXXXXX")"
trap 'rm -rf "$staging"' EXIT

started=$SECONDS
if [[ "$what" == migrate ]]; then
  echo "building github.com/golang-migrate/migrate/v4/cmd/migrate@$version (-tags mysql, CGO_ENABLED=0)" >&2
  # The CLI prints main.Version for -version; stamp the module version into it.
  GOBIN="$staging" go install -tags mysql -trimpath -ldflags "-s -w -X main.Version=$version" \
    "github.com/golang-migrate/migrate/v4/cmd/migrate@$version"
  # A binary that cannot print its version (wrong arch, truncated) is not kept.
  [[ "$("$staging/migrate" -version 2>&1)" == "$version" ]] || { echo "build.sh: built migrate does not report $version" >&2; exit 1; }
else
  echo "building gamezone-migrate from $here/entrypoint" >&2
  go build -C "$here/entrypoint" -trimpath -ldflags "-s -w" -o "$staging/gamezone-migrate" .
  # Without its env it must refuse, naming the first missing variable.
  if out="$(env -i "$staging/gamezone-migrate" 2>&1)" || [[ "$out" != *"MYSQL_HOST is not set"* ]]; then
    echo "build.sh: built gamezone-migrate does not behave: $out" >&2; exit 1
  fi
fi
echo "built $name in $((SECONDS - started)) s" >&2

chmod 755 "$staging"
rm -rf "$dest"
mv "$staging" "$dest"
trap - EXIT
touch "$dest/.complete"
echo "$bin"
