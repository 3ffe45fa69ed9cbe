#!/usr/bin/env bash
# Seed 003's network table on a real node: the example game server's request/response rate over
# long-lived TCP connections (tcp rr), its connection rate with a new connection per request
# (tcp crr) and UDP request/response (udp rr), measured by the example's bot (`game-server bot
# --rate 0`: each session sends its next request as soon as the last is answered) in four places:
#
#   bare      server and bot on the host, no container: both in one network namespace of their
#             own with only loopback (so no NAT rule or conntrack of the host's is on the path)
#   pod       server in a pod on the real node, bot on the host dialling the pod IP (port policy None)
#   hostport  the same pod through the node's host port: <nodeIP>:<hostPort>, portmap's DNAT
#             (port policies Dynamic, Static, Passthrough)
#   pods      bot in a pod on the same node against the server pod's IP
#
# Rounds alternate the rows (bare, pod, hostport, pods, bare, ...) so the machine's other load
# falls on all of them alike. Prints each cell's median, min and max over the rounds and each
# containerized row's median as a share of bare, then scripts/lib/stats.py's verdict per row
# against bare (spread flagged WIDE), then the node's counters (softirq share of the CPU time
# during the row's cells, conntrack entries and NAT rules in the node's namespace, conntrack
# drops and failed inserts) that explain a row below its goal.
#
#   RUNS=5          rounds (each cell measured RUNS times)
#   SECS=10         seconds per cell
#   SESSIONS=4      concurrent sessions of the bot
#   ROWS="bare pod hostport pods"   the rows to measure (bare is needed for the shares)
#   EXPLAIN=1       two more rows that take the containerized path apart: `node` (the server a bare
#                   process in the node's network namespace: one veth hop and the node's netfilter,
#                   no bridge, no pod) and `pod-notrack` (the pod row with conntrack turned off for
#                   the server pod's traffic by raw-table NOTRACK rules in the host's and the node's
#                   namespaces, put in for that row's cells only and removed after, or on exit)
#   NET_RESULTS=FILE    also write every measurement there, tab-separated:
#                       ROW METRIC RUN RATE ERRORS REQUESTS P50_MS P99_MS
#   GAMEZONE_IMAGE_PROFILE  the game server's cargo profile (release; the test suite uses dev)
#   GAMEZONE_CACHE, CARGO_TARGET_DIR  as for scripts/images.sh
#
# Exits non-zero when a cell has no measurement, a zero rate, or errors. Root only (real node).
# Starts its own control plane with one real node and stops it on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-5}
SECS=${SECS:-10}
SESSIONS=${SESSIONS:-4}
ROWS=${ROWS:-bare pod hostport pods}
EXPLAIN=${EXPLAIN:-0}
if [[ $EXPLAIN == 1 ]]; then ROWS="$ROWS node pod-notrack"; fi
NAME=bench-net
# shellcheck source=scripts/lib/node-bench.sh
source "$ROOT/scripts/lib/node-bench.sh"
NS=bench-net
PORT=7777
METRICS=(tcp-rr tcp-crr udp-rr)

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS=$RUNS: want a positive number of rounds"
[[ $SECS =~ ^[1-9][0-9]*$ ]] || die "SECS=$SECS: want a positive number of seconds per cell"
[[ $SESSIONS =~ ^[1-9][0-9]*$ ]] || die "SESSIONS=$SESSIONS: want a positive number of sessions"
for row in $ROWS; do
  case $row in bare | pod | hostport | pods | node | pod-notrack) ;; *) die "ROWS: no row '$row' (bare, pod, hostport, pods; node, pod-notrack)" ;; esac
done
[[ " $ROWS " == *" bare "* ]] || die "ROWS='$ROWS' lacks bare: every other row is a share of it"
case ${GAMEZONE_IMAGE_PROFILE:-release} in
  release) BOT="$CARGO_TARGET_DIR/release/game-server" ;;
  dev) BOT="$CARGO_TARGET_DIR/debug/game-server" ;;
  *) die "GAMEZONE_IMAGE_PROFILE=$GAMEZONE_IMAGE_PROFILE: use release or dev" ;;
esac

