#!/usr/bin/env bash
# The GameZone demo: a real local control plane (Kubernetes from its Go modules and one real node
# with kubelet and containerd), the operator, a git server with the zone's config artifacts and
# database migrations, an artifact registry (CNCF Distribution), a MariaDB, and seed 003's zone,
# provisioned end to end: its artifacts packed once into the registry, its migration Job migrates
# the database and its servers run the example game server, for real on the real node, each
# mounting the packed tree.
# Ends by asking a game server who it is (its answer carries a value from the layered config),
# then prints the zone's status. Installs what it needs first.
#
#   scripts/demo.sh          run the demo (leaves the cluster and operator running)
#   scripts/demo.sh down     stop everything the demo started
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export GAMEZONE_CACHE=${GAMEZONE_CACHE:-$HOME/.cache/gamezone}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$GAMEZONE_CACHE/cargo-target}
DEMO=${GAMEZONE_DEMO_DIR:-$GAMEZONE_CACHE/demo}
NS=zhulei
say() { printf '\n\033[1m[demo] %s\033[0m\n' "$*" >&2; }

down() {
  for pidfile in "$DEMO"/operator.pid "$DEMO"/git-daemon.pid "$DEMO"/registry.pid "$DEMO"/mariadb.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  [ -d "$DEMO/cp" ] && tests/controlplane/cp.sh down "$DEMO/cp" >/dev/null 2>&1 || true
  rm -rf "$DEMO"
}
if [ "${1:-}" = down ]; then down; echo "demo stopped"; exit 0; fi

say "setting up (first run builds Kubernetes and the operator; later runs take seconds)"
# What builds fastest from a cold cache: the workspace's binaries in the dev profile (the
# binaries the tests run too, so a test run after the demo reuses them; the release profile,
# and the sidecar's fat LTO above all, are for published images), and Kubernetes without the
# Go compiler's inlining, unless the tests' optimized build is in the cache already
# (GAMEZONE_CP_QUICK in tests/controlplane/cp.sh).
export GAMEZONE_IMAGE_PROFILE=dev GAMEZONE_CP_QUICK=1
bash scripts/setup.sh demo-packages
# The Rust build runs beside the control plane's Go builds: on a cold machine each alone
# leaves a core idle in its download and link steps. Its lines carry a [rust] prefix.
# shellcheck source=scripts/lib/beside.sh
source scripts/lib/beside.sh
beside_start rust scripts/images.sh binaries
# Only what the demo runs: the control plane and a real node (no simulated nodes, no cluster DNS:
# every address in the demo is an IP), the migrater; not the tests' servers.
bash scripts/setup.sh demo
beside_wait || { say "the operator's build failed: see the [rust] lines above"; exit 1; }
down
mkdir -p "$DEMO"

say "starting the local control plane with 1 real node"
KUBECONFIG=$(tests/controlplane/cp.sh up "$DEMO/cp" --nodes 0 --real-nodes 1 --no-dns | tail -n 1)
export KUBECONFIG
kubectl() { tests/controlplane/cp.sh kubectl "$DEMO/cp" "$@"; }
kubectl get nodes
# Pods reach the host's loopback services at this address (the node's network DNATs it).
HOST=$(sed -n 's/^HOST_ADDRESS=//p' "$DEMO/cp/real-nodes.env")

say "building the images the demo runs (cached by content) into the real node's containerd"
scripts/images.sh import "$DEMO/cp" operator game-server migrater
BIN=$CARGO_TARGET_DIR/debug
IMAGE=$(scripts/images.sh names | sed -n 2p)
MIGRATER=$(scripts/images.sh names | sed -n 3p)

