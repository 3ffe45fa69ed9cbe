# shellcheck shell=bash
# Real Kubernetes nodes beside the KWOK ones, sourced by cp.sh: a kubelet and
# containerd per node, each node in a network namespace of its own joined to
# the host by a veth pair, with its own mount namespace and cgroup subtree so
# that everything it starts can be found and removed again.
#
# Layout for node i (1..MAX_REAL_NODES) of the control plane holding slot s
# (0..REAL_SLOTS-1; a slot is reserved per control plane, so several can run
# side by side):
#   network namespace  gz<s>-real-<i>, interface eth0 = 10.245.<s+1>.<i>/32
#   host end of veth   gz<s>r<i>, address 10.245.0.1/32 (the same on every veth)
#   pod CIDR           10.246.<4s+i-1>.0/24 on bridge cni0 inside the namespace
#   cgroups            /gz<s>-real-<i>/node (daemons), .../kubepods (pods), in every hierarchy
#   files              DIR/real-nodes/real-<i>/ (containerd root, kubelet root, pod logs)
#   cluster DNS        10.0.0.10:53 DNAT'd to CoreDNS on the host (dns.sh)

CONTAINERD_VERSION=v2.4.2
RUNC_VERSION=v1.5.3
CNI_PLUGINS_VERSION=v1.10.0
REAL_NODE_DIR="$CACHE/realnode/k8s-${K8S_VERSION}_containerd-${CONTAINERD_VERSION}_runc-${RUNC_VERSION}_cni-${CNI_PLUGINS_VERSION}"
REAL_BIN="$REAL_NODE_DIR/bin"
REAL_SLOTS_DIR="$CACHE/controlplane/real-node-slots"
REAL_SLOTS=64
MAX_REAL_NODES=4
# What pods and node daemons dial to reach the host: every veth's host end has it.
HOST_ADDRESS=10.245.0.1
PAUSE_IMAGE=gamezone.local/pause:1
REAL_LABEL=gamezone.dev/node-kind
# Debian packages: building runc (libseccomp-dev), the pause image (libc6-dev),
# running nodes (iptables for portmap and our rules, nsenter/unshare, ip).
REAL_PACKAGES=(libseccomp-dev libc6-dev gcc iptables iproute2 util-linux)

# ---------------------------------------------------------------- build

real_inputs_fingerprint() {
  (
    cd "$GO_MODULE" || exit 1
    cat go.mod go.sum
    echo "containerd $CONTAINERD_VERSION runc $RUNC_VERSION cni $CNI_PLUGINS_VERSION"
    go version
    cat "$HERE/realnode/"*.c
    sed -n '/^cmd_build_real_nodes()/,/^}/p' "$HERE/realnode.sh"
  ) | sha256sum | cut -d' ' -f1
}

