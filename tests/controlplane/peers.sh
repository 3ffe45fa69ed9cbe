#!/usr/bin/env bash
# Benchmark peers on the local control plane: OpenKruise Kruise-Game's manager and
# OpenKruise's manager (its Advanced StatefulSets carry Kruise-Game's pods), built from
# the Go module proxy at pinned versions and run out of the cluster against a control
# plane of cp.sh. Benchmark tools, not test dependencies: nothing in the tests needs them.
#
#   peers.sh build                   build both managers and gather their CRDs and
#                                    webhook configurations into the cache (~3 + ~8 min cold)
#   peers.sh up DIR [--qps N --burst N]
#                                    install the CRDs and webhooks (once per cluster) and
#                                    start both managers against cp.sh's cluster in DIR,
#                                    with their shipped client rate limits, or with N/s and
#                                    a burst of N for both (what our operator's client has:
#                                    no limit of its own, so as high as the scheduler's)
#   peers.sh down DIR                stop the managers (the cluster stays); `cp.sh down DIR`
#                                    stops them too
#   peers.sh bin                     print where the binaries are (built or not)
#
# Both run in DIR's process list (names kruise-manager, kruise-game-manager), logging to
# DIR/logs/<name>.log; their state (certs, config, ports) is in DIR/peers. Webhooks and CRD
# conversions go to 127.0.0.1 only.
#
# Agones (agones.dev/agones) cannot be built here: the Go module proxy answers 403 for it
# at every version.
#
# Binaries live outside the repo in
#   ${GAMEZONE_CACHE:-$HOME/.cache/gamezone}/peers/<versions>/bin
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"

KRUISE_GAME_MODULE=github.com/openkruise/kruise-game
KRUISE_GAME_VERSION=v1.0.0
KRUISE_MODULE=github.com/openkruise/kruise
KRUISE_VERSION=v1.9.0

CACHE=${GAMEZONE_CACHE:-$HOME/.cache/gamezone}
VERSION_DIR="$CACHE/peers/kruise-game-${KRUISE_GAME_VERSION}_kruise-${KRUISE_VERSION}"
BIN="$VERSION_DIR/bin"
MANIFESTS="$VERSION_DIR/manifests"
PORTS_DIR="$CACHE/controlplane/port-reservations"
# Both modules declare go 1.22/1.23: the local Go builds them. A newer requirement would need
# GOTOOLCHAIN=go1.x.y, which the module proxy serves.
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}

# GameZone's default Dynamic range, so both sides pick host ports from as many.
HOST_PORT_MIN=7000
HOST_PORT_MAX=7999

LOG_PREFIX=peers
RESERVED=()
# shellcheck source=../lib/procs.sh
source "$HERE/../lib/procs.sh"

