#!/usr/bin/env bash
# Artifacts at game scale on real nodes (`scripts/bench-node.sh artifacts`): a zone of INSTANCES
# servers with a big S3 layer (S3_FILES files, S3_MB MB in all) and a small git layer, on NODES
# real nodes, by the per-pod path (no artifact registry: every pod fetches every layer from its
# origin) against the packed path (--artifact-registry: one pack Job per set of pins, the tree
# mounted as an image volume, each layer pulled once per node), both run by the operator, in the
# same run, alternated (who goes first swaps each run). Each run changes one S3 object and the
# git layer first, so both sides start from pins no node holds.
#
# Per run and side: apply → every instance answers (seconds), then a re-pin of the small git
# layer → every instance answers with the new pin, one server out at a time (our default) and
# again with maxUnavailable 25% (Agones' Fleet default); the bytes the origins served (S3 objects
# counted in s3s-fs's own log, times their size; git upload-packs counted in the daemon's log);
# the bytes the nodes pulled from the registry (containerd's GETs in the registry's access log);
# and the pack Job's peak memory (the VmHWM `gamezone-init pack` prints) against the layer's size. Then, through scripts/lib/stats.py, median/min/max per side and the ratio packed
# / per-pod. Goals: origin bytes once per layer pin; apply ≤ 0.5×; re-pin ≤ 0.2×; the pack's
# peak memory flat in the layer's size.
#
#   RUNS=3 INSTANCES=10 NODES=1 (or 2) S3_FILES=20000 S3_MB=200 TIMEOUT=900 WIDE=1.3
#   GAMEZONE_CACHE, CARGO_TARGET_DIR  as for scripts/images.sh
#
# Root only (real nodes). Starts its own control plane and stops it on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-3}
INSTANCES=${INSTANCES:-10}
NODES=${NODES:-1}
S3_FILES=${S3_FILES:-20000}
S3_MB=${S3_MB:-200}
TIMEOUT=${TIMEOUT:-900}
NAME=bench-artifacts
# shellcheck source=scripts/lib/node-bench.sh
source "$ROOT/scripts/lib/node-bench.sh"
S3S_FS=${GAMEZONE_S3S_FS:-$GAMEZONE_CACHE/tools/s3s-fs-0.14.1/bin/s3s-fs}
REGISTRY_BIN=${GAMEZONE_DOCKER_REGISTRY:-/usr/bin/docker-registry}

for v in RUNS INSTANCES NODES S3_FILES S3_MB; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive number"
done
[[ -x $S3S_FS ]] || die "s3s-fs not found at $S3S_FS: run init-container/tests/install-test-tools.sh"
[[ -x $REGISTRY_BIN ]] || die "docker-registry not found: apt-get install docker-registry"

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; die "$2 does not answer on port $1"; }

node_bench_up "$NODES"

say "S3 layer: $S3_FILES files, $S3_MB MB (s3s-fs, its requests logged)"
random_files "$WORK/s3/assets" "$S3_FILES" "$S3_MB" 50
OBJECT_BYTES=$((S3_MB * 1024 * 1024 / S3_FILES))
S3_PORT=$(free_port)
RUST_LOG=s3s::ops=debug NO_COLOR=1 "$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" --access-key benchkey \
  --secret-key benchsecret "$WORK/s3" >"$WORK/s3.log" 2>&1 &
pids+=($!)
wait_port "$S3_PORT" s3s-fs

say "git layer: a config repository (git daemon, its requests logged)"
repo="$WORK/git/config"
mkdir -p "$repo/config"
git -C "$repo" init -q -b main
git -C "$repo" config uploadpack.allowReachableSHA1InWant true
write_config() { printf '{"motd": "%s"}\n' "$1" >"$repo/config/server.json"; }
write_config start
commit "$repo" start
GIT_PORT=$(free_port)
git daemon --reuseaddr --export-all --verbose --listen=127.0.0.1 --port="$GIT_PORT" --base-path="$WORK/git" "$WORK/git" \
  >"$WORK/git.log" 2>&1 &
pids+=($!)
wait_port "$GIT_PORT" "git daemon"

say "artifact registry (CNCF Distribution), trusted by every node's containerd over plain HTTP"
REG_PORT=$(free_port)
mkdir -p "$WORK/registry"
cat >"$WORK/registry/config.yml" <<EOF
version: 0.1
log: {level: info}
storage:
  filesystem: {rootdirectory: $WORK/registry/data}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:$REG_PORT