say "serving the zone's config and migrations from a git repository (git daemon on loopback)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GIT_PORT=$(free_port)
mkdir -p "$DEMO/git" && git init -q --bare "$DEMO/git/config.git"
git -C "$DEMO/git/config.git" config uploadpack.allowReachableSHA1InWant true
work="$DEMO/git-work"; git init -q -b main "$work"
mkdir -p "$work/config" "$work/docs" "$work/migrations"
cp examples/migrater/migrations/000001_* "$work/migrations/"
printf '{"zone": 101, "maxPlayers": 5000, "motd": "welcome to zone 101"}\n' > "$work/config/server.json"
printf '{"drop_rate": 1.5}\n' > "$work/config/events.json"
echo "not layered: outside subPath" > "$work/docs/README"
git -C "$work" add -A && git -C "$work" -c user.name=demo -c user.email=demo@example.com commit -qm "zone 101 config"
git -C "$work" push -q "$DEMO/git/config.git" main
# On loopback for the pods (through the DNAT) and on the host's veth address for the operator,
# so both use one URL.
git daemon --reuseaddr --base-path="$DEMO/git" --export-all --listen=127.0.0.1 --listen="$HOST" --port="$GIT_PORT" \
  --detach --pid-file="$DEMO/git-daemon.pid" "$DEMO/git"

say "starting the artifact registry (CNCF Distribution on loopback; the node's containerd pulls at $HOST)"
REG_PORT=$(free_port)
mkdir -p "$DEMO/registry"
cat > "$DEMO/registry/config.yml" <<YAML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $DEMO/registry/data}
  delete: {enabled: true}
http: {addr: "127.0.0.1:$REG_PORT"}
YAML
docker-registry serve "$DEMO/registry/config.yml" >"$DEMO/registry/registry.log" 2>&1 &
echo $! > "$DEMO/registry.pid"
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$REG_PORT") 2>/dev/null && break; sleep 0.1; done
(exec 3<>"/dev/tcp/127.0.0.1/$REG_PORT") 2>/dev/null ||
  { tail -n 5 "$DEMO/registry/registry.log" >&2; echo "docker-registry did not start (log: $DEMO/registry/registry.log)" >&2; exit 1; }
# The node's containerd pulls from it over plain HTTP, as its hosts.toml says.
CERTS=$(dirname "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nodes"][0]["containerdSocket"])' "$DEMO/cp/real-nodes.json")")/certs.d
mkdir -p "$CERTS/$HOST:$REG_PORT"
printf 'server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' "$HOST:$REG_PORT" "$HOST:$REG_PORT" \
  > "$CERTS/$HOST:$REG_PORT/hosts.toml"

say "starting the zone's database (Debian's MariaDB on loopback; pods reach it at $HOST)"
DB_PORT=$(free_port)
mkdir -p "$DEMO/mariadb"
mariadb-install-db --no-defaults --user="$(id -un)" --auth-root-authentication-method=normal \
  --datadir="$DEMO/mariadb/data" --skip-test-db >"$DEMO/mariadb/install.log" 2>&1 ||
  { tail -n 5 "$DEMO/mariadb/install.log" >&2; echo "mariadb-install-db failed (log: $DEMO/mariadb/install.log)" >&2; exit 1; }
mariadbd --no-defaults --user="$(id -un)" --port="$DB_PORT" --datadir="$DEMO/mariadb/data" \
  --socket="$DEMO/mariadb/sock" --pid-file="$DEMO/mariadb.pid" --log-error="$DEMO/mariadb/error.log" \
  --bind-address=127.0.0.1 --skip-name-resolve --innodb-buffer-pool-size=32M --skip-log-bin >/dev/null 2>&1 &
for _ in $(seq 100); do mariadb --no-defaults -u root -S "$DEMO/mariadb/sock" -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.2; done
mariadb --no-defaults -u root -S "$DEMO/mariadb/sock" -e "CREATE DATABASE project1;
  CREATE USER 'username1'@'%' IDENTIFIED BY 'password1'; GRANT ALL PRIVILEGES ON project1.* TO 'username1'@'%';" ||
  { echo "MariaDB did not start (log: $DEMO/mariadb/error.log)" >&2; exit 1; }

say "installing the CRDs and starting the operator"
"$BIN/gamezone" crd | kubectl apply --server-side -f - >/dev/null
kubectl get crd gamezones.gamezone.dev gameservers.gamezone.dev
# What lets an SDK sidecar write its own GameServer only (a ValidatingAdmissionPolicy).
kubectl apply --server-side -f deploy/sdk-policy.yaml >/dev/null
# What keeps a zone's author to their own rights: Secrets they may read, pods they may make.
kubectl apply --server-side -f deploy/tenant-policy.yaml >/dev/null
kubectl create namespace "$NS" >/dev/null
HTTP_PORT=$(free_port)
"$BIN/gamezone" run --kubeconfig "$KUBECONFIG" --http-addr "127.0.0.1:$HTTP_PORT" --log-format json \
  --init-image "$(scripts/images.sh names | sed -n 1p)" \
  --artifact-registry "$HOST:$REG_PORT/gamezone/layers" --artifact-registry-plain-http >"$DEMO/operator.log" 2>&1 &
