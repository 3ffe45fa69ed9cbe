#!/usr/bin/env bash
# Argo CD for GameZone's tests: the application controller, the repo server and the
# ApplicationSet controller, built from Argo CD's Go module (tests/argocd/go), run on the
# host against a local control plane (tests/controlplane/cp.sh), with Redis from the
# distribution and kustomize built from sigs.k8s.io/kustomize/kustomize/v5. No UI or API
# server: Applications are read with kubectl.
#
#   argocd.sh build                  build argocd and kustomize once into the cache
#   argocd.sh up DIR --kubeconfig K [--watch-pid PID]
#                                    install Argo CD's CRDs and config into namespace argocd
#                                    of K's cluster and start the components, state in DIR
#   argocd.sh git-serve DIR ROOT     serve the bare repositories under ROOT over smart HTTP
#                                    (git-http-backend); prints the base URL, stopped by down
#   argocd.sh down DIR               stop everything up and git-serve started, remove DIR
#   argocd.sh status DIR             processes and their memory
#
# Reconciliation is short for tests (ARGOCD_TEST_RECONCILIATION, default 5s): Argo CD looks
# at git, and the ApplicationSet controller at its generators, that often.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
GO_MODULE="$HERE/go"

KUSTOMIZE_VERSION=v5.8.1 # what Argo CD's hack/tool-versions.sh pins for this release
ARGOCD_VERSION=$(awk '$1 == "github.com/argoproj/argo-cd/v3" { print $2; exit }' "$GO_MODULE/go.mod")
CACHE=${GAMEZONE_CACHE:-$HOME/.cache/gamezone}
VERSION_DIR="$CACHE/argocd/argocd-${ARGOCD_VERSION}_kustomize-${KUSTOMIZE_VERSION}"
BIN="$VERSION_DIR/bin"
# Shared with cp.sh, so ports reserved by either never collide.
PORTS_DIR="$CACHE/controlplane/port-reservations"
RECONCILIATION=${ARGOCD_TEST_RECONCILIATION:-5s}
ROLES=(argocd-application-controller argocd-repo-server argocd-applicationset-controller argocd-git-ask-pass)