EOF
"$REGISTRY_BIN" serve "$WORK/registry/config.yml" >"$WORK/registry.log" 2>&1 &
pids+=($!)
wait_port "$REG_PORT" docker-registry
for sock in $(python3 -c 'import json,sys; print(" ".join(n["containerdSocket"] for n in json.load(open(sys.argv[1]))["nodes"]))' "$WORK/cp/real-nodes.json"); do
  d="$(dirname "$sock")/certs.d/$HOST:$REG_PORT"
  mkdir -p "$d"
  printf 'server = "http://%s"\n\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' "$HOST:$REG_PORT" "$HOST:$REG_PORT" >"$d/hosts.toml"
done

install_crds
# One operator per side, each watching its own namespace.
start_operator() { # NS PORTS EXTRA...
  local ns=$1 ports=$2
  shift 2
  kubectl create namespace "$ns" >/dev/null
  kubectl create secret generic s3-creds -n "$ns" --from-literal=accesskey=benchkey \
    --from-literal=secretkey=benchsecret >/dev/null
  "$CARGO_TARGET_DIR/release/gamezone" run --kubeconfig "$KC" --namespace "$ns" --log-format json \
    --http-addr 127.0.0.1:0 --init-image "$OPERATOR_IMAGE" --port-range "$ports" --min-artifacts-interval 1 "$@" \
    >"$WORK/operator-$ns.log" 2>&1 &
  pids+=($!)
}
start_operator packed 7600-7699 --artifact-registry "$HOST:$REG_PORT/gamezone/layers" --artifact-registry-plain-http
start_operator per-pod 7700-7799

manifest() { # INTERVAL
  cat <<EOF
apiVersion: gamezone.dev/v1alpha1
kind: GameZone
metadata: {name: bench}
spec:
  zoneId: 1
  defaultImage: $GAME_IMAGE
  artifactsInterval: $1
  artifacts:
  - {path: /app/artifacts/maps, s3: {endpoint: "http://$HOST:$S3_PORT", bucket: assets, prefix: maps/, pathStyle: true, secretRef: {name: s3-creds}}}
  - {path: /app/artifacts, git: {url: "git://$HOST:$GIT_PORT/config", branch: main}}
  services:
  - type: game
    id: 1
    endId: $INSTANCES
    ports: [{name: game, containerPort: 7777, policy: Dynamic}]
    nodeSelector: {$NODE_KIND: real}
    tolerations: [{key: $NODE_KIND, operator: Equal, value: real, effect: NoSchedule}]
EOF
}

# answered NS MOTD T0: waits until every server of NS answers `hello` with MOTD; prints the
# seconds since T0.
answered() {
  python3 - "$1" "$2" "$3" "$INSTANCES" "$TIMEOUT" "$CP" "$WORK/cp" <<'PY'
import json, socket, subprocess, sys, time
ns, want, t0, n, timeout, cp, cpdir = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6], sys.argv[7]
def hello(addr, port):
    try:
        with socket.create_connection((addr, port), timeout=0.5) as s:
            s.settimeout(2.0)
            s.sendall(b"hello\n")
            return json.loads(s.makefile().readline())
    except (OSError, ValueError):
        return None
done, seen = set(), ""
while len(done) < n:
    if time.time() - t0 > timeout:
        sys.exit(f"{ns}: {len(done)} of {n} answered {want!r} after {timeout:.0f}s; {seen[:1500]}")
    out = subprocess.run([cp, "kubectl", cpdir, "get", "gameservers", "-n", ns, "-o", "json"], capture_output=True, text=True).stdout
    items = json.loads(out or '{"items": []}')["items"]
    seen = "; ".join(f'{g["metadata"]["name"]}: {(g.get("status") or {}).get("state")} {(g.get("status") or {}).get("message", "")}' for g in items)
    for gs in items:
        st = gs.get("status") or {}
        ports = [p for p in st.get("ports", []) if p.get("hostPort")]
        name = gs["metadata"]["name"]
        if name in done or not (st.get("nodeAddress") and ports):
            continue
        a = hello(st["nodeAddress"], ports[0]["hostPort"])
        if a and ((a.get("config") or {}).get("value") or {}).get("motd") == want:
            done.add(name)
    time.sleep(0.2)
