#!/usr/bin/env bash
# Apply → first client hello for a zone of INSTANCES game servers with a git layer on a real node,
# against a peer in the same run: plain pods of the same game image whose init container runs
# `git clone --depth 1` of the same repository, created with kubectl. Both sides fetch from one
# git daemon on the host (pods dial 10.245.0.1, the host end of the node's veth) and are asked
# `hello` at <nodeIP>:<hostPort>. Runs alternate (ours, peer, ours, ...); prints each run, then
# median, min and max of "first hello" and "all answered" per side and the ratio of medians
# (ours / peer; <= 1.0 is the goal), and says when a side's spread is too wide (max/min > 1.3).
#
#   RUNS=3              runs per side
#   INSTANCES=10        game servers per zone (and plain pods)
#   GIT_FILES=200 GIT_MB=10   size of the repository the layer and the clone fetch
#   TIMEOUT=180         seconds a run may take before it counts as failed
#   GAMEZONE_CACHE, CARGO_TARGET_DIR  as for scripts/images.sh
#
# Root only (real nodes). Starts its own control plane with one real node and stops it on exit.
#
# `scripts/bench-node.sh artifacts` runs the artifacts benchmark instead: the per-pod path
# against the artifact registry's, with a big S3 layer (scripts/bench-artifacts.sh says more).
set -euo pipefail
if [[ ${1:-} == artifacts ]]; then
  shift
  exec "$(dirname "${BASH_SOURCE[0]}")/bench-artifacts.sh" "$@"
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-3}
INSTANCES=${INSTANCES:-10}
GIT_FILES=${GIT_FILES:-200}
GIT_MB=${GIT_MB:-10}
TIMEOUT=${TIMEOUT:-180}
NAME=bench-node
# shellcheck source=scripts/lib/node-bench.sh
source "$ROOT/scripts/lib/node-bench.sh"
GIT_IMAGE=gamezone.dev/example/git:0.1.0
OURS_NS=bench-ours
PEER_NS=bench-peer
PEER_PORT_BASE=7700

[[ $RUNS =~ ^[1-9][0-9]*$ && $INSTANCES =~ ^[1-9][0-9]*$ ]] || die "RUNS and INSTANCES must be positive numbers"
((INSTANCES <= 99)) || die "INSTANCES must be at most 99 (the peer's host ports are $PEER_PORT_BASE+id)"

node_bench_up 1
NODE_IP=$(awk '$1 == "NODE=real-1" { print $3 }' "$WORK/cp/real-nodes.env")

say "git repository: $GIT_FILES files, $GIT_MB MB"
repo="$WORK/git/game"
mkdir -p "$repo"
random_files "$repo" "$GIT_FILES" "$GIT_MB" 8
mkdir -p "$repo/config"
printf '{"motd": "bench"}\n' >"$repo/config/server.json"
git -C "$repo" init -q -b main
git -C "$repo" config uploadpack.allowReachableSHA1InWant true
commit "$repo" bench
GIT_PORT=$(free_port)
git daemon --reuseaddr --export-all --listen=127.0.0.1 --port="$GIT_PORT" --base-path="$WORK/git" "$WORK/git" \
  >"$WORK/git-daemon.log" 2>&1 &
pids+=($!)
# One URL for both sides and for the operator on the host (cp.sh DNATs 10.245.0.1 to loopback).
GIT_URL="git://$HOST:$GIT_PORT/game"
for _ in $(seq 100); do git ls-remote "$GIT_URL" >/dev/null 2>&1 && break; sleep 0.1; done
git ls-remote "$GIT_URL" >/dev/null || die "git daemon does not answer at $GIT_URL"

install_crds
kubectl create namespace "$OURS_NS" >/dev/null
kubectl create namespace "$PEER_NS" >/dev/null
"$CARGO_TARGET_DIR/release/gamezone" run --kubeconfig "$KC" --namespace "$OURS_NS" --log-format json \
  --http-addr 127.0.0.1:0 --init-image "$OPERATOR_IMAGE" --port-range 7600-7699 >"$WORK/operator.log" 2>&1 &
pids+=($!)

# placement INDENT: the real node's selector and toleration, as YAML lines.
placement() {
  printf '%*snodeSelector: {%s: real}\n' "$1" '' "$NODE_KIND"
  printf '%*stolerations: [{key: %s, operator: Equal, value: real, effect: NoSchedule}]\n' "$1" '' "$NODE_KIND"
}
ours_manifest() {
  cat <<EOF
apiVersion: gamezone.dev/v1alpha1
kind: GameZone
metadata: {name: bench}
spec:
  zoneId: 1
  defaultImage: $GAME_IMAGE
  artifacts: [{path: /app/artifacts, git: {url: "$GIT_URL", branch: main}}]
  services:
  - type: game
    id: 1
    endId: $INSTANCES
    ports: [{name: game, containerPort: 7777, policy: Dynamic}]
$(placement 4)
EOF
}
peer_manifest() {
  local i
  for ((i = 1; i <= INSTANCES; i++)); do
    cat <<EOF
---
apiVersion: v1
kind: Pod
metadata: {name: bench-game-$i, labels: {app: bench}}
spec:
$(placement 2)
  terminationGracePeriodSeconds: 5
  volumes: [{name: artifacts, emptyDir: {}}]
  initContainers:
  - name: clone
    image: $GIT_IMAGE
    imagePullPolicy: Never
    args: [clone, --quiet, --depth, "1", --branch, main, "$GIT_URL", /app/artifacts]
    volumeMounts: [{name: artifacts, mountPath: /app/artifacts}]
  containers:
  - name: game
    image: $GAME_IMAGE
    imagePullPolicy: Never
    args: [game, "$i"]
    env:
    - {name: GAMEZONE_ZONE, value: bench}
    - {name: GAMEZONE_ZONE_ID, value: "1"}
    - {name: GAMEZONE_PORT_GAME, value: "7777"}
    ports: [{name: game, containerPort: 7777, hostPort: $((PEER_PORT_BASE + i))}]
    volumeMounts: [{name: artifacts, mountPath: /app/artifacts}]
EOF
  done
}

