#!/usr/bin/env bash
# GameZone's local Kubernetes control plane: etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler built from the official Go
# modules (tests/controlplane/go), plus KWOK simulating nodes and pods, and
# on request real nodes (kubelet + containerd, see realnode.sh).
#
#   cp.sh build [--real-nodes] [--no-kwok] [--no-dns]
#                                    build the binaries once into the cache
#                                    (--real-nodes: also kubelet, containerd, runc, CNI
#                                    and CoreDNS for the real nodes' pods; --no-kwok: not
#                                    KWOK, for clusters of real nodes only; --no-dns: not
#                                    CoreDNS)
#   cp.sh up DIR [--nodes N] [--real-nodes R] [--no-dns] [--watch-pid PID]
#                                    start a control plane with state in DIR:
#                                    N KWOK nodes node-1.. (0: no KWOK at all), R real
#                                    nodes real-1.. (--no-dns: without cluster DNS, for
#                                    pods that resolve no names)
#   cp.sh down DIR [--keep]          stop it (nothing left running), remove DIR
#   cp.sh status DIR                 processes and their memory
#   cp.sh kubectl DIR ARGS...        the built kubectl against DIR's cluster
#   cp.sh wait-crds DIR              until every CRD of DIR's cluster is Established
#   cp.sh node-stop DIR real-I [--kill]
#                                    kill real node I's containerd and kubelet (SIGTERM,
#                                    or SIGKILL), as a crash would: its pods' shims and
#                                    containers keep running
#   cp.sh node-start DIR real-I      start them again (same config, namespaces, cgroup);
#                                    returns once the node reports Ready again
#
# GAMEZONE_CP_PROFILING=1 serves /debug/pprof on the API server, controller
# manager and scheduler (for `go tool pprof` while a benchmark runs).
#
# GAMEZONE_CP_QUICK=1 (the demo's) for `build` and `up`: when the cache holds no optimized
# build, Kubernetes (the control plane and kubelet) is built without the Go compiler's
# inlining (-gcflags=all=-l), in directories of their own: about a third less compile time
# for binaries that run somewhat slower, which one small zone does not notice. Tests and
# benchmarks never ask for it. A cluster started so remembers it (DIR/quick): `kubectl`,
# `node-start` and `down` use the binaries it runs.
#
# The API server keeps an audit log of every write in DIR/audit.log (JSON
# lines, level Metadata: verb, object, user, userAgent, timestamps; reads are
# not logged), so a test can check who wrote what and when.
#
# Binaries live outside the repo in
#   ${GAMEZONE_CACHE:-$HOME/.cache/gamezone}/controlplane/<versions>/bin
# so a second `up` only pays for process start-up.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
GO_MODULE="$HERE/go"
STAGES_DIR="$HERE/stages"

KWOK_VERSION=v0.8.0
# Kubernetes and etcd versions come from the wrapper module: one place to bump.
K8S_VERSION=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$GO_MODULE/go.mod")
ETCD_VERSION=$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2; exit }' "$GO_MODULE/go.mod")

CACHE=${GAMEZONE_CACHE:-$HOME/.cache/gamezone}
PROFILING=false; [[ "${GAMEZONE_CP_PROFILING:-}" == 1 ]] && PROFILING=true
VERSION_DIR="$CACHE/controlplane/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
BIN="$VERSION_DIR/bin"
# KWOK apart: it builds from its own module graph, and clusters of real nodes only need none.
KWOK_BIN="$VERSION_DIR/kwok-bin"
PORTS_DIR="$CACHE/controlplane/port-reservations"

# Ranges that never collide with each other or with kwok's pod CIDR.
SERVICE_CIDR=10.0.0.0/24
POD_CIDR=10.244.0.0/16
MAX_NODES=250

LOG_PREFIX=cp
# shellcheck source=../lib/procs.sh
source "$HERE/../lib/procs.sh"
# shellcheck source=realnode.sh
source "$HERE/realnode.sh"
# shellcheck source=dns.sh
source "$HERE/dns.sh"