usage() {
  sed -n '2,26p' "$SELF" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------- build

fingerprint() {
  {
    echo "$KRUISE_GAME_MODULE@$KRUISE_GAME_VERSION $KRUISE_MODULE@$KRUISE_VERSION"
    go version
    sed -n '/^cmd_build()/,/^}/p;/^build_module()/,/^}/p;/^gather_manifests()/,/^}/p' "$SELF"
  } | sha256sum | cut -d' ' -f1
}

built() {
  [[ -f "$VERSION_DIR/.complete" && "$(cat "$VERSION_DIR/.complete")" == "$(fingerprint)" ]]
}

# build_module MODULE VERSION BINARY STAGE: the module's main package, built inside a writable
# copy of the module (its go.mod has replace lines, which `go install` refuses), into STAGE/bin.
build_module() {
  local module=$1 version=$2 binary=$3 stage=$4 dir
  say "downloading $module@$version"
  dir=$(go mod download -json "$module@$version" | awk -F'"' '$2 == "Dir" { print $4 }') ||
    die "go mod download $module@$version failed (is the Go module proxy reachable? GOPROXY=$(go env GOPROXY))"
  [[ -d "$dir" ]] || die "go mod download $module@$version gave no directory"
  cp -r "$dir" "$stage/src/$binary"
  chmod -R u+w "$stage/src/$binary"
  say "building $binary from $module@$version (minutes when cold; log: $VERSION_DIR/$binary-build.log)"
  local started
  started=$(now)
  if ! (cd "$stage/src/$binary" && GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 \
    go build -ldflags "-s -w" -o "$stage/bin/$binary" .) >"$VERSION_DIR/$binary-build.log" 2>&1; then
    tail -n 25 "$VERSION_DIR/$binary-build.log" >&2
    die "building $binary failed (full log: $VERSION_DIR/$binary-build.log)"
  fi
  say "$binary built in $(since "$started")s"
}

# The objects each manager expects to find: Kruise's CRDs and webhook configurations as its
# install manifest makes them (kustomize of config/default, the rest of it left out: the
# manager runs here, not in a Deployment), and Kruise-Game's CRDs.
gather_manifests() {
  local stage=$1 kc_dir
  mkdir -p "$stage/manifests"
  # cp.sh's kubectl does the kustomize; it wants a kubeconfig file, which kustomize never reads.
  kc_dir=$(mktemp -d)
  : >"$kc_dir/kubeconfig"
  "$HERE/cp.sh" kubectl "$kc_dir" kustomize "$stage/src/kruise-manager/config/default" 2>/dev/null |
    awk '
      /^---$/ { flush(); next }
      { doc = doc $0 "\n" }
      /^kind: (CustomResourceDefinition|MutatingWebhookConfiguration|ValidatingWebhookConfiguration)$/ { keep = 1 }
      function flush() { if (keep) printf "---\n%s", doc; doc = ""; keep = 0 }
      END { flush() }
    ' >"$stage/manifests/kruise.yaml"
  rm -rf "$kc_dir"
  grep -q '^kind: MutatingWebhookConfiguration$' "$stage/manifests/kruise.yaml" ||
    die "kustomize of Kruise's config/default gave no webhook configuration"
  local f
  for f in "$stage/src/kruise-game-manager/config/crd/bases/"*.yaml; do
    printf -- '---\n'
    cat "$f"
  done >"$stage/manifests/kruise-game-crds.yaml"
}

cmd_build() {
  require_tools go flock awk
  built && return 0
  "$HERE/cp.sh" build >&2 # its kubectl, for the manifests
  mkdir -p "$VERSION_DIR"
  exec 8>"$VERSION_DIR/.lock"
  flock 8
  if built; then exec 8>&-; return 0; fi
  local started stage
  started=$(now)
  stage=$(mktemp -d "$VERSION_DIR/build.partial.XXXXXX")
  # shellcheck disable=SC2064 # expand now: the directory is fixed
  trap "rm -rf '$stage'" EXIT
  mkdir -p "$stage/src" "$stage/bin"
  export GOSUMDB=${GOSUMDB:-off}
  build_module "$KRUISE_GAME_MODULE" "$KRUISE_GAME_VERSION" kruise-game-manager "$stage"
  build_module "$KRUISE_MODULE" "$KRUISE_VERSION" kruise-manager "$stage"
  gather_manifests "$stage"
  rm -f "$VERSION_DIR/.complete"
  rm -rf "$BIN" "$MANIFESTS"
  mv "$stage/bin" "$BIN"
  mv "$stage/manifests" "$MANIFESTS"
  rm -rf "$stage"
  trap - EXIT
  fingerprint >"$VERSION_DIR/.complete"
  exec 8>&-
  say "peers built in $(since "$started")s into $BIN"
}

# ---------------------------------------------------------------- up, down

# A CA and a serving certificate for 127.0.0.1, for Kruise-Game's webhook server (which makes
# its own only for an in-cluster Service name).
loopback_cert() {
  local dir=$1
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=peers-ca" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$dir/ext"
  openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 30 -extfile "$dir/ext" -out "$dir/tls.crt" 2>/dev/null
}

# Kruise-Game's two webhook configurations, as its manager would make them in a cluster, but
# calling its server on 127.0.0.1:PORT.
kruise_game_webhooks() {
  local port=$1 ca
  ca=$(base64 -w0 <"$2")
  cat <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: kruise-game-mutating-webhook
webhooks:
  - name: mgameserverset.kb.io
    admissionReviewVersions: [v1, v1beta1]
    sideEffects: None
    failurePolicy: Fail
    clientConfig:
      url: https://127.0.0.1:$port/mutate-v1-pod
      caBundle: $ca
    rules:
      - operations: [CREATE, UPDATE, DELETE]
        apiGroups: [""]
        apiVersions: [v1]
        resources: [pods]
    objectSelector:
      matchExpressions:
        - {key: game.kruise.io/owner-gss, operator: Exists}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: kruise-game-validating-webhook
webhooks:
  - name: vgameserverset.kb.io
    admissionReviewVersions: [v1, v1beta1]
    sideEffects: None
    failurePolicy: Fail
    clientConfig:
      url: https://127.0.0.1:$port/validate-v1alpha1-gss
      caBundle: $ca
    rules:
      - operations: [CREATE, UPDATE]
        apiGroups: [game.kruise.io]
        apiVersions: [v1alpha1]
        resources: [gameserversets]
EOF
}

# Objects both managers need, made once per cluster; ports, certs and config kept in DIR/peers
# so a restarted manager serves where its webhooks point.
install_once() {
  local state=$DIR/peers
  [[ -f "$state/installed" ]] && return 0
  mkdir -p "$state"
  say "installing Kruise's and Kruise-Game's CRDs and webhook configurations"
  local p
  for p in kruise_webhook kruise_probe kruise_metrics kruise_pprof \
    game_webhook game_probe game_metrics game_scale; do
    reserve_port "port_$p"
  done
  {
    for p in kruise_webhook kruise_probe kruise_metrics kruise_pprof game_webhook game_probe game_metrics game_scale; do
      local var="port_$p"
      echo "$p=${!var}"
    done
  } >"$state/ports"
  "${KUBECTL[@]}" create namespace kruise-system >/dev/null
  "${KUBECTL[@]}" create -f "$MANIFESTS/kruise.yaml" >/dev/null
  "${KUBECTL[@]}" create -f "$MANIFESTS/kruise-game-crds.yaml" >/dev/null
  "$HERE/cp.sh" wait-crds "$DIR"
  loopback_cert "$state/kruise-game-certs"
  printf '[kubernetes]\nenable = true\n[kubernetes.hostPort]\nmin_port = %s\nmax_port = %s\n' \
    "$HOST_PORT_MIN" "$HOST_PORT_MAX" >"$state/kruise-game.toml"
  kruise_game_webhooks "$(port_of game_webhook)" "$state/kruise-game-certs/ca.crt" | "${KUBECTL[@]}" create -f - >/dev/null
  release_ports
  touch "$state/installed"
}

port_of() { awk -F= -v k="$1" '$1 == k { print $2 }' "$DIR/peers/ports"; }

ready_on() { curl -fsS "http://127.0.0.1:$1/readyz"; }

cmd_up() {
  [[ $# -ge 1 ]] || usage
  local dir_arg=$1 qps="" burst=""
  shift
  while [[ $# -gt 0 ]]; do
    case $1 in
      --qps) qps=${2:?--qps needs a number}; shift ;;
      --burst) burst=${2:?--burst needs a number}; shift ;;
      *) die "unknown option for up: $1" ;;
    esac
    shift
  done
  [[ -z "$qps$burst" || ( -n "$qps" && -n "$burst" ) ]] || die "give --qps and --burst together"
  [[ -f "$dir_arg/kubeconfig" && -f "$dir_arg/pids" ]] || die "no control plane in $dir_arg (start one: $HERE/cp.sh up $dir_arg)"
  built || die "the peers are not built (run: $SELF build)"
  require_tools openssl curl base64
  DIR=$(cd "$dir_arg" && pwd)
  if grep -qE '^kruise-(game-)?manager ' "$DIR/pids"; then die "the peers already run in $DIR (stop them: $SELF down $DIR)"; fi
  KUBECTL=("$HERE/cp.sh" kubectl "$DIR")
  install_once
  local kc=$DIR/kubeconfig state=$DIR/peers
  local kruise_limits=() game_limits=()
  if [[ -n "$qps" ]]; then
    kruise_limits=(--rest-config-qps="$qps" --rest-config-burst="$burst")
    game_limits=(--api-server-qps="$qps" --api-server-qps-burst="$burst")
  fi
  # Out of the cluster by WEBHOOK_HOST: it writes its certs to WEBHOOK_CERT_DIR and points its
  # webhooks and CRD conversions at 127.0.0.1. No leader election (one manager, no kruise-system
  # lease to hold). Not --namespace: it panics in this version.
  start kruise-manager env KUBECONFIG="$kc" WEBHOOK_HOST=127.0.0.1 \
    WEBHOOK_PORT="$(port_of kruise_webhook)" WEBHOOK_CERT_DIR="$state/kruise-certs" \
    "$BIN/kruise-manager" \
    --enable-leader-election=false \
    --metrics-addr="127.0.0.1:$(port_of kruise_metrics)" \
    --health-probe-addr="127.0.0.1:$(port_of kruise_probe)" \
    --pprof-addr="127.0.0.1:$(port_of kruise_pprof)" \
    "${kruise_limits[@]}"
  wait_until 120 "kruise-manager /readyz" ready_on "$(port_of kruise_probe)"
  start kruise-game-manager env KUBECONFIG="$kc" "$BIN/kruise-game-manager" \
    --enable-cert-generation=false \
    --webhook-port="$(port_of game_webhook)" \
    --webhook-server-certs-dir="$state/kruise-game-certs" \
    --provider-config="$state/kruise-game.toml" \
    --metrics-bind-address="127.0.0.1:$(port_of game_metrics)" \
    --health-probe-bind-address="127.0.0.1:$(port_of game_probe)" \
    --scale-server-bind-address="127.0.0.1:$(port_of game_scale)" \
    "${game_limits[@]}"
  wait_until 60 "kruise-game-manager /readyz" ready_on "$(port_of game_probe)"
  say "kruise-manager and kruise-game-manager up (client limits: ${qps:-shipped defaults}${burst:+/$burst}; logs in $DIR/logs)"
}

cmd_down() {
  [[ $# -ge 1 ]] || usage
  [[ -f "$1/pids" ]] || { say "no control plane in $1: nothing to stop"; return 0; }
  DIR=$(cd "$1" && pwd)
  local name pid pids=()
  while read -r name pid; do
    [[ $name == kruise-manager || $name == kruise-game-manager ]] && pids+=("$pid")
  done <"$DIR/pids"
  stop_groups "${pids[@]}"
  # Out of the list only once stopped: `cp.sh down` still finds them if this is interrupted.
  local kept
  kept=$(grep -vE '^kruise-(game-)?manager ' "$DIR/pids" || true)
  printf '%s\n' "$kept" | sed '/^$/d' >"$DIR/pids.peers" && mv -f "$DIR/pids.peers" "$DIR/pids"
  say "peers in $DIR stopped"
}

main() {
  [[ $# -ge 1 ]] || usage
  local sub=$1
  shift
  case $sub in
    build) cmd_build "$@" ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    bin) echo "$BIN" ;;
    -h | --help | help) usage ;;
    *) die "unknown subcommand '$sub' (build, up, down)" ;;
  esac
}

main "$@"
