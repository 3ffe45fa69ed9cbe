#!/usr/bin/env bash
# Every check of the project: formatting, lints, the Dockerfile, then unit and integration
# tests against one real local control plane shared by the run. Installs what it needs first.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
say() { printf '\n[test] %s\n' "$*" >&2; }

export GAMEZONE_CACHE=${GAMEZONE_CACHE:-$HOME/.cache/gamezone}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$GAMEZONE_CACHE/cargo-target}
# A test run builds each crate once: incremental caches would only grow the target dir (they
# reached tens of GB across runs).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# The init-container's test servers (s3s-fs) live under the same cache root.
export GAMEZONE_TOOLS=${GAMEZONE_TOOLS:-$GAMEZONE_CACHE/tools}
export GAMEZONE_TOOLS_TARGET=${GAMEZONE_TOOLS_TARGET:-$GAMEZONE_CACHE/tools-target}
export GAMEZONE_S3S_FS=${GAMEZONE_S3S_FS:-$GAMEZONE_TOOLS/s3s-fs-${S3S_FS_VERSION:-0.14.1}/bin/s3s-fs}

bash scripts/setup.sh packages
say "cargo fmt --check"
cargo fmt --all -- --check
say "crate layers (cargo tree)"
bash scripts/layers.sh
say "hadolint Dockerfile"
hadolint Dockerfile

# The workspace compiles (clippy, then the test binaries) beside the setup's Go and Rust builds
# of the servers the tests run: on a cold machine each alone leaves a core idle in its link and
# download steps. Its lines carry a [rust] prefix.
rust_build() {
  say "cargo clippy --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets --locked -- -D warnings
  say "cargo test --no-run (the test binaries)"
  cargo test --workspace --locked --no-run
}
# shellcheck source=scripts/lib/beside.sh
source scripts/lib/beside.sh
beside_start rust rust_build
bash scripts/setup.sh builds
beside_wait || { say "clippy or the test build failed: see the [rust] lines above"; exit 1; }
say "clippy clean, test binaries built"

say "starting the shared control plane"
CP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gamezone-test-cp.XXXXXX")
trap 'tests/controlplane/cp.sh down "$CP_DIR" >/dev/null 2>&1 || true' EXIT
GAMEZONE_KUBECONFIG=$(tests/controlplane/cp.sh up "$CP_DIR" --nodes 3 --watch-pid $$ | tail -n 1)
export GAMEZONE_KUBECONFIG

say "the example migrater against MariaDB"
bash examples/migrater/test.sh

say "cargo test (unit, integration, end to end)"
cargo test --workspace --locked -- "$@"
say "all checks passed"