node_bench_up 1 game-server
[[ -x $BOT ]] || die "no $BOT after the image build"
read -r NODE_IP NETNS < <(awk '$1 == "NODE=real-1" { print $3, $5 }' "$WORK/cp/real-nodes.env")
HOST_PORT=$((7000 + RANDOM % 900))
kubectl create namespace "$NS" >/dev/null

placement() {
  printf '%*snodeSelector: {%s: real}\n' "$1" '' "$NODE_KIND"
  printf '%*stolerations: [{key: %s, operator: Equal, value: real, effect: NoSchedule}]\n' "$1" '' "$NODE_KIND"
}
# The server pod: TCP and UDP on 7777, and on the node's HOST_PORT through portmap.
kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: server}
spec:
$(placement 2)
  terminationGracePeriodSeconds: 2
  containers:
  - name: server
    image: $GAME_IMAGE
    imagePullPolicy: Never
    args: [game, "1"]
    env:
    - {name: GAMEZONE_ZONE, value: bench}
    - {name: GAMEZONE_ZONE_ID, value: "1"}
    - {name: GAMEZONE_PORT_GAME, value: "$PORT"}
    - {name: RUST_LOG, value: warn}
    ports:
    - {name: game, containerPort: $PORT, hostPort: $HOST_PORT, protocol: TCP}
    - {name: game-udp, containerPort: $PORT, hostPort: $HOST_PORT, protocol: UDP}
EOF
kubectl wait -n "$NS" --for=condition=Ready pod/server --timeout=120s >/dev/null || die "the server pod is not Ready"
POD_IP=$(kubectl get pod -n "$NS" server -o jsonpath='{.status.podIP}')
say "server pod at $POD_IP:$PORT, host port $NODE_IP:$HOST_PORT (node namespace $NETNS)"

NODE_PORT=$((PORT + 1))
if [[ " $ROWS " == *" node "* ]]; then
  # The same server as a bare process in the node's namespace, reached at the node's IP.
  ip netns exec "$NETNS" env GAMEZONE_ZONE=bench GAMEZONE_ZONE_ID=1 GAMEZONE_TOPOLOGY=/nonexistent \
    GAMEZONE_PORT_GAME=$NODE_PORT RUST_LOG=warn "$BOT" game 1 >"$WORK/node-server.log" 2>&1 &
  pids+=($!)
fi
# notrack on|off: conntrack off for the server pod's traffic, in the host's and the node's
# namespaces (raw table, tagged so the exit trap finds what is left).
TAG="gamezone-bench-net-$$"
notrack() {
  local op=-D
  [[ $1 == on ]] && op=-A
  iptables -w -t raw $op OUTPUT -d "$POD_IP" -m comment --comment "$TAG" -j NOTRACK 2>/dev/null || [[ $op == -D ]]
  iptables -w -t raw $op PREROUTING -s "$POD_IP" -m comment --comment "$TAG" -j NOTRACK 2>/dev/null || [[ $op == -D ]]
  ip netns exec "$NETNS" iptables -w -t raw $op PREROUTING -d "$POD_IP" -m comment --comment "$TAG" -j NOTRACK 2>/dev/null || [[ $op == -D ]]
  ip netns exec "$NETNS" iptables -w -t raw $op PREROUTING -s "$POD_IP" -m comment --comment "$TAG" -j NOTRACK 2>/dev/null || [[ $op == -D ]]
}
if [[ " $ROWS " == *" pod-notrack "* ]]; then
  trap 'rc=$?; notrack off; (exit $rc); node_bench_cleanup' EXIT INT TERM
fi

# bot_args METRIC ADDR: the bot's flags for one cell.
bot_args() {
  local mode=()
  case $1 in
    tcp-crr) mode=(--connect-per-request) ;;
    udp-rr) mode=(--protocol udp) ;;
  esac
  echo bot 1 --addr "$2" --rate 0 --sessions "$SESSIONS" --duration "${SECS}s" --timeout 2s --exit --metrics off \
    "${mode[@]}"
}
# The bot's last line, `bot done`, as "RATE ERRORS REQUESTS P50 P99".
done_line() {
  python3 -c '
import json, sys
done = [json.loads(l) for l in sys.stdin if "\"bot done\"" in l]
if not done:
    sys.exit("no `bot done` line from the bot")
d = done[-1]
print("%.1f %d %d %.3f %.3f" % (d["rate"], d["errors"], d["requests"], d["p50_ms"], d["p99_ms"]))'
}
BOT_ENV=(GAMEZONE_ZONE=bench GAMEZONE_ZONE_ID=1 GAMEZONE_TOPOLOGY=/nonexistent RUST_LOG=info)

