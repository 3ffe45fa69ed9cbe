# Sourced by the benchmarks on real nodes (scripts/bench-node.sh, scripts/bench-artifacts.sh):
# their common start. Before sourcing, set ROOT (the repository) and NAME (the log prefix).
#
#   node_bench_up NODES [IMAGE...]
#                            a work dir (WORK), a control plane in it with one KWOK node and
#                            NODES real nodes (KC, its kubeconfig; HOST, where pods reach the
#                            host's loopback), the images (release build, cached by content; all,
#                            or those named as scripts/images.sh names them) in every real node;
#                            everything stops on exit, with the PIDs in `pids`; BENCH_KEEP=DIR
#                            keeps the work dir's logs (the operators', the pod timelines) there
#   kubectl ARGS...          against that control plane
#   install_crds             the CRDs, established
#   random_files DIR N MB PARTS   N files of random bytes, MB in all, in PARTS folders under DIR/maps
#   commit REPO MESSAGE      commits everything in REPO as the benchmark's author
#   wait_no_pods NS SECS     until NS has no pod left (dies after SECS)
#   free_port, now, say, die
#
# Root only (real nodes).

export GAMEZONE_CACHE=${GAMEZONE_CACHE:-$HOME/.cache/gamezone}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$GAMEZONE_CACHE/cargo-target}
CP="$ROOT/tests/controlplane/cp.sh"
OPERATOR_IMAGE=ghcr.io/gamezone-dev/gamezone:0.1.0
GAME_IMAGE=gamezone.dev/example/game-server:0.1.0
NODE_KIND=gamezone.dev/node-kind

say() { printf '[%s] %s\n' "$NAME" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$NAME" "$*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "real nodes need root"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
kubectl() { "$CP" kubectl "$WORK/cp" "$@"; }

pids=()
node_bench_cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$CP" down "$WORK/cp" >/dev/null 2>&1 || true
  if [[ -n ${BENCH_KEEP:-} ]]; then
    mkdir -p "$BENCH_KEEP"
    find "$WORK" -maxdepth 1 -type f \( -name '*.log' -o -name '*.jsonl' -o -name '*.tsv' \) -exec cp -t "$BENCH_KEEP" {} +
  fi
  rm -rf "$WORK"
  exit "$rc"
}

node_bench_up() {
  # Short: containerd's socket path under it must stay under 108 bytes.
  WORK=$(mktemp -d "/tmp/gz-$NAME.XXXXXX")
  trap node_bench_cleanup EXIT INT TERM
  say "control plane with $1 real node(s) in $WORK/cp"
  KC=$("$CP" up "$WORK/cp" --nodes 1 --real-nodes "$1" --watch-pid $$ 2>"$WORK/up.log" | tail -n 1) ||
    { tail -n 20 "$WORK/up.log" >&2; die "cp.sh up failed"; }
  say "images (release build, cached by content) into the node(s)"
  "$ROOT/scripts/images.sh" import "$WORK/cp" "${@:2}" >/dev/null 2>"$WORK/images.log" ||
    { tail -n 20 "$WORK/images.log" >&2; die "images.sh import failed"; }
  HOST=$(sed -n 's/^HOST_ADDRESS=//p' "$WORK/cp/real-nodes.env")
}

install_crds() {
  kubectl apply --server-side -f "$ROOT/deploy/crds.yaml" >/dev/null
  "$CP" wait-crds "$WORK/cp"
}

random_files() {
  python3 - "$@" <<'PY'
import os, sys
root, n, mb, parts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
size = max(1, mb * 1024 * 1024 // n)
for i in range(n):
    d = os.path.join(root, "maps", f"part{i % parts:02}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05}.bin"), "wb") as f:
        f.write(os.urandom(size))
PY
}

commit() {
  git -C "$1" add -A
  GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.com GIT_COMMITTER_NAME=bench \
    GIT_COMMITTER_EMAIL=bench@example.com git -C "$1" commit -q -m "$2"
}

wait_no_pods() {
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    [[ -z $(kubectl get pods -n "$1" -o name 2>/dev/null) ]] && return 0
    sleep 0.2
  done
  die "pods of $1 still there after $2s"
}