# poll SIDE T0: asks every server `hello` until all answer; prints "FIRST ALL" (seconds since
# T0). Both sides list their objects on each round, so the client load is the same.
poll() {
  python3 - "$1" "$2" "$INSTANCES" "$TIMEOUT" "$NODE_IP" "$PEER_PORT_BASE" "$CP" "$WORK/cp" <<'PY'
import json, socket, subprocess, sys, time
side, t0, n, timeout, node_ip, peer_base, cp, cpdir = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], int(sys.argv[6]), sys.argv[7], sys.argv[8]
ns, kind = ("bench-ours", "gameservers") if side == "ours" else ("bench-peer", "pods")
answered, first, last_seen = {}, None, ""
def hello(addr, port):
    try:
        with socket.create_connection((addr, port), timeout=0.5) as s:
            s.settimeout(1.0)
            s.sendall(b"hello\n")
            line = s.makefile().readline()
        return json.loads(line).get("instance")
    except (OSError, ValueError):
        return None
while len(answered) < n:
    if time.time() - t0 > timeout:
        states = []
        for o in json.loads(last_seen or '{"items": []}')["items"]:
            st = o.get("status") or {}
            cs = [(c["name"], c.get("state")) for c in st.get("initContainerStatuses", []) + st.get("containerStatuses", [])]
            states.append(f'{o["metadata"]["name"]}: {st.get("phase") or st.get("state")} {cs}')
        sys.exit(f"{side}: {len(answered)} of {n} answered after {timeout:.0f}s; " + "; ".join(states)[:1500])
    out = subprocess.run([cp, "kubectl", cpdir, "get", kind, "-n", ns, "-o", "json"], capture_output=True, text=True).stdout
    last_seen = out
    targets = {}
    if side == "ours":
        for gs in json.loads(out or '{"items": []}')["items"]:
            st = gs.get("status") or {}
            ports = [p for p in st.get("ports", []) if p.get("hostPort")]
            if st.get("nodeAddress") and ports:
                targets[gs["metadata"]["name"]] = (st["nodeAddress"], ports[0]["hostPort"])
    else:
        targets = {f"bench-game-{i}": (node_ip, peer_base + i) for i in range(1, n + 1)}
    for name, (addr, port) in targets.items():
        if name in answered:
            continue
        if hello(addr, port) == name:
            answered[name] = time.time() - t0
            first = first if first is not None else answered[name]
    time.sleep(0.1)
print(f"{first:.2f} {max(answered.values()):.2f}")
PY
}

# Removes a side's objects and waits until the node has no pod of it left.
reset() {
  if [[ $1 == ours ]]; then
    kubectl delete gamezone bench -n "$OURS_NS" --ignore-not-found --wait=true --timeout=120s >/dev/null
  else
    kubectl delete pods -n "$PEER_NS" -l app=bench --ignore-not-found --wait=true --timeout=120s >/dev/null
  fi
  local ns=$OURS_NS
  [[ $1 == peer ]] && ns=$PEER_NS
  wait_no_pods "$ns" 120
}

results="$WORK/results"
: >"$results"
for ((r = 1; r <= RUNS; r++)); do
  for side in ours peer; do
    t0=$(now)
    if [[ $side == ours ]]; then
      ours_manifest | kubectl apply -n "$OURS_NS" -f - >/dev/null
    else
      peer_manifest | kubectl apply -n "$PEER_NS" -f - >/dev/null
    fi
    times=$(poll "$side" "$t0") || { tail -n 20 "$WORK/operator.log" >&2; die "run $r of $side failed (operator log tail above)"; }
    say "run $r $side: first hello ${times% *}s, all $INSTANCES answered ${times#* }s"
    echo "$side $times" >>"$results"
    reset "$side"
  done
done

load=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$results" "$INSTANCES" "$GIT_FILES" "$GIT_MB" "$load" <<'PY'
import statistics, sys
path, n, files, mb, load = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
rows = [l.split() for l in open(path) if l.strip()]
data = {s: {"first": [float(r[1]) for r in rows if r[0] == s], "all": [float(r[2]) for r in rows if r[0] == s]} for s in ("ours", "peer")}
print(f"\napply -> hello, {n} servers on a real node, git layer of {files} files / {mb} MB, {len(data['ours']['first'])} runs per side (load {load})")
print(f"{'':36} {'median':>8} {'min':>8} {'max':>8}   (seconds)")
wide = []
for metric, label in (("first", "first hello"), ("all", f"all {n} answered")):
    for side, who in (("ours", "GameZone"), ("peer", "kubectl + git clone")):
        v = data[side][metric]
        print(f"{label + ' ' + who:<36} {statistics.median(v):8.2f} {min(v):8.2f} {max(v):8.2f}")
        if min(v) > 0 and max(v) / min(v) > 1.3:
            wide.append(f"{label} {who}: max/min {max(v) / min(v):.2f}")
    ratio = statistics.median(data["ours"][metric]) / statistics.median(data["peer"][metric])
    print(f"{label + ' ratio (ours / peer)':<36} {ratio:8.2f}")
if wide:
    print("spread too wide (max/min > 1.3), take the figures as rough: " + "; ".join(wide))
PY
