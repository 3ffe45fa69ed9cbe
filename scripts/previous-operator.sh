#!/usr/bin/env bash
# The operator of an earlier commit, for the upgrade test (tests/zone/upgrade.rs): builds that
# commit's `gamezone` binary once into the cache and prints two lines, the binary's path and the
# folder of that commit's manifests (deploy/).
#
#   scripts/previous-operator.sh [COMMIT]
#
# COMMIT defaults to GAMEZONE_UPGRADE_FROM, else to the commit before the code under test: HEAD~1
# when the work tree's code is committed (CI), HEAD when it has uncommitted changes.
# Builds go to GAMEZONE_CACHE/previous-operator (a target dir of their own: cargo judges a path
# crate fresh by file times, so two source trees must not share one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { printf '[previous-operator] %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

CACHE=${GAMEZONE_CACHE:-$HOME/.cache/gamezone}/previous-operator
from=${1:-${GAMEZONE_UPGRADE_FROM:-}}
if [[ -z $from ]]; then
  if git diff --quiet HEAD -- Cargo.toml Cargo.lock src crates init-container deploy; then
    from=HEAD~1
  else
    from=HEAD
  fi
fi
commit=$(git rev-parse --verify --quiet "$from^{commit}") ||
  die "no commit '$from' in $(pwd) (a shallow clone? fetch more history, or name one in GAMEZONE_UPGRADE_FROM)"
out=$CACHE/$commit
if [[ ! -x $out/gamezone ]]; then
  src=$CACHE/src
  rm -rf "$src" "$out.part"
  mkdir -p "$src" "$out.part"
  # -m: every file is newer than anything built from another commit's tree.
  git archive "$commit" | tar -x -m -C "$src"
  say "building the operator of ${commit:0:12} ($(git log -1 --format=%s "$commit" | cut -c1-60)), once per commit"
  CARGO_TARGET_DIR=$CACHE/target cargo build --locked --quiet --manifest-path "$src/Cargo.toml" -p gamezone --bin gamezone >&2 ||
    die "the operator of ${commit:0:12} does not build (above); GAMEZONE_UPGRADE_FROM names another commit"
  cp "$CACHE/target/debug/gamezone" "$out.part/"
  cp -r "$src/deploy" "$out.part/"
  mv "$out.part" "$out"
  # Keep the last three commits' builds.
  ls -dt "$CACHE"/*/ | grep -Ev '/(src|target)/$' | tail -n +4 | xargs -r rm -rf
fi
printf '%s\n%s\n' "$out/gamezone" "$out/deploy"