LOG_PREFIX=argocd
# shellcheck source=../lib/procs.sh
source "$HERE/../lib/procs.sh"
usage() { sed -n '2,18p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2; }


# ---------------------------------------------------------------- build

# Everything that decides what the binaries contain; another fingerprint rebuilds.
inputs_fingerprint() {
  (
    cd "$GO_MODULE"
    cat go.mod go.sum
    find cmd -type f -name '*.go' | LC_ALL=C sort | xargs cat
    echo "kustomize $KUSTOMIZE_VERSION"
    go version
    sed -n '/^cmd_build()/,/^}/p' "$SELF"
  ) | sha256sum | cut -d' ' -f1
}

cmd_build() {
  require_tools go sha256sum flock
  export GOFLAGS=${GOFLAGS:--mod=mod} GOSUMDB=${GOSUMDB:-off} GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0
  local fingerprint
  fingerprint=$(inputs_fingerprint)
  [[ -f "$VERSION_DIR/.complete" && "$(cat "$VERSION_DIR/.complete")" == "$fingerprint" ]] &&
    { say "binaries up to date in $BIN"; return 0; }
  mkdir -p "$VERSION_DIR"
  exec 9>"$VERSION_DIR/.lock"
  flock -n 9 || { say "another build holds $VERSION_DIR/.lock; waiting for it"; flock 9; }
  if [[ -f "$VERSION_DIR/.complete" && "$(cat "$VERSION_DIR/.complete")" == "$fingerprint" ]]; then
    say "binaries up to date in $BIN"
    exec 9>&-
    return 0
  fi
  local started stage
  started=$(now)
  rm -f "$VERSION_DIR/.complete"
  stage=$(mktemp -d "$VERSION_DIR/bin.partial.XXXXXX")
  chmod 755 "$stage"
  # shellcheck disable=SC2064 # expand now: the directory is fixed
  trap "rm -rf '$stage'" EXIT
  : >"$VERSION_DIR/build.log"
  say "building argocd $ARGOCD_VERSION (cold: module downloads and minutes of compiling on 2 cores; log in $VERSION_DIR/build.log)"
  (cd "$GO_MODULE" && go build -o "$stage/argocd" -ldflags "-s -w \
      -X github.com/argoproj/argo-cd/v3/common.version=${ARGOCD_VERSION#v}" ./cmd/argocd) \
    >>"$VERSION_DIR/build.log" 2>&1 || build_failed
  say "  argocd built after $(since "$started")s"
  # `go install pkg@version` uses kustomize's own module graph, where -mod=mod is not allowed.
  GOFLAGS='' GOBIN="$stage" go install -ldflags "-s -w" "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" \
    >>"$VERSION_DIR/build.log" 2>&1 || build_failed
  say "  kustomize built after $(since "$started")s"
  local role
  # The one binary picks its role from the name it runs under, as in Argo CD's image.
  for role in "${ROLES[@]}"; do ln -s argocd "$stage/$role"; done
  "$stage/kustomize" version >&2
  rm -rf "$BIN"
  mv "$stage" "$BIN"
  trap - EXIT
  echo "$fingerprint" >"$VERSION_DIR/.complete"
  exec 9>&-
  say "binaries ready in $BIN (build took $(since "$started")s)"
}

build_failed() {
  say "build failed; last lines of $VERSION_DIR/build.log:"
  tail -n 30 "$VERSION_DIR/build.log" >&2
  exit 1
}

# ---------------------------------------------------------------- processes



# A free loopback port, reserved (atomic mkdir) until `up` has bound it.
RESERVED=()






# ---------------------------------------------------------------- up

kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# The default AppProject, as Argo CD's API server creates it on start-up (no API server here).
default_project() {
  cat <<'EOF'
apiVersion: argoproj.io/v1alpha1
kind: AppProject
metadata:
  name: default
  namespace: argocd
spec:
  sourceRepos: ['*']
  destinations: [{server: '*', namespace: '*'}]
  clusterResourceWhitelist: [{group: '*', kind: '*'}]
EOF
}

crd_established() {
  [[ $(kc get crd "$1" -o 'jsonpath={.status.conditions[?(@.type=="Established")].status}') == True ]]
}

install_argocd() {
  local module_dir
  module_dir=$(cd "$GO_MODULE" && GOFLAGS=-mod=mod GOTOOLCHAIN=local go list -m -f '{{.Dir}}' github.com/argoproj/argo-cd/v3)
  [[ -d "$module_dir/manifests/crds" ]] || die "Argo CD's module has no manifests/crds in $module_dir: run \`$SELF build\`"
  kc apply --server-side -f "$module_dir/manifests/crds/application-crd.yaml" \
    -f "$module_dir/manifests/crds/applicationset-crd.yaml" -f "$module_dir/manifests/crds/appproject-crd.yaml" >&2
  local crd
  for crd in applications applicationsets appprojects; do
    # `kubectl wait` fails at once on a CRD that has no conditions yet: poll instead.
    wait_until 60 "CRD $crd.argoproj.io established" crd_established "$crd.argoproj.io"
  done
  kc create namespace argocd --dry-run=client -o yaml | kc apply --server-side -f - >&2
  # argocd-cm, argocd-secret, argocd-rbac-cm ... exactly as Argo CD's install ships them.
  kc apply --server-side -n argocd -k "$module_dir/manifests/base/config" >&2
  default_project | kc apply --server-side -f - >&2
}

cmd_up() {
  [[ $# -ge 1 ]] || usage
  local dir_arg=$1 kubeconfig="" watch_pid=""
  shift
  while [[ $# -gt 0 ]]; do
    case $1 in
      --kubeconfig) kubeconfig=${2:?--kubeconfig needs a path}; shift 2 ;;
      --watch-pid) watch_pid=${2:?--watch-pid needs a pid}; shift 2 ;;
      *) die "unknown option for up: $1" ;;
    esac
  done
  [[ -f "$kubeconfig" ]] || die "--kubeconfig must name the control plane's kubeconfig (cp.sh up prints it)"
  if [[ -n "$watch_pid" ]] && ! alive "$watch_pid"; then die "--watch-pid $watch_pid is not a running process"; fi
  require_tools go redis-server git python3 curl ss setsid pgrep
  [[ -f "$VERSION_DIR/.complete" ]] || { say "no binaries in $VERSION_DIR yet: building them first"; cmd_build; }
  KUBECONFIG_FILE=$(cd "$(dirname "$kubeconfig")" && pwd)/$(basename "$kubeconfig")
  # cp.sh's own kubectl (the control plane's version), called with an explicit kubeconfig.
  KUBECTL=$(find "$CACHE"/controlplane/k8s-*/bin -name kubectl 2>/dev/null | head -n 1 || true)
  [[ -x "$KUBECTL" ]] || KUBECTL=$(command -v kubectl) || die "no kubectl: run tests/controlplane/cp.sh build"

  local started
  started=$(now)
  mkdir -p "$dir_arg"
  DIR=$(cd "$dir_arg" && pwd)
  [[ -f "$DIR/pids" ]] && die "$DIR already runs Argo CD (argocd.sh down $DIR first)"
  touch "$DIR/.gamezone-argocd"
  mkdir -p "$DIR/logs" "$DIR/tmp" "$DIR/home" "$DIR/redis" "$DIR/config/ssh" "$DIR/config/tls" \
    "$DIR/config/gpg" "$DIR/plugins"
  : >"$DIR/pids"
  # On any failure (die exits, so ERR is not enough) stop what was started.
  trap up_failed EXIT
  [[ -n "$watch_pid" ]] && start_watchdog "$watch_pid"

  install_argocd
  say "CRDs and config installed after $(since "$started")s"

  local redis repo repo_metrics ctrl_metrics appset_metrics appset_probe appset_webhook
  reserve_port redis; reserve_port repo; reserve_port repo_metrics; reserve_port ctrl_metrics
  reserve_port appset_metrics; reserve_port appset_probe; reserve_port appset_webhook
  printf 'redis=%s\nrepo-server=%s\nrepo-server-metrics=%s\napplication-controller-metrics=%s\napplicationset-controller-metrics=%s\napplicationset-controller-probe=%s\n' \
    "$redis" "$repo" "$repo_metrics" "$ctrl_metrics" "$appset_metrics" "$appset_probe" >"$DIR/ports"

  start redis redis-server --bind 127.0.0.1 --port "$redis" --save '' --appendonly no --dir "$DIR/redis"
  wait_until 20 "redis" redis-cli -p "$redis" ping

  # What Argo CD's Deployments set, pointed at DIR instead of /app and /home/argocd.
  export KUBECONFIG=$KUBECONFIG_FILE
  export ARGOCD_FAKE_IN_CLUSTER=true # the in-cluster destination uses KUBECONFIG
  export ARGOCD_RECONCILIATION_TIMEOUT=$RECONCILIATION ARGOCD_RECONCILIATION_JITTER=0s
  export ARGOCD_APPLICATIONSET_CONTROLLER_REQUEUE_AFTER=$RECONCILIATION
  export ARGOCD_GPG_ENABLED=false ARGOCD_GNUPGHOME="$DIR/config/gpg" ARGOCD_GPG_DATA_PATH="$DIR/config/gpg"
  export ARGOCD_SSH_DATA_PATH="$DIR/config/ssh" ARGOCD_TLS_DATA_PATH="$DIR/config/tls"
  export ARGOCD_APP_CONF_PATH="$DIR/config" ARGOCD_PLUGINSOCKFILEPATH="$DIR/plugins"
  export TMPDIR="$DIR/tmp" HOME="$DIR/home" PATH="$BIN:$PATH"
  # Argo CD 3 keeps each resource's health in Redis for its API server; with no API server
  # here, --persist-resource-health puts it into the Application's status.resources instead.

  start repo-server "$BIN/argocd-repo-server" --address 127.0.0.1 --port "$repo" \
    --metrics-address 127.0.0.1 --metrics-port "$repo_metrics" --redis "127.0.0.1:$redis" \
    --loglevel info --logformat json
  start application-controller "$BIN/argocd-application-controller" --namespace argocd \
    --repo-server "127.0.0.1:$repo" --redis "127.0.0.1:$redis" --metrics-port "$ctrl_metrics" \
    --status-processors 4 --operation-processors 2 --self-heal-timeout-seconds 2 \
    --persist-resource-health=true --loglevel info --logformat json
  start applicationset-controller "$BIN/argocd-applicationset-controller" --namespace argocd \
    --argocd-repo-server "127.0.0.1:$repo" --metrics-addr "127.0.0.1:$appset_metrics" \
    --probe-addr "127.0.0.1:$appset_probe" --webhook-addr "127.0.0.1:$appset_webhook" \
    --loglevel info --logformat json
  wait_until 60 "the repo server" curl -fsS "http://127.0.0.1:$repo_metrics/healthz"
  wait_until 60 "the application controller" curl -fsS "http://127.0.0.1:$ctrl_metrics/healthz"
  # It registers no health checks; its metrics answer once the manager runs.
  wait_until 60 "the ApplicationSet controller" curl -fsS -o /dev/null "http://127.0.0.1:$appset_metrics/metrics"
  release_ports
  trap - EXIT
  say "Argo CD $ARGOCD_VERSION up after $(since "$started")s (logs in $DIR/logs)"
}

up_failed() {
  local rc=$?
  trap - EXIT
  release_ports
  say "up failed (exit $rc); stopping what was started, state kept in $DIR"
  cmd_down "$DIR" --keep || true
  exit "$rc"
}

cmd_git_serve() {
  [[ $# -eq 2 ]] || usage
  require_tools git python3 setsid
  DIR=$(cd "$1" && pwd)
  local root
  root=$(cd "$2" && pwd)
  [[ -f "$DIR/pids" ]] || die "no Argo CD in $DIR (argocd.sh up first)"
  mkdir -p "$DIR/logs"
  rm -f "$DIR/git-http.port"
  start git-http python3 "$HERE/git-http.py" "$root" "$DIR/git-http.port"
  wait_until 20 "the git server" test -s "$DIR/git-http.port"
  echo "http://127.0.0.1:$(cat "$DIR/git-http.port")"
}

# ---------------------------------------------------------------- down, status


cmd_down() {
  [[ $# -ge 1 ]] || usage
  local dir_arg=$1 keep=false
  [[ "${2:-}" == --keep ]] && keep=true
  [[ -d "$dir_arg" ]] || { say "$dir_arg does not exist: nothing to stop"; return 0; }
  local dir
  dir=$(cd "$dir_arg" && pwd)
  if [[ -f "$dir/watchdog.pid" ]]; then
    local w
    w=$(cat "$dir/watchdog.pid")
    if [[ "$w" != "$$" ]] && alive "$w"; then kill -TERM -- "-$w" 2>/dev/null || kill -TERM "$w" 2>/dev/null || true; fi
    rm -f "$dir/watchdog.pid"
  fi
  local pids=() name pid
  if [[ -f "$dir/pids" ]]; then
    while read -r name pid; do pids+=("$pid"); done <"$dir/pids"
    mv -f "$dir/pids" "$dir/pids.stopping"
  fi
  stop_groups "${pids[@]}"
  rm -f "$dir/pids.stopping"
  if [[ $keep == false && -f "$dir/.gamezone-argocd" ]]; then rm -rf "$dir"; fi
  say "Argo CD in $dir stopped"
}

cmd_status() {
  [[ $# -ge 1 ]] || usage
  local dir name pid rss total=0
  dir=$(cd "$1" && pwd)
  [[ -f "$dir/pids" ]] || die "no Argo CD in $dir"
  printf '%-28s %8s %10s\n' COMPONENT PID RSS_MiB
  while read -r name pid; do
    if alive "$pid"; then
      rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
      total=$((total + rss))
      printf '%-28s %8s %10.1f\n' "$name" "$pid" "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')"
    else
      printf '%-28s %8s %10s\n' "$name" "$pid" dead
    fi
  done <"$dir/pids"
  printf '%-28s %8s %10.1f\n' total "" "$(awk -v k="$total" 'BEGIN { print k / 1024 }')"
}

main() {
  [[ $# -ge 1 ]] || usage
  local sub=$1
  shift
  case $sub in
    build) [[ $# -eq 0 ]] || die "build takes no options"; cmd_build ;;
    up) cmd_up "$@" ;;
    git-serve) cmd_git_serve "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    -h | --help | help) usage ;;
    *) die "unknown subcommand '$sub' (build, up, git-serve, down, status)" ;;
  esac
}

main "$@"
