#!/usr/bin/env bash
# Benchmarks a live edit: one file changed in a large tree, applied by `gamezone-init watch --edits`
# (hard links to the pinned tree, the edited file copied), against re-running a full
# `gamezone-init apply` of the same plan with the edits folder as a plain local layer. Prints, per
# case, the median/min/max of the time until `current` shows the edit and of the bytes written
# (new inodes in the new tree), the ratio of medians, and a warning when a spread is wide.
#
#   FILES=20000 MB=200      size of the pinned tree (one local layer)
#   RUNS=5                  runs of each case, alternating
#   QUIET=200ms POLL=50ms   watch's --edits-quiet / --edits-poll (the quiet time is part of the
#                           edit's time: it is how long watch waits for a tester to finish saving)
#   BENCH_DIR=/tmp/gamezone-bench-edits   work directory (the tree is generated once per size)
#   GAMEZONE_INIT=path      binary (default: a release build in $CARGO_TARGET_DIR)
# Quick run: FILES=2000 MB=20 RUNS=3 scripts/bench-edits.sh
set -euo pipefail
cd "$(dirname "$0")/.."

FILES="${FILES:-20000}"; MB="${MB:-200}"; RUNS="${RUNS:-5}"
QUIET="${QUIET:-200ms}"; POLL="${POLL:-50ms}"
BENCH_DIR="${BENCH_DIR:-/tmp/gamezone-bench-edits}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/.cache/gamezone/cargo-target}"
if [[ -z "${GAMEZONE_INIT:-}" ]]; then
  cargo build -q --release -p gamezone-init
  GAMEZONE_INIT="$CARGO_TARGET_DIR/release/gamezone-init"
fi

watch_pid=
cleanup() { [[ -n "$watch_pid" ]] && kill "$watch_pid" 2>/dev/null || true; }
trap cleanup EXIT

base="$BENCH_DIR/base-$FILES-$MB"; edits="$BENCH_DIR/edits"; plain="$BENCH_DIR/plain-edits"
root_w="$BENCH_DIR/root-watch"; root_a="$BENCH_DIR/root-apply"
mkdir -p "$BENCH_DIR"
done_marker="$BENCH_DIR/.complete-$FILES-$MB"
if [[ ! -f "$done_marker" ]]; then
  echo "generating $FILES files, $MB MB in $base"
  rm -rf "$base"
  python3 - "$base" "$FILES" "$MB" "$done_marker" <<'PY'
import os, sys
d, n, mb, marker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
size = mb * 1024 * 1024 // n
for i in range(n):
    sub = os.path.join(d, f"d{i % 100:02d}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(size))
open(marker, "w").close()
PY
fi
rm -rf "$edits" "$plain" "$root_w" "$root_a"
mkdir -p "$edits/d00" "$plain/d00"
plan_w="[{\"path\":\"\",\"local\":{\"path\":\"$base\"}}]"
plan_a="[{\"path\":\"\",\"local\":{\"path\":\"$base\"}},{\"path\":\"\",\"local\":{\"path\":\"$plain\"}}]"
edit_rel="d00/f00000.bin"
edit_size=$(stat -c %s "$base/$edit_rel")

now_ns() { date +%s%N; }
# new_bytes ROOT: bytes of regular files in ROOT/current with one link (written by this run).
new_bytes() { find "$1/current/" -type f -links 1 -printf '%s\n' | awk '{s+=$1} END {print s+0}'; }

echo "initial trees (not measured)"
"$GAMEZONE_INIT" apply --root "$root_a" --plan-json "$plan_a" 2>/dev/null
"$GAMEZONE_INIT" watch --root "$root_w" --plan-json "$plan_w" --edits "$edits" --interval 1h \
  --edits-quiet "$QUIET" --edits-poll "$POLL" 2>"$BENCH_DIR/watch.log" &
watch_pid=$!
for _ in $(seq 600); do [[ -e "$root_w/current/$edit_rel" ]] && break; sleep 0.1; done
[[ -e "$root_w/current/$edit_rel" ]] || { echo "watch did not build its first tree" >&2; tail -5 "$BENCH_DIR/watch.log" >&2; exit 1; }

results="$BENCH_DIR/results.txt"; : > "$results"
for run in $(seq "$RUNS"); do
  marker="edit $run $(now_ns)"
  # Edit through watch: write a new version of one file into the edits folder.
  tmp="$BENCH_DIR/edit.tmp"
  { printf '%s\n' "$marker"; head -c "$edit_size" /dev/urandom; } > "$tmp"
  sync
  t0=$(now_ns)
  cp "$tmp" "$edits/$edit_rel"
  until head -n1 "$root_w/current/$edit_rel" 2>/dev/null | grep -qxF "$marker"; do sleep 0.005; done
  t1=$(now_ns)
  echo "watch $(( (t1 - t0) / 1000 )) $(new_bytes "$root_w")" >> "$results"

  # The same edit by a full apply of the plan with the edits folder as a plain local layer.
  cp "$tmp" "$plain/$edit_rel"
  sync
  t0=$(now_ns)
  "$GAMEZONE_INIT" apply --root "$root_a" --plan-json "$plan_a" 2>/dev/null
  t1=$(now_ns)
  head -n1 "$root_a/current/$edit_rel" | grep -qxF "$marker" || { echo "apply did not show the edit" >&2; exit 1; }
  echo "apply $(( (t1 - t0) / 1000 )) $(new_bytes "$root_a")" >> "$results"
  echo "run $run: $(tail -n2 "$results" | tr '\n' ' ')"
done

python3 - "$results" "$FILES" "$MB" "$QUIET" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
data = {}
for case, us, b in rows:
    data.setdefault(case, []).append((int(us) / 1e6, int(b)))
print(f"\none file edited in a {sys.argv[2]}-file, {sys.argv[3]} MB tree; watch --edits-quiet {sys.argv[4]}")
print(f"{'case':<8} {'runs':>4} {'median s':>9} {'min s':>7} {'max s':>7} {'median MB written':>18} {'min MB':>7} {'max MB':>7}")
med = {}
for case in ("watch", "apply"):
    v = data[case]
    t = [x[0] for x in v]; b = [x[1] / 1e6 for x in v]
    med[case] = (statistics.median(t), statistics.median(b))
    print(f"{case:<8} {len(v):>4} {med[case][0]:>9.3f} {min(t):>7.3f} {max(t):>7.3f} {med[case][1]:>18.3f} {min(b):>7.3f} {max(b):>7.3f}")
    if min(t) > 0 and max(t) / min(t) > 1.3:
        print(f"  note: {case} times spread wide (max/min = {max(t)/min(t):.2f}); the machine is busy or the runs differ")
print(f"ratio of medians watch/apply: time {med['watch'][0]/med['apply'][0]:.3f}, bytes {med['watch'][1]/max(med['apply'][1], 1e-9):.5f}")
PY
echo "watch's own figures per swap (elapsed_ms, written_bytes, linked_files):"
grep '"swapped in a new tree"' "$BENCH_DIR/watch.log" | tail -n "$RUNS" \
  | python3 -c 'import json,sys; [print(" ", (d:=json.loads(l))["elapsed_ms"], d["written_bytes"], d["linked_files"]) for l in sys.stdin]'