echo $! > "$DEMO/operator.pid"

say "applying seed 003's zone (passwords as Secrets, artifacts from the git server, servers on the real node)"
kubectl -n "$NS" create secret generic zone1-mysql --from-literal=password=password1 >/dev/null
# The real node is tainted: only pods that tolerate it and ask for it land there.
REAL='nodeSelector: {gamezone.dev/node-kind: real}
      tolerations: [{key: gamezone.dev/node-kind, operator: Equal, value: real, effect: NoSchedule}]'
cat > "$DEMO/zone1.yaml" <<YAML
apiVersion: gamezone.dev/v1alpha1
kind: GameZone
metadata:
  name: zone1
  namespace: $NS
spec:
  zoneId: 101
  defaultImage: $IMAGE
  # The migration Job runs on the real node too: golang-migrate applies migrations/ to MariaDB.
  migration:
    image: $MIGRATER
    nodeSelector: {gamezone.dev/node-kind: real}
    tolerations: [{key: gamezone.dev/node-kind, operator: Equal, value: real, effect: NoSchedule}]
  services:
    - type: game
      id: 1
      image: $IMAGE
      ports: [{name: client, containerPort: 7777, policy: Dynamic, protocol: TCPUDP}]
      # The tree's root is /app/artifacts, the folder holding both layers.
      env: [{name: GAMEZONE_CONFIG, value: config/server.json}]
      # Ready only once the game says so through its SDK sidecar, which also checks its pings.
      ready: Sdk
      health: {periodSeconds: 5}
      $REAL
    - type: db
      id: 1
      ports: [{name: rpc, containerPort: 7101}]
      $REAL
    - type: gateway
      id: 1
      endId: 2
      ports: [{name: client, containerPort: 8000, policy: Dynamic}]
      expose:
        perType:
          type: LoadBalancer
          annotations: {metallb.universe.tf/address-pool: game}
          hostname: "gateway.$NS.rke2.example.com"
      $REAL
    - type: auth
      id: 2
      ports: [{name: http, containerPort: 8080}]
      $REAL
  redis: {host: redis, port: 6379}
  mysql:
    host: $HOST
    port: $DB_PORT
    user: username1
    passwordSecretRef: {name: zone1-mysql, key: password}
    database: project1
  artifacts:
    - path: /app/artifacts/config
      subPath: config
      git: {url: "git://$HOST:$GIT_PORT/config.git", branch: main}
    - path: /app/artifacts/migrations
      subPath: migrations
      git: {url: "git://$HOST:$GIT_PORT/config.git", branch: main}
YAML
kubectl apply -f "$DEMO/zone1.yaml"

say "waiting for the zone: pin artifacts → pack them into the registry → migration Job → servers"
if ! kubectl -n "$NS" wait --for=condition=Ready gamezone/zone1 --timeout=120s >/dev/null; then
  kubectl -n "$NS" get gz zone1 -o jsonpath='{range .status.conditions[*]}{.type}{"\t"}{.status}{"\t"}{.message}{"\n"}{end}' >&2
  # What the node says of itself: a pressure condition or a taint keeps pods off it.
  kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" taints: "}{.spec.taints[*].key}{"; "}{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}{"\n"}{end}' >&2
  echo "the zone did not become Ready within 120 s; operator log: $DEMO/operator.log" >&2
  exit 1
fi

say "what the migration Job did to the zone's database (golang-migrate's own table)"
mariadb --no-defaults -u root -S "$DEMO/mariadb/sock" -t -e "SELECT version, dirty FROM project1.schema_migrations; SHOW TABLES FROM project1;"

say "the artifacts, packed once into the registry: the tree image every pod mounts"
kubectl -n "$NS" get gz zone1 -o jsonpath='{range .status.artifacts[*]}{.source}{"\n  layer "}{.packed.digest}{" ("}{.packed.size}{" bytes)\n"}{end}{"tree image "}{.status.treeImage.image}{"\n"}'