print(f"{time.time() - t0:.2f}")
PY
}

# phases NS T0: where the time since T0 went on the packed side, from the API's own timestamps
# (whole seconds): the pack Job, the pre-warm (warm pods), the server pods replaced.
phases() {
  kubectl get jobs,pods -n "$1" -o json | python3 -c '
import json, sys
from datetime import datetime
t0 = float(sys.argv[1])
ts = lambda s: datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").timestamp() - t0
items = json.load(sys.stdin)["items"]
def span(objs, start, end):
    s = [ts(start(o)) for o in objs if start(o)]
    e = [ts(end(o)) for o in objs if end(o)]
    return f"{min(s):.0f}-{max(e):.0f} s" if s and e else "-"
created = lambda o: o["metadata"]["creationTimestamp"]
after = lambda o: ts(created(o)) >= -1
jobs = [o for o in items if o["kind"] == "Job" and "-pack-" in o["metadata"]["name"] and after(o)]
pods = [o for o in items if o["kind"] == "Pod" and after(o)]
warm = [p for p in pods if "gamezone.dev/warm-tree" in p["metadata"].get("labels", {})]
servers = [p for p in pods if "-pack-" not in p["metadata"]["name"] and p not in warm]
def ended(p):
    cs = (p.get("status") or {}).get("containerStatuses") or []
    t = [c["state"]["terminated"]["finishedAt"] for c in cs if "terminated" in c.get("state", {})]
    return max(t) if t else None
def ready(p):
    c = [c for c in (p.get("status") or {}).get("conditions") or [] if c["type"] == "Ready" and c["status"] == "True"]
    return c[0]["lastTransitionTime"] if c else None
completed = lambda j: (j.get("status") or {}).get("completionTime")
print(f"pack Job {span(jobs, created, completed)}, "
      f"pre-warm {span(warm, created, ended)} ({len(warm)} pods), "
      f"servers created→Ready {span(servers, created, ready)} ({len(servers)} pods)")
' "$2"
}

# Counters in the servers' own logs: S3 objects served, git upload-packs, bytes containerd pulled.
s3_gets() { grep -c 'resolved route, op: GetObject' "$WORK/s3.log" || true; }
git_fetches() { grep -c 'Request upload-pack' "$WORK/git.log" || true; }
node_pulled() {
  awk '/containerd\// && /"GET \/v2\/[^ ]*\/blobs\// { for (i = 1; i < NF; i++) if ($i ~ /HTTP\/1\.1"$/ && $(i + 1) == 200) s += $(i + 2) } END { print s + 0 }' "$WORK/registry.log"
}
# The peak memory (MB) of the first pack Job of NS, as `gamezone-init pack` printed it (VmHWM).
pack_peak_mb() {
  local job
  job=$(kubectl get jobs -n "$1" --sort-by=.metadata.creationTimestamp -o name | grep /bench-pack- | head -n 1)
  [[ -n $job ]] || { echo 0; return; }
  kubectl logs -n "$1" "$job" 2>/dev/null | grep -o '"peakMemoryBytes":[0-9]*' | head -n 1 |
    awk -F: '{ printf "%.1f\n", $2 / 1048576 }'
}

reset() {
  kubectl delete gamezone bench -n "$1" --ignore-not-found --wait=true --timeout=300s >/dev/null
  wait_no_pods "$1" 180
}

