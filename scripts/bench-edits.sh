#!/usr/bin/env bash
# Benchmarks a live edit: one file changed in a large tree, applied by `gamezone-init watch --edits`
# (hard links to the pinned tree, the edited file copied), against re-running a full
# `gamezone-init apply` of the same plan with the edits folder as a plain local layer, in turns
# (who goes first alternates). Prints, through scripts/lib/stats.py, the median/min/max of the
# time until `current` shows the edit and of the MB written (new inodes in the new tree), the
# ratio of medians, and WIDE for a side whose runs spread over WIDE (max/min).
#
#   FILES=20000 MB=200      size of the pinned tree (one local layer)
#   RUNS=5 WIDE=1.3         runs of each case; max/min over which a spread is flagged WIDE
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
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${GAMEZONE_CACHE:-$HOME/.cache/gamezone}/cargo-target}"
if [[ -z "${GAMEZONE_INIT:-}" ]]; then
  cargo build -q --release -p gamezone-init
  GAMEZONE_INIT="$CARGO_TARGET_DIR/release/gamezone-init"
fi

watch_pid=
cleanup() { if [[ -n "$watch_pid" ]]; then kill "$watch_pid" 2>/dev/null || true; fi; }
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

results="$BENCH_DIR/results.tsv"; : > "$results"
# rec SIDE T0 T1 ROOT: one run's time and bytes written, for scripts/lib/stats.py.
rec() {
  printf 'one file edited\t%s\ts\t%s\none file edited\t%s\tMB written\t%s\n' \
    "$1" "$(( ($3 - $2) / 1000 ))e-6" "$1" "$(new_bytes "$4")e-6" >> "$results"
}
# Edit through watch: write a new version of one file into the edits folder.
by_watch() {
  local t0 t1
  t0=$(now_ns)
  cp "$tmp" "$edits/$edit_rel"
  until head -n1 "$root_w/current/$edit_rel" 2>/dev/null | grep -qxF "$marker"; do sleep 0.005; done
  t1=$(now_ns)
  rec watch "$t0" "$t1" "$root_w"
}
# The same edit by a full apply of the plan with the edits folder as a plain local layer.
by_apply() {
  local t0 t1
  cp "$tmp" "$plain/$edit_rel"
  sync
  t0=$(now_ns)
  "$GAMEZONE_INIT" apply --root "$root_a" --plan-json "$plan_a" 2>/dev/null
  t1=$(now_ns)
  head -n1 "$root_a/current/$edit_rel" | grep -qxF "$marker" || { echo "apply did not show the edit" >&2; exit 1; }
  rec apply "$t0" "$t1" "$root_a"
}
tmp="$BENCH_DIR/edit.tmp"
for run in $(seq "$RUNS"); do
  marker="edit $run $(now_ns)"
  { printf '%s\n' "$marker"; head -c "$edit_size" /dev/urandom; } > "$tmp"
  sync
  # Who goes first alternates, so the page cache favours neither.
  if (( run % 2 )); then by_watch; by_apply; else by_apply; by_watch; fi
  echo "run $run: $(tail -n4 "$results" | awk -F'\t' '$3 == "s" {printf "%s %.3f s  ", $2, $4}')"
done

echo
python3 scripts/lib/stats.py --ours watch --peer apply --wide "${WIDE:-1.3}" \
  --title "one file edited in a $FILES-file, $MB MB tree; watch --edits-quiet $QUIET; $RUNS runs; load average $(cut -d' ' -f1-3 /proc/loadavg)" \
  "$results"
echo "watch's own figures per swap (elapsed_ms, written_bytes, linked_files):"
grep '"swapped in a new tree"' "$BENCH_DIR/watch.log" | tail -n "$RUNS" \
  | python3 -c 'import json,sys; [print(" ", (d:=json.loads(l))["elapsed_ms"], d["written_bytes"], d["linked_files"]) for l in sys.stdin]'