say "the same pinned layers fetched here from the origins: the tree the pods mounted, digest for digest"
# The init container named `artifacts` (the SDK sidecar, when a type uses it, comes first).
INIT_ENV=$(kubectl -n "$NS" get pod zone1-game-1 \
  -o jsonpath='{range .spec.initContainers[?(@.name=="artifacts")].env[*]}{.name}={.value}{"\n"}{end}')
GAMEZONE_LAYERS=$(printf '%s\n' "$INIT_ENV" | sed -n 's/^GAMEZONE_LAYERS=//p') \
GAMEZONE_REVISIONS=$(printf '%s\n' "$INIT_ENV" | sed -n 's/^GAMEZONE_REVISIONS=//p') \
  "$BIN/gamezone-init" apply --root "$DEMO/artifacts" >"$DEMO/init-apply.log" 2>&1 \
  || { tail -n 5 "$DEMO/init-apply.log" >&2; echo "gamezone-init apply failed (log: $DEMO/init-apply.log)" >&2; exit 1; }
tail -n 2 "$DEMO/init-apply.log"
(cd "$DEMO/artifacts/current" && find . -type f | sort)
HERE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["treeDigest"])' "$DEMO/artifacts/.gamezone-state.json")
MOUNTED=$(kubectl -n "$NS" get gz zone1 -o jsonpath='{.status.treeImage.treeDigest}')
echo "tree digest here:         $HERE"
echo "tree digest pods mounted: $MOUNTED"
[ "$HERE" = "$MOUNTED" ] || { echo "the packed tree differs from the origins' tree" >&2; exit 1; }

say "a client on this machine asks zone1-game-1 who it is, at the node address and port its status names"
ADDR=$(kubectl -n "$NS" get gs zone1-game-1 -o jsonpath='{.status.nodeAddress}')
PORT=$(kubectl -n "$NS" get gs zone1-game-1 -o jsonpath='{.status.ports[0].port}')
echo "hello -> $ADDR:$PORT (TCP)"
if ANSWER=$(python3 - "$ADDR" "$PORT" <<'PY'
import json, socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    s.sendall(b"hello\n")
    line = s.makefile().readline()
json.loads(line)
print(line.strip())
PY
); then
  echo "$ANSWER"
  python3 -c 'import json,sys; c=json.loads(sys.argv[1])["config"]; print("motd from the layered config (%s): %s" % (c["path"], c["value"]["motd"] if "value" in c else c))' "$ANSWER"
else
  echo "zone1-game-1 did not answer at $ADDR:$PORT" >&2
fi

say "what zone1-game-1's game said through its SDK sidecar (gamezone-sdk, in its pod)"
kubectl -n "$NS" get gs zone1-game-1 -o jsonpath='{.status.sdk}{"\n"}'

say "kubectl get gz,gs,pods,jobs,svc -n $NS"
kubectl -n "$NS" get gz,gs,pods,jobs,svc -o wide
say "zone1's conditions"
kubectl -n "$NS" get gz zone1 -o jsonpath='{range .status.conditions[*]}{.type}{"\t"}{.status}{"\t"}{.reason}{"\t"}{.message}{"\n"}{end}' | column -t -s $'\t'
say "pinned artifacts"
kubectl -n "$NS" get gz zone1 -o jsonpath='{range .status.artifacts[*]}{.source}{" @ "}{.revision}{"\n"}{end}'
say "events of zone1"
kubectl -n "$NS" get events --field-selector involvedObject.kind=GameZone,involvedObject.name=zone1 \
  -o custom-columns=REASON:.reason,MESSAGE:.message
say "gamezone status zone1 -n $NS (add -w to follow it live)"
"$BIN/gamezone" status zone1 -n "$NS" --kubeconfig "$KUBECONFIG"
cat <<MSG

The cluster and the operator keep running:
  export KUBECONFIG=$KUBECONFIG
  $ROOT/tests/controlplane/cp.sh kubectl $DEMO/cp -n $NS get gz,gs
  $BIN/gamezone status zone1 -n $NS -w
  operator log: $DEMO/operator.log, metrics: http://127.0.0.1:$HTTP_PORT/metrics
Stop everything with: scripts/demo.sh down
MSG