results="$WORK/results.tsv"
: >"$results"
rec() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$results"; }
for ((r = 1; r <= RUNS; r++)); do
  sides=(packed per-pod)
  ((r % 2 == 0)) && sides=(per-pod packed)
  for side in "${sides[@]}"; do
    # Pins no node holds yet: one S3 object and the config change.
    head -c "$OBJECT_BYTES" /dev/urandom >"$WORK/s3/assets/maps/part00/f00000.bin"
    write_config "run $r $side"
    commit "$repo" "run $r $side"
    g0=$(s3_gets) f0=$(git_fetches) p0=$(node_pulled)
    t0=$(now)
    manifest 0s | kubectl apply -n "$side" -f - >/dev/null
    apply=$(answered "$side" "run $r $side" "$t0") || { tail -n 5 "$WORK/operator-$side.log" >&2; die "run $r of $side failed"; }
    g1=$(s3_gets) f1=$(git_fetches) p1=$(node_pulled)
    peak=0
    [[ $side == packed ]] && peak=$(pack_peak_mb "$side")
    # A re-pin of the small git layer: resolved within a second.
    write_config "run $r $side again"
    commit "$repo" "run $r $side again"
    timeline="$WORK/timeline-$r-$side.jsonl"
    python3 scripts/lib/pod-timeline.py watch "$timeline" "$CP" kubectl "$WORK/cp" -n "$side" &
    watcher=$!
    pids+=("$watcher")
    t1=$(now)
    kubectl patch gamezone bench -n "$side" --type merge -p '{"spec": {"artifactsInterval": "1s"}}' >/dev/null
    repin=$(answered "$side" "run $r $side again" "$t1") || { tail -n 5 "$WORK/operator-$side.log" >&2; die "re-pin $r of $side failed"; }
    kill "$watcher" 2>/dev/null || true
    say "run $r $side re-pin, each server's replacement: $(python3 scripts/lib/pod-timeline.py report "$timeline" "$t1")"
    g2=$(s3_gets) f2=$(git_fetches) p2=$(node_pulled)
    [[ $side == packed ]] && say "run $r packed re-pin, seconds after the new commit: $(phases "$side" "$t1")"
    # The same re-pin with a quarter of the servers out at once (Agones' Fleet default) rather
    # than one (ours): what a rollout costs when the kubelet's steps overlap.
    kubectl patch gamezone bench -n "$side" --type json \
      -p '[{"op": "add", "path": "/spec/services/0/updateStrategy", "value": {"maxUnavailable": "25%"}}]' >/dev/null
    write_config "run $r $side quarter"
    timeline="$WORK/timeline-$r-$side-quarter.jsonl"
    python3 scripts/lib/pod-timeline.py watch "$timeline" "$CP" kubectl "$WORK/cp" -n "$side" &
    watcher=$!
    pids+=("$watcher")
    commit "$repo" "run $r $side quarter"
    t2=$(now)
    quarter=$(answered "$side" "run $r $side quarter" "$t2") || { tail -n 5 "$WORK/operator-$side.log" >&2; die "re-pin (25%) $r of $side failed"; }
    kill "$watcher" 2>/dev/null || true
    say "run $r $side re-pin with 25% at once: $(python3 scripts/lib/pod-timeline.py report "$timeline" "$t2")"
    [[ $side == packed ]] && say "run $r packed re-pin with 25% at once, seconds after the new commit: $(phases "$side" "$t2")"
    origin_mb=$(python3 -c "print(round(($g1 - $g0) * $OBJECT_BYTES / 1048576, 1))")
    pulled_mb=$(python3 -c "print(round(($p1 - $p0) / 1048576, 1))")
    repin_pulled_mb=$(python3 -c "print(round(($p2 - $p1) / 1048576, 1))")
    say "run $r $side: apply→all $apply s, re-pin→all $repin s (25% at once: $quarter s); origins: $((g1 - g0)) S3 objects ($origin_mb MB), $((f1 - f0)) git fetches, on re-pin $((g2 - g1)) objects and $((f2 - f1)) fetches; nodes pulled $pulled_mb MB, on re-pin $repin_pulled_mb MB${peak:+; pack peak ${peak} MB}"
    rec "apply → all answered" "$side" s "$apply"
    rec "re-pin of the git layer → all answered" "$side" s "$repin"
    rec "the same, maxUnavailable 25%" "$side" s "$quarter"
    rec "origin MB on apply" "$side" MB "$origin_mb"
    rec "origin S3 objects on re-pin" "$side" n "$((g2 - g1))"
    rec "MB the nodes pulled on re-pin" "$side" MB "$repin_pulled_mb"
    [[ $side == packed ]] && rec "pack Job peak memory (layer $S3_MB MB)" "$side" MB "$peak"
    reset "$side"
  done
done

load=$(cut -d' ' -f1-3 /proc/loadavg)
python3 scripts/lib/stats.py --ours packed --peer per-pod --wide "${WIDE:-1.3}" \
  --title "$INSTANCES servers on $NODES real node(s), S3 layer $S3_FILES files / $S3_MB MB + a git layer, $RUNS runs per side (load $load)" \
  "$results"