ensure_real_packages() {
  local missing=() p
  for p in "${REAL_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null || die "real nodes need the packages ${missing[*]} (Debian names); install them"
  say "apt-get install ${missing[*]}"
  local sudo=""
  [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

cmd_build_real_nodes() {
  require_tools go sha256sum flock
  ensure_real_packages
  require_tools gcc iptables ip nsenter unshare
  export GOFLAGS=${GOFLAGS:--mod=mod} GOSUMDB=${GOSUMDB:-off} GOTOOLCHAIN=${GOTOOLCHAIN:-local}
  local fingerprint
  fingerprint=$(real_inputs_fingerprint)
  if [[ -f "$REAL_NODE_DIR/.complete" && "$(cat "$REAL_NODE_DIR/.complete")" == "$fingerprint" ]]; then
    say "real node binaries up to date in $REAL_BIN"
    return 0
  fi
  mkdir -p "$REAL_NODE_DIR"
  exec 8>"$REAL_NODE_DIR/.lock"
  if ! flock -n 8; then
    say "another build holds $REAL_NODE_DIR/.lock; waiting for it"
    flock 8
  fi
  if [[ -f "$REAL_NODE_DIR/.complete" && "$(cat "$REAL_NODE_DIR/.complete")" == "$fingerprint" ]]; then
    exec 8>&-
    return 0
  fi
  local started stage log="$REAL_NODE_DIR/build.log"
  started=$(now)
  rm -f "$REAL_NODE_DIR/.complete"
  stage=$(mktemp -d "$REAL_NODE_DIR/bin.partial.XXXXXX")
  chmod 755 "$stage"
  mkdir "$stage/cni"
  # shellcheck disable=SC2064 # expand now: the directory is fixed
  trap "rm -rf '$stage'" EXIT
  : >"$log"
  # shellcheck disable=SC2034 # read by build_failed in cp.sh
  BUILD_LOG=$log

  local minor=${K8S_VERSION#v1.}
  minor=${minor%%.*}
  say "building kubelet $K8S_VERSION (in the control plane's module), containerd $CONTAINERD_VERSION, runc $RUNC_VERSION, CNI plugins $CNI_PLUGINS_VERSION"
  say "  cold: a few minutes on 2 cores; full output in $log"
  # kubelet needs a few go.sum lines more than the control plane; built from a
  # copy of the module, they do not change the control plane's fingerprint.
  local module
  module=$(mktemp -d "$REAL_NODE_DIR/module.XXXXXX")
  cp "$GO_MODULE/go.mod" "$GO_MODULE/go.sum" "$module/"
  # shellcheck disable=SC2064 # expand now: the directories are fixed
  trap "rm -rf '$stage' '$module'" EXIT
  (
    cd "$module"
    CGO_ENABLED=0 go build -v -o "$stage/kubelet" -ldflags "-s -w \
      -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
      -X k8s.io/component-base/version.gitMajor=1 \
      -X k8s.io/component-base/version.gitMinor=$minor" k8s.io/kubernetes/cmd/kubelet
  ) 2>&1 | progress "$log" || build_failed
  say "  kubelet built after $(since "$started")s"
  # `go install pkg@version` builds with each project's own module graph.
  GOFLAGS='' GOBIN="$stage" CGO_ENABLED=1 go install -v -ldflags "-s -w" \
    -tags "no_btrfs no_zfs no_devmapper no_aufs" \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION" 2>&1 | progress "$log" || build_failed
  say "  containerd built after $(since "$started")s"
  GOFLAGS='' GOBIN="$stage" CGO_ENABLED=1 go install -v -tags seccomp \
    "github.com/opencontainers/runc@$RUNC_VERSION" 2>&1 | progress "$log" || build_failed
  local p cni=()
  for p in main/bridge main/loopback ipam/host-local meta/portmap; do
    cni+=("github.com/containernetworking/plugins/plugins/$p@$CNI_PLUGINS_VERSION")
  done
  GOFLAGS='' GOBIN="$stage/cni" CGO_ENABLED=0 go install -v -ldflags "-s -w" "${cni[@]}" 2>&1 |
    progress "$log" || build_failed
  # The sandbox image's process is static: its image holds nothing else.
  gcc -O2 -Wall -static -o "$stage/pause" "$HERE/realnode/pause.c" 2>>"$log" || build_failed
  gcc -O2 -Wall -o "$stage/serve-file" "$HERE/realnode/serve-file.c" 2>>"$log" || build_failed

  for p in kubelet containerd containerd-shim-runc-v2 ctr runc pause serve-file cni/bridge cni/loopback cni/host-local cni/portmap; do
    [[ -x "$stage/$p" ]] || die "real node build produced no $p"
  done
  rm -rf "$REAL_BIN" "$module"
  mv "$stage" "$REAL_BIN"
  trap - EXIT
  echo "$fingerprint" >"$REAL_NODE_DIR/.complete"
  exec 8>&-
  say "real node binaries ready in $REAL_BIN (build took $(since "$started")s)"
}

ensure_real_nodes_built() {
  if [[ ! -f "$REAL_NODE_DIR/.complete" || "$(cat "$REAL_NODE_DIR/.complete")" != "$(real_inputs_fingerprint)" ]]; then
    say "real node binaries missing or stale in $REAL_NODE_DIR: building them first"
    cmd_build_real_nodes
  fi
}

# ---------------------------------------------------------------- names and addresses

real_netns() { echo "gz$1-real-$2"; }
real_veth() { echo "gz$1r$2"; }
real_cgroup() { echo "gz$1-real-$2"; }
real_node_ip() { echo "10.245.$(($1 + 1)).$2"; }
real_pod_cidr() { echo "10.246.$((4 * $1 + $2 - 1)).0/24"; }

# Mount points of every cgroup hierarchy (v1 controllers, named ones, the v2 unified one).
cgroup_mounts() {
  awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/self/mounts
}

# ---------------------------------------------------------------- slots

# Whether the control plane that reserved slot $1 may still be running.
slot_in_use() {
  local owner="$REAL_SLOTS_DIR/$1/owner" dir up_pid name pid list
  [[ -f "$owner" ]] || return 0 # being reserved right now
  read -r dir up_pid <"$owner"
  alive "$up_pid" && return 0
  # A `down` moves `pids` aside before it stops anything, and tears the slot down itself before
  # it stops the API server: while one runs (a test binary's watchdog after the binary exited),
  # the slot is still its own. Cleaning it up here too raced that teardown.
  for list in "$dir/pids" "$dir/pids.stopping"; do
    [[ -f "$list" ]] || continue
    while read -r name pid; do alive "$pid" && return 0; done <"$list"
  done
  return 1
}

# Cleans up after control planes that were killed without `down`, then
# reserves a free slot for DIR. Sets REAL_SLOT.
reserve_real_slot() {
  mkdir -p "$REAL_SLOTS_DIR"
  local s
  for s in $(find "$REAL_SLOTS_DIR" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -n); do
    # A slot dir younger than a minute without owner file is being reserved.
    if [[ ! -f "$REAL_SLOTS_DIR/$s/owner" ]] && [[ -n "$(find "$REAL_SLOTS_DIR/$s" -maxdepth 0 -mmin -1)" ]]; then continue; fi
    if ! slot_in_use "$s"; then
      local old_dir=""
      [[ -f "$REAL_SLOTS_DIR/$s/owner" ]] && read -r old_dir _ <"$REAL_SLOTS_DIR/$s/owner"
      say "cleaning up real nodes of slot $s left by a control plane that was killed (${old_dir:-unknown dir})"
      teardown_real_slot "$s" "$old_dir"
    fi
  done
  for ((s = 0; s < REAL_SLOTS; s++)); do
    # Network namespaces are machine-wide, reservations are per cache: a slot whose
    # namespaces exist without a reservation here belongs to a run with another cache.
    if [[ ! -d "$REAL_SLOTS_DIR/$s" ]] && compgen -G "/run/netns/$(real_netns "$s" '*')" >/dev/null; then continue; fi
    if mkdir "$REAL_SLOTS_DIR/$s" 2>/dev/null; then
      echo "$DIR $$" >"$REAL_SLOTS_DIR/$s/owner"
      # Anything still named for this slot (a `down` that could not finish) goes first.
      teardown_real_slot_resources "$s"
      REAL_SLOT=$s
      return 0
    fi
  done
  die "all $REAL_SLOTS real-node slots in $REAL_SLOTS_DIR are taken (stop control planes with \`cp.sh down DIR\`)"
}

# ---------------------------------------------------------------- up

# Certificates for the kubelets (system:node:<name> may read and write what its node needs).
make_real_node_pki() {
  local pki=$1 n=$2 i
  for ((i = 1; i <= n; i++)); do
    sign "$pki" "kubelet-real-$i" "/O=system:nodes/CN=system:node:real-$i" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  done
}

# Network namespace, veth, addresses, routes and NAT rules of node $2.
setup_real_network() {
  local s=$1 i=$2 api_port=$3
  local ns veth node_ip pod_cidr
  ns=$(real_netns "$s" "$i") veth=$(real_veth "$s" "$i")
  node_ip=$(real_node_ip "$s" "$i") pod_cidr=$(real_pod_cidr "$s" "$i")
  ip netns add "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  ip addr add "$HOST_ADDRESS/32" dev "$veth"
  # Lets the DNAT below hand the node's connections to services bound to 127.0.0.1.
  echo 1 >"/proc/sys/net/ipv4/conf/$veth/route_localnet"
  ip link set "$veth" up
  ip route add "$node_ip/32" dev "$veth" src "$HOST_ADDRESS"
  # The host reaches pod IPs directly (no masquerade anywhere).
  ip route add "$pod_cidr" via "$node_ip" dev "$veth"
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$node_ip/32" dev eth0
  ip -n "$ns" link set eth0 up
  # Only the host: no default route leaves the namespace.
  ip -n "$ns" route add "$HOST_ADDRESS/32" dev eth0 src "$node_ip"
  nsenter --net="/run/netns/$ns" sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward'
  # Anything the host serves on loopback (API server, test servers) is at HOST_ADDRESS for the node and its pods.
  iptables -w -t nat -A PREROUTING -i "$veth" -d "$HOST_ADDRESS/32" -m comment --comment "gamezone:$ns" \
    -j DNAT --to-destination 127.0.0.1
  # And for the host itself, so that one URL (http://HOST_ADDRESS:port) names a loopback server for
  # the host's processes (an operator, a test client) as well as for pods. One rule per node, like the
  # one above; the first of several matches and each goes with its node.
  iptables -w -t nat -A OUTPUT -d "$HOST_ADDRESS/32" -m comment --comment "gamezone:$ns" \
    -j DNAT --to-destination 127.0.0.1
  # The `kubernetes` Service without kube-proxy: its ClusterIP goes to the API server.
  local chain
  for chain in PREROUTING OUTPUT; do
    nsenter --net="/run/netns/$ns" iptables -w -t nat -A "$chain" -d 10.0.0.1/32 -p tcp --dport 443 \
      -j DNAT --to-destination "$HOST_ADDRESS:$api_port"
  done
}

setup_real_cgroups() {
  local cg=$1 m
  for m in $(cgroup_mounts); do
    mkdir -p "$m/$cg/node"
    # A new cpuset cgroup starts with no CPUs: give it its parent's.
    if [[ -f "$m/cpuset.cpus" ]]; then
      local d
      for d in "$m/$cg" "$m/$cg/node"; do
        cat "$(dirname "$d")/cpuset.cpus" >"$d/cpuset.cpus"
        cat "$(dirname "$d")/cpuset.mems" >"$d/cpuset.mems"
      done
    fi
  done
}

# Configuration files of node $2 in its directory $4.
write_real_node_config() {
  local s=$1 i=$2 api_port=$3 nd=$4
  local name="real-$i" node_ip pod_cidr cg
  node_ip=$(real_node_ip "$s" "$i") pod_cidr=$(real_pod_cidr "$s" "$i") cg=$(real_cgroup "$s" "$i")
  mkdir -p "$nd"/{containerd,kubelet,cni-lib,log,net.d,certs.d}
  cat >"$nd/containerd.toml" <<EOF
version = 4
root = '$nd/containerd'
# Inside the node's own mount namespace (a tmpfs): shim sockets and netns files vanish with it.
state = '/run/containerd'
imports = []

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    # Registries the node pulls from (image volumes of packed artifacts): a test writes
    # certs.d/<host:port>/hosts.toml for a plain-HTTP registry it starts; read on every pull.
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = '$nd/certs.d'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '$PAUSE_IMAGE'
  [plugins.'io.containerd.cri.v1.runtime']
    # Without CAP_SYS_RESOURCE a negative oom_score_adj is refused.
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '$REAL_BIN/runc'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['$REAL_BIN/cni']
      conf_dir = '$nd/net.d'
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
  [plugins.'io.containerd.server.v1.grpc']
    address = '$nd/containerd.sock'
EOF
  cat >"$nd/net.d/10-gamezone.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "gamezone",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$pod_cidr"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "/var/lib/cni/networks"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  # The node itself has no upstream DNS: pods get the cluster's (clusterDNS) and nothing else.
  echo "# no upstream DNS on GameZone's real test nodes; pods use clusterDNS" >"$nd/resolv.conf"
  cat >"$nd/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine: cgroup v1 (cgroupfs), no swap accounting wanted.
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupRoot: /$cg
containerRuntimeEndpoint: unix://$nd/containerd.sock
address: $node_ip
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $DIR/pki/ca.crt}
authorization: {mode: AlwaysAllow}
clusterDomain: $CLUSTER_DOMAIN
clusterDNS: [$CLUSTER_DNS_IP]
resolvConf: $nd/resolv.conf
# Test images are imported, never pulled: they must never be collected.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# The node shares this machine's disk with builds and caches of many GB: a share of a large
# disk (1% of 250 GB) taints it with disk-pressure while GBs are free, and no pod is scheduled.
# Only a disk truly full (as kind does for its nodes).
evictionHard: {memory.available: 100Mi, nodefs.available: 100Mi, nodefs.inodesFree: 1%, imagefs.available: 100Mi}
serializeImagePulls: false
shutdownGracePeriod: 0s
EOF
  cat >"$nd/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: gamezone
  cluster:
    server: https://$HOST_ADDRESS:$api_port
    certificate-authority: $DIR/pki/ca.crt
users:
- name: $name
  user:
    client-certificate: $DIR/pki/kubelet-$name.crt
    client-key: $DIR/pki/kubelet-$name.key
contexts:
- name: gamezone
  context: {cluster: gamezone, user: $name}
current-context: gamezone
EOF
}

# The Node object, made before its kubelet starts so that the taint and the
# pod CIDR are there from the first moment; the kubelet adopts it.
real_nodes_manifest() {
  local s=$1 n=$2 i
  for ((i = 1; i <= n; i++)); do
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: real-$i
  labels:
    kubernetes.io/hostname: real-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    $REAL_LABEL: real
spec:
  podCIDR: $(real_pod_cidr "$s" "$i")
  podCIDRs: [$(real_pod_cidr "$s" "$i")]
  taints:
  - {key: $REAL_LABEL, value: real, effect: NoSchedule}
EOF
  done
}

# Starts the cluster's DNS and N real nodes once the API server answers;
# returns when each node is Ready and the DNS has read the cluster.
start_real_nodes() {
  local n=$1 api_port=$2 s=$REAL_SLOT i nd
  local started
  started=$(now)
  ! $CLUSTER_DNS_ON || start_cluster_dns
  for ((i = 1; i <= n; i++)); do
    nd="$DIR/real-nodes/real-$i"
    ((${#nd} < 80)) || die "$DIR is too long a path for containerd's socket (keep it under 50 characters)"
    setup_real_network "$s" "$i" "$api_port"
    ! $CLUSTER_DNS_ON || setup_dns_rules "$(real_netns "$s" "$i")"
    setup_real_cgroups "$(real_cgroup "$s" "$i")"
    write_real_node_config "$s" "$i" "$api_port" "$nd"
  done
  real_nodes_manifest "$s" "$n" | "$BIN/kubectl" --kubeconfig="$DIR/kubeconfig" create -f - >/dev/null

  local pause_archive
  pause_archive=$("$HERE/images.sh" build "$PAUSE_IMAGE" --bin "$REAL_BIN/pause:/pause" --entrypoint /pause)
  for ((i = 1; i <= n; i++)); do
    nd="$DIR/real-nodes/real-$i"
    start "real-$i" nsenter --net="/run/netns/$(real_netns "$s" "$i")" -- \
      unshare --mount --propagation slave -- "$SELF" node-run "$nd" "$(real_cgroup "$s" "$i")" \
      "real-$i" "$(real_node_ip "$s" "$i")" "$DIR/logs"
  done
  for ((i = 1; i <= n; i++)); do
    wait_until 60 "containerd of real-$i" test -S "$DIR/real-nodes/real-$i/containerd.sock"
  done
  write_real_nodes_env "$n" "$api_port"
  "$HERE/images.sh" import "$DIR" "$pause_archive"
  wait_until 120 "$n Ready real nodes" real_nodes_ready "$n"
  if $CLUSTER_DNS_ON; then
    wait_cluster_dns
    say "$n real node(s) Ready, cluster DNS at $CLUSTER_DNS_IP (CoreDNS on 127.0.0.1:$DNS_PORT), after $(since "$started")s"
  else
    say "$n real node(s) Ready (no cluster DNS), after $(since "$started")s"
  fi
}

real_nodes_ready() {
  local want=$1 ready
  ready=$("$BIN/kubectl" --kubeconfig="$DIR/kubeconfig" get nodes -l "$REAL_LABEL=real" \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$')
  [[ "$ready" -ge "$want" ]]
}

# DIR/real-nodes.env (for scripts, images.sh) and DIR/real-nodes.json (for tests).
write_real_nodes_env() {
  local n=$1 api_port=$2 s=$REAL_SLOT i nd json_nodes=""
  {
    echo "SLOT=$s"
    echo "HOST_ADDRESS=$HOST_ADDRESS"
    echo "API_SERVER=https://$HOST_ADDRESS:$api_port"
    echo "BIN=$REAL_BIN"
    echo "CTR=$REAL_BIN/ctr"
    echo "CLUSTER_DNS=$CLUSTER_DNS_IP"
    echo "DNS_SERVER=${DNS_PORT:+127.0.0.1:$DNS_PORT}"
    echo "DNS_BIN=$DNS_BIN"
    for ((i = 1; i <= n; i++)); do
      nd="$DIR/real-nodes/real-$i"
      echo "NODE=real-$i $nd/containerd.sock $(real_node_ip "$s" "$i") $(real_pod_cidr "$s" "$i") $(real_netns "$s" "$i")"
      json_nodes+="${json_nodes:+,}
    {\"name\": \"real-$i\", \"nodeIP\": \"$(real_node_ip "$s" "$i")\", \"podCIDR\": \"$(real_pod_cidr "$s" "$i")\", \
\"netns\": \"$(real_netns "$s" "$i")\", \"cgroup\": \"/$(real_cgroup "$s" "$i")\", \
\"containerdSocket\": \"$nd/containerd.sock\", \"podLogs\": \"$nd/log/pods\"}"
    done
  } >"$DIR/real-nodes.env.tmp"
  mv "$DIR/real-nodes.env.tmp" "$DIR/real-nodes.env"
  cat >"$DIR/real-nodes.json.tmp" <<EOF
{
  "hostAddress": "$HOST_ADDRESS",
  "apiServer": "https://$HOST_ADDRESS:$api_port",
  "slot": $s,
  "binDir": "$REAL_BIN",
  "clusterDNS": "$CLUSTER_DNS_IP",
  "dnsServer": "${DNS_PORT:+127.0.0.1:$DNS_PORT}",
  "dnsBinDir": "$DNS_BIN",
  "nodes": [$json_nodes
  ]
}
EOF
  mv "$DIR/real-nodes.json.tmp" "$DIR/real-nodes.json"
}

# ---------------------------------------------------------------- node-run

# Runs inside the node's network namespace and a fresh mount namespace
# (propagation slave: the host's mounts are seen, ours never leave): the
# places kubelet and containerd hard-code (/run, /var/lib/kubelet,
# /var/lib/cni, /var/log) are private to the node, and every mount they make
# disappears with the node's last process. This process stays for the node's
# life, as an init system would: `node-stop` kills the daemons (the shims and
# containers live on, as on a machine whose containerd crashed) and
# `node-start` has it start them again with the same config, mounts and cgroup.
cmd_node_run() {
  local nd=$1 cg=$2 name=$3 node_ip=$4 logs=$5 m
  for m in $(cgroup_mounts); do echo $$ >"$m/$cg/node/cgroup.procs"; done
  mount -t tmpfs -o mode=755 "gamezone-$name-run" /run
  mount -t tmpfs -o mode=755 "gamezone-$name-var-lib" /var/lib
  mkdir -p /var/lib/kubelet /var/lib/cni
  mount --bind "$nd/kubelet" /var/lib/kubelet
  mount --bind "$nd/cni-lib" /var/lib/cni
  mount --bind "$nd/log" /var/log
  export PATH="$REAL_BIN:$PATH"
  rm -f "$nd/stopped" "$nd/daemons"

  NODE_PIDS=()
  trap 'kill -TERM "${NODE_PIDS[@]}" 2>/dev/null; wait; exit 0' TERM INT
  start_node_daemons "$nd" "$name" "$node_ip" "$logs"
  local retries=0
  while :; do
    wait -n || true
    if [[ -f "$nd/stopped" ]]; then
      # `node-stop` killed them: reap both, then wait for `node-start`.
      wait "${NODE_PIDS[@]}" 2>/dev/null || true
      NODE_PIDS=()
      rm -f "$nd/daemons"
      echo "[node] $name's daemons stopped by node-stop; waiting for node-start" >&2
      while [[ -f "$nd/stopped" ]]; do sleep 0.2; done
      echo "[node] restarting $name's daemons" >&2
      start_node_daemons "$nd" "$name" "$node_ip" "$logs"
      retries=0
      continue
    fi
    # A kubelet that gives up at once on a containerd still initialising its CRI service
    # (slow after a restart with containers to recover, or on a loaded machine) is started
    # again, as an init system would; anything else ending ends the node.
    if alive "${NODE_PIDS[0]}" && ! alive "${NODE_PIDS[1]}" && ((SECONDS - KUBELET_STARTED < 30 && retries < 10)); then
      retries=$((retries + 1))
      echo "[node] the kubelet of $name exited during start-up; starting it again ($retries)" >&2
      sleep 1
      start_kubelet "$nd" "$name" "$node_ip" "$logs"
      continue
    fi
    # `up` and `status` then see the node gone.
    echo "[node] a daemon of $name exited; stopping the node" >&2
    kill -TERM "${NODE_PIDS[@]}" 2>/dev/null
    wait
    exit 1
  done
}

# containerd, then the kubelet once containerd's socket is there; their pids in
# NODE_PIDS and in ND/daemons (for node-stop).
start_node_daemons() {
  local nd=$1 name=$2 node_ip=$3 logs=$4 i
  # A killed containerd leaves its socket file: the kubelet must not dial that one.
  rm -f "$nd/containerd.sock"
  containerd --config "$nd/containerd.toml" >>"$logs/$name-containerd.log" 2>&1 &
  NODE_PIDS=($!)
  for i in $(seq 300); do [[ -S "$nd/containerd.sock" ]] && break; sleep 0.1; done
  start_kubelet "$@"
}

start_kubelet() {
  local nd=$1 name=$2 node_ip=$3 logs=$4
  kubelet --config="$nd/kubelet.yaml" --kubeconfig="$nd/kubeconfig" \
    --hostname-override="$name" --node-ip="$node_ip" --node-labels="$REAL_LABEL=real" \
    --v=1 >>"$logs/$name-kubelet.log" 2>&1 &
  NODE_PIDS=("${NODE_PIDS[0]}" $!)
  KUBELET_STARTED=$SECONDS
  printf 'containerd %s\nkubelet %s\n' "${NODE_PIDS[@]}" >"$nd/daemons.tmp"
  mv "$nd/daemons.tmp" "$nd/daemons"
}

# ---------------------------------------------------------------- node-stop, node-start

# The directory of real node NAME of the control plane in DIR, checked.
real_node_dir() {
  local dir=$1 name=$2
  [[ $name =~ ^real-[0-9]+$ ]] || die "no real node named '$name' (real nodes are real-1, real-2, ...)"
  [[ -f "$dir/pids" ]] || die "no control plane running in $dir"
  grep -q "^$name " "$dir/pids" || die "$dir has no real node $name"
  echo "$dir/real-nodes/$name"
}

# Kills a node's containerd and kubelet (SIGTERM, or SIGKILL with --kill), as a
# crash would: the shims, the containers and the node's mounts stay.
cmd_node_stop() {
  [[ $# -ge 2 ]] || usage
  local dir signal=TERM nd
  dir=$(cd "$1" && pwd)
  nd=$(real_node_dir "$dir" "$2")
  [[ "${3:-}" == --kill ]] && signal=KILL
  [[ -f "$nd/stopped" ]] && die "$2's daemons are stopped already (start them: $SELF node-start $1 $2)"
  [[ -f "$nd/daemons" ]] || die "$2's daemons are not running (no $nd/daemons)"
  local names=() pids=() n p
  while read -r n p; do names+=("$n"); pids+=("$p"); done <"$nd/daemons"
  touch "$nd/stopped"
  kill "-$signal" "${pids[@]}" 2>/dev/null || true
  local _
  for _ in $(seq 100); do
    local left=0
    for p in "${pids[@]}"; do alive "$p" && left=1; done
    ((left)) || break
    sleep 0.1
  done
  for p in "${pids[@]}"; do alive "$p" && die "pid $p of $2 survived SIG$signal"; done
  say "$2: ${names[*]} (pids ${pids[*]}) stopped with SIG$signal"
}

# Starts a stopped node's containerd and kubelet again, with the same config, in
# the same namespaces and cgroup; returns once both run and the kubelet has reported
# the node Ready since (its runtime answers: pods made from then on start).
cmd_node_start() {
  [[ $# -eq 2 ]] || usage
  local dir nd since _
  dir=$(cd "$1" && pwd)
  nd=$(real_node_dir "$dir" "$2")
  [[ -f "$nd/stopped" ]] || die "$2's daemons were not stopped with node-stop"
  since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  rm -f "$nd/stopped"
  for _ in $(seq 300); do [[ -f "$nd/daemons" ]] && break; sleep 0.1; done
  [[ -f "$nd/daemons" ]] || die "$2's daemons did not start within 30s (see $dir/logs/$2.log)"
  for _ in $(seq 600); do node_ready_since "$dir" "$2" "$since" && break; sleep 0.1; done
  node_ready_since "$dir" "$2" "$since" ||
    die "$2's kubelet did not report the node Ready within 60s of its start (see $dir/logs/$2-kubelet.log and $2-containerd.log)"
  say "$2: $(tr '\n' ' ' <"$nd/daemons")running again, Ready"
}

# node_ready_since DIR NODE TIME: NODE's kubelet reported it Ready at TIME (UTC, RFC 3339) or later.
node_ready_since() {
  local seen
  seen=$("$BIN/kubectl" --kubeconfig="$1/kubeconfig" get node "$2" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}' 2>/dev/null) ||
    return 1
  [[ "${seen%% *}" == True && ! "${seen#* }" < "$3" ]]
}

# ---------------------------------------------------------------- down

# stop_real_nodes PID...: SIGTERM to each node's daemons, then a few seconds for
# them to stop; what is left (shims, containers: other process groups) is
# killed through the cgroups by teardown_real_slot.
stop_real_nodes() {
  (($#)) || return 0
  local pid _
  for pid in "$@"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local left=0
    for pid in "$@"; do alive "$pid" && left=1; done
    ((left)) || return 0
    sleep 0.1
  done
}

# Kills every process in the cgroup subtree $1 (daemons, shims, containers).
kill_cgroup_tree() {
  local cg=$1 m pids _
  for _ in $(seq 50); do
    pids=""
    for m in $(cgroup_mounts); do
      [[ -d "$m/$cg" ]] || continue
      pids+=" $(find "$m/$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | tr '\n' ' ')"
    done
    [[ -n "${pids// /}" ]] || return 0
    # shellcheck disable=SC2086 # a list of pids
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  say "warning: processes left in cgroup /$cg: $pids"
}

remove_cgroup_tree() {
  local cg=$1 m left _
  for _ in $(seq 20); do
    left=0
    for m in $(cgroup_mounts); do
      [[ -d "$m/$cg" ]] || continue
      find "$m/$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
      [[ -d "$m/$cg" ]] && left=1
    done
    ((left)) || return 0
    sleep 0.1
  done
  say "warning: could not remove cgroup /$cg everywhere"
}

# Everything of slot $1 on this machine, and the slot; $2 is the old state dir (may be empty or gone).
teardown_real_slot() {
  local s=$1 old_dir=${2:-}
  teardown_real_slot_resources "$s"
  # Mounts a killed node could have left on the host (none when its mount namespace did its job).
  if [[ -n "$old_dir" && -d "$old_dir/real-nodes" ]]; then
    local mnt
    while read -r mnt; do
      [[ -n "$mnt" ]] && { umount -l "$mnt" 2>/dev/null || true; }
    done < <(awk -v d="$old_dir/real-nodes/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)
  fi
  rm -rf "${REAL_SLOTS_DIR:?}/$s"
}

# Processes, cgroups, network namespaces, veths and NAT rules named for slot $1.
teardown_real_slot_resources() {
  local s=$1 i ns veth cg
  for ((i = 1; i <= MAX_REAL_NODES; i++)); do
    ns=$(real_netns "$s" "$i") veth=$(real_veth "$s" "$i") cg=$(real_cgroup "$s" "$i")
    kill_cgroup_tree "$cg"
    remove_cgroup_tree "$cg"
    if [[ -e "/run/netns/$ns" ]]; then ip netns delete "$ns" 2>/dev/null || say "warning: ip netns delete $ns failed"; fi
    if ip link show "$veth" >/dev/null 2>&1; then ip link delete "$veth" 2>/dev/null || true; fi
    # The rule exactly as setup_real_network adds it; a killed `up` may have added it twice.
    while iptables -w -t nat -D PREROUTING -i "$veth" -d "$HOST_ADDRESS/32" -m comment --comment "gamezone:$ns" \
      -j DNAT --to-destination 127.0.0.1 2>/dev/null; do :; done
    while iptables -w -t nat -D OUTPUT -d "$HOST_ADDRESS/32" -m comment --comment "gamezone:$ns" \
      -j DNAT --to-destination 127.0.0.1 2>/dev/null; do :; done
  done
  # `ip netns add` bind-mounts /run/netns on itself the first time; once no namespace is left in
  # it, the mount goes too (the next `ip netns add` makes it again), so a run leaves no mount.
  if mountpoint -q /run/netns && [[ -z "$(ls -A /run/netns)" ]]; then umount /run/netns 2>/dev/null || true; fi
}

# The slot recorded for the control plane in $1, if it has real nodes.
real_slot_of() {
  [[ -f "$1/real-nodes.env" ]] && sed -n 's/^SLOT=//p' "$1/real-nodes.env"
}

# ---------------------------------------------------------------- status

# RSS (KiB) of every process in cgroup subtree $1 of the memory hierarchy's view, summed.
cgroup_rss_kib() {
  local dir=$1 pid total=0 rss
  while read -r pid; do
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || continue
    total=$((total + ${rss:-0}))
  done < <(find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null)
  echo "$total"
}