usage() {
  sed -n '2,27p' "$SELF" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# The quick flavor (see the top): its own directories, and inlining off for the Go builds
# that take GOFLAGS (the control plane, kubelet).
quick_flavor() {
  VERSION_DIR+=_quick
  BIN=$VERSION_DIR/bin
  KWOK_BIN=$VERSION_DIR/kwok-bin
  REAL_NODE_DIR+=_quick
  REAL_BIN=$REAL_NODE_DIR/bin
  export GOFLAGS="${GOFLAGS:--mod=mod} -gcflags=all=-l" GAMEZONE_CP_FLAVOR=quick
}

# choose_flavor SUBCOMMAND [DIR]: the quick flavor when asked for and no optimized build is
# there (build, up), when the `up` that started this node said so (node-run), or when DIR's
# cluster was started from it.
choose_flavor() {
  local quick=false
  case $1 in
    build | up) [[ ${GAMEZONE_CP_QUICK:-} != 1 || -f "$VERSION_DIR/.complete" ]] || quick=true ;;
    node-run) [[ ${GAMEZONE_CP_FLAVOR:-} != quick ]] || quick=true ;;
    *) [[ -z ${2:-} || ! -f "$2/quick" ]] || quick=true ;;
  esac
  if $quick; then quick_flavor; fi
}

# ---------------------------------------------------------------- build

# Everything that decides what the binaries contain. A marker with another
# fingerprint means the module changed under the same versions: rebuild.
inputs_fingerprint() {
  (
    cd "$GO_MODULE"
    cat go.mod go.sum
    find cmd -type f -name '*.go' | LC_ALL=C sort | xargs cat
    go version
    sed -n '/^cmd_build()/,/^}/p' "$SELF" # how they are built
  ) | sha256sum | cut -d' ' -f1
}

# KWOK's binary, built once per version (and Go) into $KWOK_BIN.
cmd_build_kwok() {
  require_tools go flock
  local fingerprint started stage
  fingerprint="kwok $KWOK_VERSION $(go version)"
  if [[ -f "$KWOK_BIN/.complete" && "$(cat "$KWOK_BIN/.complete")" == "$fingerprint" ]]; then
    return 0
  fi
  mkdir -p "$VERSION_DIR"
  exec 8>"$VERSION_DIR/.kwok.lock"
  flock 8
  if [[ -f "$KWOK_BIN/.complete" && "$(cat "$KWOK_BIN/.complete")" == "$fingerprint" ]]; then
    exec 8>&-
    return 0
  fi
  started=$(now)
  stage=$(mktemp -d "$VERSION_DIR/kwok.partial.XXXXXX")
  chmod 755 "$stage"
  # shellcheck disable=SC2064 # expand now: the directory is fixed
  trap "rm -rf '$stage'" EXIT
  say "building kwok $KWOK_VERSION"
  : >"$VERSION_DIR/kwok-build.log"
  # `go install pkg@version` uses kwok's own module graph, where -mod=mod is not allowed.
  GOFLAGS='' GOSUMDB=${GOSUMDB:-off} GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0 GOBIN="$stage" \
    go install -v -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" 2>&1 |
    progress "$VERSION_DIR/kwok-build.log" || BUILD_LOG="$VERSION_DIR/kwok-build.log" build_failed
  [[ -x "$stage/kwok" ]] || die "build produced no kwok"
  rm -rf "$KWOK_BIN"
  mv "$stage" "$KWOK_BIN"
  trap - EXIT
  echo "$fingerprint" >"$KWOK_BIN/.complete"
  exec 8>&-
  say "  kwok built in $(since "$started")s"
}


