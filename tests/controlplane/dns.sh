# shellcheck shell=bash
# The cluster's DNS for real nodes, sourced by cp.sh: CoreDNS (built from
# dns/coredns/, with the kubernetes plugin) on the host's loopback, reading the
# cluster through the admin kubeconfig. Pods on real nodes ask the cluster DNS
# address CLUSTER_DNS_IP; a DNAT in each node's namespace sends that to the
# host end of the veth, whose DNAT hands it to CoreDNS on 127.0.0.1.

DNS_MODULE="$HERE/dns/coredns"
RESOLVE_SOURCE="$HERE/dns/resolve.c"
COREDNS_VERSION=$(awk '{ sub(/^require /, "") } $1 == "github.com/coredns/coredns" { print $2; exit }' "$DNS_MODULE/go.mod")
DNS_CACHE_DIR="$CACHE/dns/coredns-${COREDNS_VERSION}"
DNS_BIN="$DNS_CACHE_DIR/bin"
# Inside the service CIDR (reserved there by the kube-dns Service), as kubeadm's 10th address.
CLUSTER_DNS_IP=10.0.0.10
CLUSTER_DOMAIN=cluster.local

# ---------------------------------------------------------------- build

dns_inputs_fingerprint() {
  (
    cd "$DNS_MODULE" || exit 1
    cat go.mod go.sum main.go "$RESOLVE_SOURCE"
    go version
    sed -n '/^cmd_build_dns()/,/^}/p' "$HERE/dns.sh"
  ) | sha256sum | cut -d' ' -f1
}

# CoreDNS and the `resolve` test program, into DNS_BIN.
cmd_build_dns() {
  require_tools go gcc sha256sum flock
  export GOFLAGS=${GOFLAGS:--mod=mod} GOSUMDB=${GOSUMDB:-off} GOTOOLCHAIN=${GOTOOLCHAIN:-local}
  local fingerprint
  fingerprint=$(dns_inputs_fingerprint)
  if [[ -f "$DNS_CACHE_DIR/.complete" && "$(cat "$DNS_CACHE_DIR/.complete")" == "$fingerprint" ]]; then
    say "CoreDNS up to date in $DNS_BIN"
    return 0
  fi
  mkdir -p "$DNS_CACHE_DIR"
  exec 7>"$DNS_CACHE_DIR/.lock"
  if ! flock -n 7; then
    say "another build holds $DNS_CACHE_DIR/.lock; waiting for it"
    flock 7
  fi
  if [[ -f "$DNS_CACHE_DIR/.complete" && "$(cat "$DNS_CACHE_DIR/.complete")" == "$fingerprint" ]]; then
    exec 7>&-
    return 0
  fi
  local started stage module log="$DNS_CACHE_DIR/build.log"
  started=$(now)
  rm -f "$DNS_CACHE_DIR/.complete"
  stage=$(mktemp -d "$DNS_CACHE_DIR/bin.partial.XXXXXX")
  chmod 755 "$stage"
  # Built from a copy: -mod=mod may touch go.sum, which must not change the fingerprint.
  module=$(mktemp -d "$DNS_CACHE_DIR/module.XXXXXX")
  cp "$DNS_MODULE/go.mod" "$DNS_MODULE/go.sum" "$DNS_MODULE/main.go" "$module/"
  # shellcheck disable=SC2064 # expand now: the directories are fixed
  trap "rm -rf '$stage' '$module'" EXIT
  : >"$log"
  # shellcheck disable=SC2034 # read by build_failed in cp.sh
  BUILD_LOG=$log
  say "building CoreDNS $COREDNS_VERSION (kubernetes plugin; full output in $log)"
  (
    cd "$module"
    CGO_ENABLED=0 go build -v -o "$stage/coredns" -ldflags "-s -w" .
  ) 2>&1 | progress "$log" || build_failed
  gcc -O2 -Wall -o "$stage/resolve" "$RESOLVE_SOURCE" 2>>"$log" || build_failed
  local p
  for p in coredns resolve; do [[ -x "$stage/$p" ]] || die "DNS build produced no $p"; done
  "$stage/coredns" -version >>"$log"
  rm -rf "$DNS_BIN" "$module"
  mv "$stage" "$DNS_BIN"
  trap - EXIT
  echo "$fingerprint" >"$DNS_CACHE_DIR/.complete"
  exec 7>&-
  say "CoreDNS ready in $DNS_BIN (build took $(since "$started")s)"
}

ensure_dns_built() {
  if [[ ! -f "$DNS_CACHE_DIR/.complete" || "$(cat "$DNS_CACHE_DIR/.complete")" != "$(dns_inputs_fingerprint)" ]]; then
    say "CoreDNS missing or stale in $DNS_CACHE_DIR: building it first"
    cmd_build_dns
  fi
}

# ---------------------------------------------------------------- up

# Starts CoreDNS for the control plane in DIR on a free loopback port (UDP
# and TCP); sets DNS_PORT. `down` stops it with the other components.
start_cluster_dns() {
  local ready_port
  reserve_port DNS_PORT
  reserve_port ready_port
  mkdir -p "$DIR/dns"
  # Only the cluster's zones come from the cluster; no upstream is reachable,
  # so every other name does not exist (NXDOMAIN, as an upstream would say of
  # `x.svc.`), and resolvers end their search list quickly and cleanly.
  cat >"$DIR/dns/Corefile" <<EOF
$CLUSTER_DOMAIN:$DNS_PORT in-addr.arpa:$DNS_PORT ip6.arpa:$DNS_PORT {
  bind 127.0.0.1
  ready 127.0.0.1:$ready_port
  errors
  log
  kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
    kubeconfig $DIR/kubeconfig gamezone
    ttl 5
  }
}
.:$DNS_PORT {
  bind 127.0.0.1
  errors
  template ANY ANY {
    rcode NXDOMAIN
  }
}
EOF
  start coredns "$DNS_BIN/coredns" -conf "$DIR/dns/Corefile"
  # The address is taken in the service CIDR, so no Service is given it.
  "$BIN/kubectl" --kubeconfig="$DIR/kubeconfig" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  clusterIP: $CLUSTER_DNS_IP
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
EOF
  echo "dns=$DNS_PORT" >>"$DIR/ports"
  echo "dns-ready=$ready_port" >>"$DIR/ports"
  DNS_READY_PORT=$ready_port
}

# Waits until CoreDNS has read the cluster's Services and EndpointSlices.
wait_cluster_dns() {
  wait_until 60 "CoreDNS /ready" curl -fsS "http://127.0.0.1:$DNS_READY_PORT/ready"
}

# DNAT rules in node namespace $1: the cluster DNS address goes to CoreDNS
# through the host end of the veth (for pods and the node's own processes).
setup_dns_rules() {
  local ns=$1 chain proto
  for chain in PREROUTING OUTPUT; do
    for proto in udp tcp; do
      nsenter --net="/run/netns/$ns" iptables -w -t nat -A "$chain" -d "$CLUSTER_DNS_IP/32" -p "$proto" --dport 53 \
        -j DNAT --to-destination "$HOST_ADDRESS:$DNS_PORT"
    done
  done
}
