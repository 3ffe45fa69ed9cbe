#!/usr/bin/env bash
# The crates' dependencies say the architecture; this checks what the compiler cannot: that the
# API types and the core build without a Kubernetes client, a runtime or libgit2, and that the SDK
# sidecar (in every game pod) builds without the operator and without the fetcher.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# forbid CRATE DEP... : fails when CRATE depends (normally, at any depth) on one of DEP.
forbid() {
  local crate=$1 found
  shift
  found=$(cargo tree --locked -p "$crate" -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u |
    grep -Fx "${@/#/-e}" || true)
  if [[ -n $found ]]; then
    echo "[layers] $crate must not depend on: $(echo "$found" | tr '\n' ' ')" >&2
    echo "[layers] see why: cargo tree -p $crate -e normal -i <name>" >&2
    return 1
  fi
  echo "[layers] $crate: none of $*" >&2
}

forbid gamezone-api kube-client kube-runtime tokio git2 object_store reqwest
forbid gamezone-core kube-client kube-runtime tokio git2 object_store reqwest
forbid gamezone-sdk gamezone gamezone-init gamezone-core git2 object_store reqwest