# cell ROW METRIC: one measurement, "RATE ERRORS REQUESTS P50 P99" on stdout.
cell() {
  local row=$1 metric=$2 out
  case $row in
    bare)
      # One private network namespace with loopback only, for the server and the bot.
      # shellcheck disable=SC2046 # bot_args is a list of words
      out=$(unshare --net env "${BOT_ENV[@]}" GAMEZONE_PORT_GAME=$PORT BOT="$BOT" ARGS="$(bot_args "$metric" 127.0.0.1:$PORT)" \
        sh -c 'ip link set lo up; RUST_LOG=warn "$BOT" game 1 & s=$!; sleep 0.3; $BOT $ARGS; kill $s' 2>&1) ;;
    pod | pod-notrack)
      # shellcheck disable=SC2046
      out=$(env "${BOT_ENV[@]}" "$BOT" $(bot_args "$metric" "$POD_IP:$PORT") 2>&1) ;;
    node)
      # shellcheck disable=SC2046
      out=$(env "${BOT_ENV[@]}" "$BOT" $(bot_args "$metric" "$NODE_IP:$NODE_PORT") 2>&1) ;;
    hostport)
      # shellcheck disable=SC2046
      out=$(env "${BOT_ENV[@]}" "$BOT" $(bot_args "$metric" "$NODE_IP:$HOST_PORT") 2>&1) ;;
    pods)
      local args
      args=$(bot_args "$metric" "$POD_IP:$PORT" | python3 -c 'import json, sys; print(json.dumps(sys.stdin.read().split()))')
      kubectl delete pod -n "$NS" bot --ignore-not-found --wait=true >/dev/null
      kubectl apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: bot}
spec:
$(placement 2)
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  containers:
  - name: bot
    image: $GAME_IMAGE
    imagePullPolicy: Never
    args: $args
    env:
    - {name: GAMEZONE_ZONE, value: bench}
    - {name: GAMEZONE_ZONE_ID, value: "1"}
EOF
      local phase="" i
      for ((i = 0; i < (SECS + 60) * 5; i++)); do
        phase=$(kubectl get pod -n "$NS" bot -o jsonpath='{.status.phase}' 2>/dev/null || true)
        [[ $phase == Succeeded || $phase == Failed ]] && break
        sleep 0.2
      done
      [[ $phase == Succeeded ]] || die "the bot pod of $metric ended $phase: $(kubectl logs -n "$NS" bot 2>&1 | tail -n 3)"
      out=$(kubectl logs -n "$NS" bot) ;;
  esac
  done_line <<<"$out" || die "$row $metric: the bot said: $(tail -n 3 <<<"$out")"
}

# The node's counters: softirq and total jiffies of the whole machine (the node shares its
# kernel), conntrack entries, drops and failed inserts in the node's namespace.
cpu_jiffies() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print $8, t }' /proc/stat; }
node_conntrack() {
  ip netns exec "$NETNS" sh -c 'cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo 0'
}
conntrack_trouble() {
  # Per-CPU rows of hex counters; drop, early_drop and insert_failed summed over the CPUs.
  ip netns exec "$NETNS" python3 -c '
import sys
try:
    lines = open("/proc/net/stat/nf_conntrack").read().split("\n")
except OSError:
    print(0); sys.exit()
cols = lines[0].split()
want = [cols.index(c) for c in ("drop", "early_drop", "insert_failed") if c in cols]
print(sum(int(l.split()[i], 16) for l in lines[1:] if l.strip() for i in want))'
}