cmd_build() {
  require_tools go sha256sum flock
  export GOFLAGS=${GOFLAGS:--mod=mod} GOSUMDB=${GOSUMDB:-off} GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0
  local fingerprint
  fingerprint=$(inputs_fingerprint)
  if [[ -f "$VERSION_DIR/.complete" && "$(cat "$VERSION_DIR/.complete")" == "$fingerprint" ]]; then
    say "binaries up to date in $BIN"
    return 0
  fi
  # One build at a time (parallel `up`s on a cold cache): wait, then look again.
  mkdir -p "$VERSION_DIR"
  exec 9>"$VERSION_DIR/.lock"
  if ! flock -n 9; then
    say "another build holds $VERSION_DIR/.lock; waiting for it"
    flock 9
  fi
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

  local minor=${K8S_VERSION#v1.}
  minor=${minor%%.*}
  say "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl ($K8S_VERSION) and etcd ($ETCD_VERSION)"
  say "  cold: ~1 GB of module downloads and a long compile on 2 cores; full output in $VERSION_DIR/build.log"
  : >"$VERSION_DIR/build.log"
  local packages
  packages=$(cd "$GO_MODULE" && go list -deps ./cmd/... 2>>"$VERSION_DIR/build.log" | wc -l) || build_failed
  say "  modules ready after $(since "$started")s; compiling what is not cached of $packages packages"
  (
    cd "$GO_MODULE"
    go build -v -o "$stage/" -ldflags "-s -w \
      -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
      -X k8s.io/component-base/version.gitMajor=1 \
      -X k8s.io/component-base/version.gitMinor=$minor" ./cmd/...
  ) 2>&1 | progress "$VERSION_DIR/build.log" || build_failed
  say "  control plane built after $(since "$started")s"

  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [[ -x "$stage/$b" ]] || die "build produced no $b"
  done
  "$stage/kube-apiserver" --version >&2

  rm -rf "$BIN"
  mv "$stage" "$BIN"
  trap - EXIT
  echo "$fingerprint" >"$VERSION_DIR/.complete"
  exec 9>&- # unlock; the daemons that `up` starts next must not inherit the lock
  say "binaries ready in $BIN (build took $(since "$started")s)"
}

# Copies go's -v output (one line per package) to LOG, saying every 250 packages.
progress() {
  tee -a "$1" | awk -v start="$(date +%s)" '
    { n++ }
    n % 250 == 0 { printf "[cp]   %d packages compiled (%ds)\n", n, systime() - start > "/dev/stderr" }' >/dev/null
}

build_failed() {
  local log=${BUILD_LOG:-$VERSION_DIR/build.log}
  say "build failed; last lines of $log:"
  tail -n 30 "$log" >&2
  exit 1
}

ensure_built() {
  if [[ ! -f "$VERSION_DIR/.complete" ]]; then
    say "no binaries in $VERSION_DIR yet: building them first"
    cmd_build
  fi
}

# ---------------------------------------------------------------- ports

# A free loopback port below the kernel's ephemeral range (so an outgoing
# connection cannot grab it between here and the bind), free for TCP and UDP. Parallel `up`s
# reserve ports with an atomic mkdir until their processes have bound them.
# reserve_port VAR: sets VAR to the port.
RESERVED=()


# ---------------------------------------------------------------- certificates

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# sign PKI NAME SUBJECT EXTENSIONS [CA]: a leaf certificate NAME.crt signed by CA (default ca)
sign() {
  local pki=$1 name=$2 subject=$3 ext=$4 ca=${5:-ca}
  new_key "$pki/$name.key"
  openssl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

# make_pki DIR [EXTRA_SANS]: EXTRA_SANS like ",IP:10.1.2.3" go into the API server's certificate.
make_pki() {
  local pki=$1 extra_sans=${2:-}
  mkdir -p "$pki"
  new_key "$pki/ca.key"
  openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=gamezone-test-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$pki/ca.crt" 2>/dev/null
  sign "$pki" apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local$extra_sans"
  # system:masters: tests, the demo and the control plane components act as cluster admin.
  sign "$pki" admin "/O=system:masters/CN=gamezone-admin" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  # The front proxy (aggregation layer) has a CA of its own, as kubeadm sets it up.
  new_key "$pki/front-proxy-ca.key"
  openssl req -x509 -new -key "$pki/front-proxy-ca.key" -subj "/CN=gamezone-test-front-proxy-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$pki/front-proxy-ca.crt" 2>/dev/null
  sign "$pki" front-proxy-client "/CN=front-proxy-client" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth" front-proxy-ca
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
  openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

b64() { base64 -w0 <"$1"; }

write_kubeconfig() {
  local dir=$1 port=$2
  cat >"$dir/kubeconfig.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: gamezone
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $(b64 "$dir/pki/ca.crt")
users:
- name: gamezone-admin
  user:
    client-certificate-data: $(b64 "$dir/pki/admin.crt")
    client-key-data: $(b64 "$dir/pki/admin.key")
contexts:
- name: gamezone
  context:
    cluster: gamezone
    user: gamezone-admin
    namespace: default
current-context: gamezone
EOF
  mv "$dir/kubeconfig.tmp" "$dir/kubeconfig"
}

# ---------------------------------------------------------------- processes






# ---------------------------------------------------------------- up

# Writes (create, update, patch, delete, deletecollection) at level Metadata, nothing else; one
# entry per request, when it completed.
write_audit_policy() {
  cat >"$1" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
EOF
}

nodes_manifest() {
  local n=$1 i ip
  for ((i = 1; i <= n; i++)); do
    ip="10.0.1.$i"
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: node-$i
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/hostname: node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
spec:
  podCIDR: 10.244.$i.0/24
  podCIDRs: [10.244.$i.0/24]
status:
  addresses:
  - {type: InternalIP, address: $ip}
  - {type: Hostname, address: node-$i}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  nodeInfo: {architecture: amd64, operatingSystem: linux}
EOF
  done
}

cmd_up() {
  local nodes=3 real_nodes=0 watch_pid="" dns=true
  [[ $# -ge 1 ]] || usage
  local dir_arg=$1; shift
  while [[ $# -gt 0 ]]; do
    case $1 in
      --nodes) nodes=${2:?--nodes needs a number}; shift 2 ;;
      --nodes=*) nodes=${1#*=}; shift ;;
      --real-nodes) real_nodes=${2:?--real-nodes needs a number}; shift 2 ;;
      --real-nodes=*) real_nodes=${1#*=}; shift ;;
      --no-dns) dns=false; shift ;;
      --watch-pid) watch_pid=${2:?--watch-pid needs a pid}; shift 2 ;;
      --watch-pid=*) watch_pid=${1#*=}; shift ;;
      *) die "unknown option for up: $1" ;;
    esac
  done
  if ! [[ "$nodes" =~ ^[0-9]+$ ]] || ((nodes > MAX_NODES)); then
    die "--nodes must be 0..$MAX_NODES, got '$nodes'"
  fi
  ((nodes + real_nodes > 0)) || die "a cluster needs a node: give --nodes or --real-nodes"
  if ! [[ "$real_nodes" =~ ^[0-9]+$ ]] || ((real_nodes > MAX_REAL_NODES)); then
    die "--real-nodes must be 0..$MAX_REAL_NODES, got '$real_nodes'"
  fi
  if [[ -n "$watch_pid" ]] && ! { [[ "$watch_pid" =~ ^[0-9]+$ ]] && alive "$watch_pid"; }; then
    die "--watch-pid $watch_pid is not a running process"
  fi
  require_tools openssl curl ss setsid pgrep base64
  ensure_built
  ((nodes == 0)) || cmd_build_kwok
  CLUSTER_DNS_ON=$dns
  if ((real_nodes)); then
    [[ $(id -u) == 0 ]] || die "real nodes need root (network namespaces, cgroups, mounts)"
    ensure_real_nodes_built
    ! $dns || ensure_dns_built
    require_tools ip iptables nsenter unshare mount
  fi

  local started
  started=$(now)
  mkdir -p "$dir_arg"
  DIR=$(cd "$dir_arg" && pwd)
  if [[ -f "$DIR/pids" ]]; then
    local name pid running=false
    while read -r name pid; do alive "$pid" && running=true; done <"$DIR/pids"
    $running && die "$DIR already holds a control plane (run: $SELF down $DIR)"
    # Killed without `down` (kill -9, a crash): clean what it left, then start afresh.
    say "$DIR holds a control plane that was killed; cleaning up after it"
    cmd_down "$DIR" --keep
    [[ -f "$DIR/.gamezone-controlplane" ]] && find "$DIR" -mindepth 1 -delete
  fi
  case $DIR/ in
    /run/* | /var/run/* | /var/lib/* | /var/log/*)
      ((real_nodes == 0)) || die "real nodes hide /run, /var/lib and /var/log from their daemons: put $DIR elsewhere (e.g. under /tmp)" ;;
  esac
  touch "$DIR/.gamezone-controlplane"
  if [[ ${GAMEZONE_CP_FLAVOR:-} == quick ]]; then touch "$DIR/quick"; fi
  mkdir -p "$DIR/logs"
  : >"$DIR/pids"
  trap 'up_failed' EXIT
  # Watch from the start: a test run killed while this starts still cleans up.
  if [[ -n "$watch_pid" ]]; then start_watchdog "$watch_pid"; fi

  local etcd_port etcd_peer_port api_port kcm_port sched_port
  reserve_port etcd_port; reserve_port etcd_peer_port
  reserve_port api_port; reserve_port kcm_port; reserve_port sched_port
  printf 'etcd=%s\netcd-peer=%s\napiserver=%s\ncontroller-manager=%s\nscheduler=%s\n' \
    "$etcd_port" "$etcd_peer_port" "$api_port" "$kcm_port" "$sched_port" >"$DIR/ports"

  local extra_sans=""
  if ((real_nodes)); then
    reserve_real_slot
    # Written first: `down` finds the slot to clean even if this `up` fails half-way.
    echo "SLOT=$REAL_SLOT" >"$DIR/real-nodes.env"
    extra_sans=",IP:$HOST_ADDRESS"
  fi

  local pki="$DIR/pki" kc="$DIR/kubeconfig"
  make_pki "$pki" "$extra_sans"
  ((real_nodes == 0)) || make_real_node_pki "$pki" "$real_nodes"
  write_kubeconfig "$DIR" "$api_port"

  start etcd "$BIN/etcd" \
    --name=gamezone \
    --data-dir="$DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" \
    --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster="gamezone=http://127.0.0.1:$etcd_peer_port" \
    --unsafe-no-fsync=true \
    --log-level=warn

  # Real nodes: logs, exec and port-forward go from the API server to their kubelets.
  local kubelet_client=()
  if ((real_nodes)); then
    kubelet_client=(--kubelet-client-certificate="$pki/admin.crt" --kubelet-client-key="$pki/admin.key"
      --kubelet-preferred-address-types=InternalIP)
  fi
  write_audit_policy "$DIR/audit-policy.yaml"
  # Flags follow controller-runtime's envtest, with ServiceAccount admission
  # kept on: the controller manager holds the signing key and creates the
  # `default` ServiceAccount in every namespace, as in a real cluster. The
  # audit log is not rotated within a run (a benchmark writes ~1 KB per write).
  start kube-apiserver "$BIN/kube-apiserver" "${kubelet_client[@]}" \
    --audit-policy-file="$DIR/audit-policy.yaml" \
    --audit-log-path="$DIR/audit.log" \
    --audit-log-maxsize=4096 \
    --audit-log-maxbackup=1 \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$api_port" \
    --cert-dir="$pki/apiserver" \
    --tls-cert-file="$pki/apiserver.crt" \
    --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$pki/front-proxy-client.crt" \
    --proxy-client-key-file="$pki/front-proxy-client.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --authorization-mode=Node,RBAC \
    --allow-privileged=true \
    --endpoint-reconciler-type=none \
    --shutdown-delay-duration=0s \
    --profiling="$PROFILING"

  local ca=(--cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key")
  wait_until 120 "kube-apiserver /readyz" curl -fsS "${ca[@]}" "https://127.0.0.1:$api_port/readyz"
  say "kube-apiserver ready after $(since "$started")s"

  local auth=(--kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc")
  start kube-controller-manager "$BIN/kube-controller-manager" "${auth[@]}" \
    --leader-elect=false \
    --bind-address=127.0.0.1 \
    --secure-port="$kcm_port" \
    --cert-dir="$pki/controller-manager" \
    --controllers='*' \
    --use-service-account-credentials=false \
    --service-account-private-key-file="$pki/sa.key" \
    --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" \
    --cluster-signing-key-file="$pki/ca.key" \
    --profiling="$PROFILING"

  # Not held to a client's default of 50 requests/s (as kwokctl's --disable-qps-limits; kwok's
  # own client has no limit): benchmarks measure the API server, not a client-side throttle.
  start kube-scheduler "$BIN/kube-scheduler" "${auth[@]}" \
    --leader-elect=false \
    --bind-address=127.0.0.1 \
    --secure-port="$sched_port" \
    --cert-dir="$pki/scheduler" \
    --kube-api-qps=5000 --kube-api-burst=10000 \
    --profiling="$PROFILING"

  local kubectl=("$BIN/kubectl" --kubeconfig="$kc")
  if ((nodes)); then
    local stage_args=(-c "$HERE/kwok.yaml") f
    for f in "$STAGES_DIR"/*.yaml; do stage_args+=(-c "$f"); done
    # Only the nodes made for it: a real node's status comes from its kubelet.
    start kwok "$KWOK_BIN/kwok" \
      --kubeconfig="$kc" \
      --manage-all-nodes=false \
      --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
      --cidr="$POD_CIDR" \
      --node-lease-duration-seconds=40 \
      "${stage_args[@]}"
    nodes_manifest "$nodes" | "${kubectl[@]}" create -f - >/dev/null
  fi

  wait_until 60 "kube-controller-manager /healthz" curl -fsSk "https://127.0.0.1:$kcm_port/healthz"
  wait_until 60 "kube-scheduler /readyz" curl -fsSk "https://127.0.0.1:$sched_port/readyz"
  ((nodes == 0)) || wait_until 60 "$nodes Ready nodes" all_nodes_ready "$nodes"
  wait_until 60 "ServiceAccount default/default" "${kubectl[@]}" get serviceaccount default -n default
  ((real_nodes == 0)) || start_real_nodes "$real_nodes" "$api_port"

  release_ports
  trap - EXIT
  local real_note=""
  ((real_nodes == 0)) || real_note=" and $real_nodes real nodes (see $DIR/real-nodes.json)"
  say "control plane with $nodes nodes$real_note up in $(since "$started")s (logs in $DIR/logs; stop: $SELF down $DIR)"
  echo "export KUBECONFIG=$kc"
  echo "$kc"
}

all_nodes_ready() {
  local want=$1 ready
  ready=$("$BIN/kubectl" --kubeconfig="$DIR/kubeconfig" get nodes -l type=kwok \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$')
  [[ "$ready" -ge "$want" ]]
}


up_failed() {
  local rc=$?
  release_ports
  say "up failed (exit $rc); stopping what was started, state kept in $DIR"
  cmd_down "$DIR" --keep || true
}

# ---------------------------------------------------------------- down


cmd_down() {
  [[ $# -ge 1 ]] || usage
  local dir_arg=$1 keep=false
  shift
  [[ "${1:-}" == --keep ]] && keep=true
  [[ -d "$dir_arg" ]] || { say "$dir_arg does not exist: nothing to stop"; return 0; }
  local dir
  dir=$(cd "$dir_arg" && pwd)

  # The watchdog itself may be the caller (it execs `down`): do not kill ourselves.
  if [[ -f "$dir/watchdog.pid" ]]; then
    local w
    w=$(cat "$dir/watchdog.pid")
    if [[ "$w" != "$$" ]] && alive "$w"; then kill -TERM -- "-$w" 2>/dev/null || kill -TERM "$w" 2>/dev/null || true; fi
    rm -f "$dir/watchdog.pid"
  fi

  local names=() pids=() name pid
  if [[ -f "$dir/pids" ]]; then
    while read -r name pid; do names+=("$name"); pids+=("$pid"); done <"$dir/pids"
    # Gone first, so a concurrent `up` or the watchdog sees the stop, not crashed components.
    mv -f "$dir/pids" "$dir/pids.stopping"
  fi
  # Real nodes first (while the API server still answers their kubelets), then
  # clients, etcd last: an apiserver that loses etcd first shuts down slowly.
  local real=() clients=() storage=() i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    case ${names[i]} in
      real-*) real+=("${pids[i]}") ;;
      etcd) storage+=("${pids[i]}") ;;
      *) clients+=("${pids[i]}") ;;
    esac
  done
  stop_real_nodes "${real[@]}"
  local slot
  slot=$(real_slot_of "$dir" || true)
  if [[ -n "$slot" ]]; then
    local owner_dir=""
    [[ -f "$REAL_SLOTS_DIR/$slot/owner" ]] && read -r owner_dir _ <"$REAL_SLOTS_DIR/$slot/owner"
    # A slot given to another control plane since (after a stale cleanup) is not ours to clean.
    if [[ -z "$owner_dir" || "$owner_dir" == "$dir" ]]; then
      teardown_real_slot "$slot" "$dir"
    fi
  fi
  stop_groups "${clients[@]}"
  stop_groups "${storage[@]}"
  rm -f "$dir/pids.stopping"

  if [[ $keep == false && -f "$dir/.gamezone-controlplane" ]]; then
    rm -rf "$dir"
  fi
  say "control plane in $dir stopped"
}

# ---------------------------------------------------------------- status, kubectl

cmd_status() {
  [[ $# -ge 1 ]] || usage
  local dir
  dir=$(cd "$1" && pwd)
  [[ -f "$dir/pids" ]] || die "no control plane in $dir"
  local name pid rss total=0 slot cg
  slot=$(real_slot_of "$dir" || true)
  printf '%-24s %8s %10s\n' COMPONENT PID RSS_MiB
  while read -r name pid; do
    if alive "$pid" && [[ $name == real-* && -n "$slot" ]]; then
      # A real node: its daemons (containerd, kubelet, shims) and its pods, by cgroup.
      cg=/sys/fs/cgroup/pids/$(real_cgroup "$slot" "${name#real-}")
      rss=$(cgroup_rss_kib "$cg/node")
      total=$((total + rss))
      printf '%-24s %8s %10.1f\n' "$name daemons" "$pid" "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')"
      rss=$(cgroup_rss_kib "$cg/kubepods")
      total=$((total + rss))
      printf '%-24s %8s %10.1f\n' "$name pods" "" "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')"
    elif alive "$pid"; then
      rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
      total=$((total + rss))
      printf '%-24s %8s %10.1f\n' "$name" "$pid" "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')"
    else
      printf '%-24s %8s %10s\n' "$name" "$pid" dead
    fi
  done <"$dir/pids"
  printf '%-24s %8s %10.1f\n' total "" "$(awk -v k="$total" 'BEGIN { print k / 1024 }')"
}

cmd_kubectl() {
  [[ $# -ge 1 ]] || usage
  local dir=$1; shift
  [[ -f "$dir/kubeconfig" ]] || die "no kubeconfig in $dir"
  exec "$BIN/kubectl" --kubeconfig="$dir/kubeconfig" "$@"
}

cmd_wait_crds() {
  [[ $# -eq 1 ]] || usage
  # A CRD made a moment ago may have no conditions yet, which `kubectl wait` takes as an error
  # (".status.conditions accessor error: <nil>") rather than as not yet: ask again.
  local _
  for _ in $(seq 20); do
    (cmd_kubectl "$1" wait --for=condition=Established crd --all --timeout=60s) >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  cmd_kubectl "$1" wait --for=condition=Established crd --all --timeout=60s >/dev/null
}

main() {
  [[ $# -ge 1 ]] || usage
  local sub=$1; shift
  choose_flavor "$sub" "${1:-}"
  case $sub in
    build)
      local with_real=false with_kwok=true with_dns=true
      while [[ $# -gt 0 ]]; do
        case $1 in
          --real-nodes) with_real=true ;;
          --no-kwok) with_kwok=false ;;
          --no-dns) with_dns=false ;;
          *) die "unknown option for build: $1" ;;
        esac
        shift
      done
      cmd_build
      ! $with_kwok || cmd_build_kwok
      if $with_real; then
        cmd_build_real_nodes
        ! $with_dns || cmd_build_dns
      fi
      ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    kubectl) cmd_kubectl "$@" ;;
    wait-crds) cmd_wait_crds "$@" ;;
    node-stop) cmd_node_stop "$@" ;;
    node-start) cmd_node_start "$@" ;;
    node-run) cmd_node_run "$@" ;; # internal: a real node's daemons, inside its namespaces
    -h | --help | help) usage ;;
    *) die "unknown subcommand '$sub' (build, up, down, status, kubectl, node-stop, node-start)" ;;
  esac
}

main "$@"