results="$WORK/results.tsv"
counters="$WORK/counters.tsv"
: >"$results"
: >"$counters"
for ((r = 1; r <= RUNS; r++)); do
  for row in $ROWS; do
    if [[ $row == pod-notrack ]]; then notrack on; fi
    for metric in "${METRICS[@]}"; do
      read -r s0 t0 < <(cpu_jiffies)
      k0=$(conntrack_trouble)
      line=$(cell "$row" "$metric")
      read -r s1 t1 < <(cpu_jiffies)
      k1=$(conntrack_trouble)
      read -r rate errors requests p50 p99 <<<"$line"
      say "round $r $row $metric: $rate/s ($requests requests, $errors errors, p50 ${p50} ms, p99 ${p99} ms)"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$metric" "$r" "$rate" "$errors" "$requests" "$p50" "$p99" >>"$results"
      printf '%s\t%s\t%s\t%s\t%s\n' "$row" "$metric" "$((s1 - s0))" "$((t1 - t0))" "$((k1 - k0))" >>"$counters"
    done
    if [[ $row == pod-notrack ]]; then notrack off; fi
  done
done
nat_rules=$(ip netns exec "$NETNS" iptables -t nat -S 2>/dev/null | grep -c -- '-j DNAT' || true)
tracked=$(node_conntrack)
[[ -n ${NET_RESULTS:-} ]] && cp "$results" "$NET_RESULTS"

load=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$results" "$counters" "$RUNS" "$SECS" "$SESSIONS" "$load" "$nat_rules" "$tracked" "$ROWS" <<'PY'
import statistics, sys
results, counters, runs, secs, sessions, load, nat_rules, tracked, rows = sys.argv[1:]
rows = rows.split()
metrics = ["tcp-rr", "tcp-crr", "udp-rr"]
cells = {}
bad = []
for line in open(results):
    row, metric, run, rate, errors, requests = line.split("\t")[:6]
    cells.setdefault((row, metric), []).append(float(rate))
    if float(rate) <= 0 or int(errors) > 0:
        bad.append(f"{row} {metric} round {run}: rate {rate}, {errors} errors")
names = {"bare": "bare (host, no container)", "pod": "server pod, pod IP", "hostport": "server pod, host port (DNAT)",
         "pods": "bot pod -> server pod", "node": "bare server in node netns", "pod-notrack": "server pod, no conntrack"}
print(f"\nexample game server, requests/s (median, min-max over {runs} rounds of {secs} s, {sessions} sessions; load {load})")
head = f"{'':32}" + "".join(f"{m:>30}" for m in metrics)
print(head)
for row in rows:
    out = f"{names[row]:<32}"
    for m in metrics:
        v = cells.get((row, m))
        if not v:
            out += f"{'missing':>30}"
            bad.append(f"{row} {m}: no measurement")
            continue
        med = statistics.median(v)
        share = ""
        if row != "bare" and cells.get(("bare", m)):
            share = f" {med / statistics.median(cells[('bare', m)]):.2f}x"
        else:
            share = "      "
        out += f"{f'{med:,.0f} ({min(v):,.0f}-{max(v):,.0f}){share}':>30}"
    print(out)
print("(shares: median of the row / median of bare; goals: pod >= 0.95, hostport >= 0.90)")

soft = {}
for line in open(counters):
    row, metric, s, t, trouble = line.rstrip("\n").split("\t")
    a = soft.setdefault(row, [0, 0, 0])
    a[0] += int(s); a[1] += int(t); a[2] += int(trouble)
print("\nnode counters per row: softirq share of all CPU time during its cells, conntrack drops + failed inserts")
for row in rows:
    s, t, trouble = soft.get(row, [0, 0, 0])
    print(f"  {names[row]:<32} softirq {100 * s / t if t else 0:5.1f}%   conntrack trouble {trouble}")
print(f"  node namespace at the end: {tracked} conntrack entries, {nat_rules} DNAT rules in its nat table")
if bad:
    print("\nINCOMPLETE: " + "; ".join(bad))
    sys.exit(1)
print("\nevery cell measured, no errors")
PY
# The verdicts with spread, per containerized row against bare (stats.py: CASE SIDE METRIC VALUE).
for row in $ROWS; do
  [[ $row == bare ]] && continue
  awk -F'\t' -v row="$row" '$1 == "bare" || $1 == row { print $2 "\t" $1 "\t/s\t" $4 }' "$results" |
    python3 "$ROOT/scripts/lib/stats.py" --ours "$row" --peer bare --title "
$row against bare (ratio of medians $row/bare):" -
done
