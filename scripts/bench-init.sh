#!/usr/bin/env bash
# Benchmarks gamezone-init against the usual tools on the same loopback servers. Each case runs
# RUNS times, ours and the peer in turns (who goes first alternates); prints per case the median,
# min and max time and peak memory (max RSS) of each side, the ratio of medians (ours / peer;
# <= 1.0 is the goal), and flags a side whose runs spread wider than WIDE (max/min): one run per
# case cannot tell a regression from page-cache luck.
#
#   RUNS=5 WIDE=1.3              runs per case; max/min over which a spread is flagged WIDE
#   GIT_FILES=20000 GIT_MB=200   git repo; the layer takes subPath `part0` (1/GIT_PARTS of it)
#   GIT_PARTS=4
#   SETTLE=61                    seconds to wait after deleting a section's outputs (see there;
#                                GIT_SETTLE is the old name)
#   S3_OBJECTS=5000 S3_MB=500    objects under one prefix
#   S3_SERVER=s3s-fs             or versitygw (built once with `go install`, filled through PUTs)
#   P4_MB=500 P4_FILES=2000      p4-export tar.gz
#   BENCH_DIR=/tmp/gamezone-bench  work directory (kept between runs: data is generated once per size;
#                                a section's outputs, RUNS copies of each, are deleted after it)
#   GAMEZONE_INIT=path          binary (default: a release build, profile `initbench`)
#   ONLY=git,s3,p4               run only these sections (default: all)
# Small quick run: GIT_FILES=2000 GIT_MB=20 S3_OBJECTS=500 S3_MB=50 P4_MB=50 SETTLE=5 RUNS=3 scripts/bench-init.sh
set -euo pipefail
cd "$(dirname "$0")/.."

GIT_FILES="${GIT_FILES:-20000}"; GIT_MB="${GIT_MB:-200}"; GIT_PARTS="${GIT_PARTS:-4}"
S3_OBJECTS="${S3_OBJECTS:-5000}"; S3_MB="${S3_MB:-500}"
P4_MB="${P4_MB:-500}"; P4_FILES="${P4_FILES:-2000}"
RUNS="${RUNS:-5}"; WIDE="${WIDE:-1.3}"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a whole number >= 1, not \"$RUNS\"" >&2; exit 1; }
BENCH_DIR="${BENCH_DIR:-/tmp/gamezone-bench}"
CACHE="${GAMEZONE_CACHE:-$HOME/.cache/gamezone}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/cargo-target}"
S3S_FS="${GAMEZONE_S3S_FS:-${GAMEZONE_TOOLS:-$CACHE/tools}/s3s-fs-0.14.1/bin/s3s-fs}"
S3_SERVER="${S3_SERVER:-s3s-fs}"
VERSITYGW_VERSION="${VERSITYGW_VERSION:-1.8.0}"
VERSITYGW="${GAMEZONE_VERSITYGW:-${GAMEZONE_TOOLS:-$CACHE/tools}/versitygw-$VERSITYGW_VERSION/bin/versitygw}"

command -v /usr/bin/time >/dev/null || apt-get install -y time >/dev/null
command -v rclone >/dev/null || apt-get install -y rclone >/dev/null
[[ -x "$S3S_FS" ]] || init-container/tests/install-test-tools.sh
if [[ -z "${GAMEZONE_INIT:-}" ]]; then
  # A release-like profile of its own: its own output directory and lock in the shared target dir.
  cargo build -q --config 'profile.initbench.inherits="release"' --profile initbench -p gamezone-init
  GAMEZONE_INIT="$CARGO_TARGET_DIR/initbench/gamezone-init"
fi
mkdir -p "$BENCH_DIR"
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
pids=()
git_repo=
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # The no-allowFilter case turns the server's filter off; the next run expects it on.
  [[ -z "$git_repo" ]] || git -C "$git_repo" config uploadpack.allowFilter true 2>/dev/null || true
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }

# measure CMD...: runs CMD under /usr/bin/time, sets SECS and RSS_MB.
measure() {
  local log="$BENCH_DIR/time.log"
  sync
  /usr/bin/time -f '%e %M' -o "$log" "$@" >"$BENCH_DIR/out.log" 2>&1 || { echo "FAILED: $*" >&2; tail -5 "$BENCH_DIR/out.log" >&2; exit 1; }
  read -r SECS RSS_KB < "$log"
  RSS_MB=$((RSS_KB / 1024))
}
results="$BENCH_DIR/results.tsv"; : > "$results"
# rec CASE SIDE: appends the last measurement (time, peak memory) for scripts/lib/stats.py.
rec() { printf '%s\t%s\ts\t%s\n%s\t%s\tMB\t%s\n' "$1" "$2" "$SECS" "$1" "$2" "$RSS_MB" >> "$results"; }
# pair CASE RUN OURS PEER: one run of a case, both sides. Who goes first alternates with the run,
# so the page cache and the machine's drift favour neither side over the runs.
pair() {
  local c=$1 r=$2
  if (( r % 2 )); then "$3" "$r"; rec "$c" ours; "$4" "$r"; rec "$c" peer
  else "$4" "$r"; rec "$c" peer; "$3" "$r"; rec "$c" ours; fi
  printf '  run %d %-28s ours %6.2f s  peer %6.2f s\n' "$r" "$c" \
    "$(awk -F'\t' -v c="$c" '$1==c && $2=="ours" && $3=="s" {v=$4} END {print v}' "$results")" \
    "$(awk -F'\t' -v c="$c" '$1==c && $2=="peer" && $3=="s" {v=$4} END {print v}' "$results")"
}

gen() { # gen DIR FILES MB [PARTS]: random files spread over PARTS folders
  python3 - "$@" <<'PY'
import os, sys
d, n, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
parts = int(sys.argv[4]) if len(sys.argv) > 4 else 8
size = mb * 1024 * 1024 // n
for i in range(n):
    p = os.path.join(d, f"part{i % parts}", f"d{(i // parts) % 50:02}", f"f{i}.bin")
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(os.urandom(size))
PY
}

only() { [[ -z "${ONLY:-}" || ",$ONLY," == *",$1,"* ]]; }

# Every output of a run goes to its own folder under runs/ (nothing is deleted between runs),
# and a section's outputs are deleted once it is done; then the deleted inodes settle before the
# next measurement: on ext4 without a journal (this machine's root), creating files within about
# a minute of deleting many makes the kernel skip each recently freed inode one by one
# (recently_deleted()), which cost whichever tool ran first after an `rm -rf` several times its
# real time (git and S3 alike: 5000 objects written right after the last run's were deleted
# spent most of their system time there).
runs="$BENCH_DIR/runs"
deleted=
for d in "$runs" "$BENCH_DIR"/out-* "$BENCH_DIR"/peer-*; do [[ -e "$d" ]] && { rm -rf "$d"; deleted=1; }; done
# Called before a section's first measurement, once data generation is done too.
settle() { [[ -z "$deleted" ]] || { sync; sleep "${SETTLE:-${GIT_SETTLE:-61}}"; deleted=; }; }
# Called once a section's last measurement is done.
drop_runs() { rm -rf "${runs:?}/$1"; deleted=1; }

# ---------- git ----------
if only git; then
git_key="git-$GIT_FILES-$GIT_MB-$GIT_PARTS"
if [[ ! -d "$BENCH_DIR/$git_key/repo/.git" ]]; then
  rm -rf "${BENCH_DIR:?}/$git_key"; mkdir -p "$BENCH_DIR/$git_key/repo"
  gen "$BENCH_DIR/$git_key/repo" "$GIT_FILES" "$GIT_MB" "$GIT_PARTS"
  # gc.auto=0: with many files the commit would start a background gc that the explicit one trips over.
  ( cd "$BENCH_DIR/$git_key/repo" && git init -q -b main && git add -A && git -c gc.auto=0 -c user.name=b -c user.email=b@b commit -qm bench \
    && git config uploadpack.allowReachableSHA1InWant true && git config uploadpack.allowFilter true && git gc -q )
  deleted=1 # gc removed every loose object
fi
settle
git_repo="$BENCH_DIR/$git_key/repo"
git -C "$git_repo" config uploadpack.allowFilter true
gport=$(free_port)
git daemon --reuseaddr --base-path="$BENCH_DIR/$git_key" --export-all --listen=127.0.0.1 --port="$gport" "$BENCH_DIR/$git_key" 2>/dev/null &
pids+=($!); wait_port "$gport"
gurl="git://127.0.0.1:$gport/repo"
plan="[{\"path\":\"game\",\"subPath\":\"part0\",\"git\":{\"url\":\"$gurl\",\"branch\":\"main\"}}]"
plan_all="[{\"path\":\"game\",\"git\":{\"url\":\"$gurl\",\"branch\":\"main\"}}]"
via() { grep -q "\"via\":\"$1\"" "$BENCH_DIR/out.log" || { echo "$1 was not taken:" >&2; cat "$BENCH_DIR/out.log" >&2; exit 1; }; }
# Ours takes the partial fetch over protocol v2 (trees, then the subPath's blobs).
ours_sub() { measure "$GAMEZONE_INIT" apply --root "$runs/git/$1/out" --plan-json "$plan"; via "protocol v2"; }
peer_sparse() { measure sh -c "git clone -q --depth 1 --filter=blob:none --sparse '$gurl' '$1' && git -C '$1' sparse-checkout set part0"; }
peer_sub() { peer_sparse "$runs/git/$1/peer"; }
# Whole repo: one protocol v2 fetch of the commit, no filter.
ours_all() { measure "$GAMEZONE_INIT" apply --root "$runs/git/$1/out-all" --plan-json "$plan_all"; }
peer_all() { measure git clone -q --depth 1 "$gurl" "$runs/git/$1/peer-all"; }
# The unchanged re-run against a peer that also has nothing to do (git pull on the sparse clone).
ours_again() { measure "$GAMEZONE_INIT" apply --root "$runs/git/$1/out" --plan-json "$plan"; }
peer_again() { measure git -C "$runs/git/$1/peer" pull -q --depth 1; }
# A server without uploadpack.allowFilter: ours falls back to libgit2's whole-commit fetch, the
# peer's filter is ignored (git warns and clones every blob).
ours_nofilter() { measure "$GAMEZONE_INIT" apply --root "$runs/git/$1/out-nofilter" --plan-json "$plan"; via libgit2; }
peer_nofilter() { peer_sparse "$runs/git/$1/peer-nofilter"; }
for r in $(seq "$RUNS"); do
  mkdir -p "$runs/git/$r"
  pair "git subPath (1/$GIT_PARTS)" "$r" ours_sub peer_sub
  pair "git whole repo" "$r" ours_all peer_all
  pair "git unchanged re-run" "$r" ours_again peer_again
done
git -C "$git_repo" config uploadpack.allowFilter false
for r in $(seq "$RUNS"); do
  pair "git subPath, no allowFilter" "$r" ours_nofilter peer_nofilter
done
git -C "$git_repo" config uploadpack.allowFilter true
drop_runs git
fi

# ---------- s3 ----------
if only s3; then
# Both tools read the same prefix from the same server: s3s-fs (default; lists no ETags and hashes
# each object on GET) or, with S3_SERVER=versitygw, versitygw's posix backend filled through PUTs
# (real ETags, like AWS/MinIO/COS). versitygw is built once from its Go module.
s3_key="s3-$S3_OBJECTS-$S3_MB"
if [[ ! -d "$BENCH_DIR/$s3_key/bench/prefix" ]]; then
  rm -rf "${BENCH_DIR:?}/$s3_key"; mkdir -p "$BENCH_DIR/$s3_key/bench/prefix"
  gen "$BENCH_DIR/$s3_key/bench/prefix" "$S3_OBJECTS" "$S3_MB"
fi
sport=$(free_port)
export RCLONE_CONFIG_B_TYPE=s3 RCLONE_CONFIG_B_PROVIDER=Other RCLONE_CONFIG_B_ACCESS_KEY_ID=AKBENCH \
  RCLONE_CONFIG_B_SECRET_ACCESS_KEY=SKBENCH RCLONE_CONFIG_B_ENDPOINT="http://127.0.0.1:$sport" RCLONE_CONFIG_B_FORCE_PATH_STYLE=true
case "$S3_SERVER" in
  s3s-fs)
    "$S3S_FS" --host 127.0.0.1 --port "$sport" --access-key AKBENCH --secret-key SKBENCH "$BENCH_DIR/$s3_key" >/dev/null 2>&1 &
    pids+=($!); wait_port "$sport" ;;
  versitygw)
    if [[ ! -x "$VERSITYGW" ]]; then
      GOBIN="$(dirname "$VERSITYGW")" GOFLAGS=-mod=mod GOSUMDB=off GOTOOLCHAIN=local \
        go install "github.com/versity/versitygw/cmd/versitygw@v$VERSITYGW_VERSION"
    fi
    vroot="$BENCH_DIR/$s3_key-versitygw"; fresh=; [[ -d "$vroot/bench" ]] || { mkdir -p "$vroot"; fresh=1; }
    "$VERSITYGW" --access AKBENCH --secret SKBENCH --port "127.0.0.1:$sport" posix "$vroot" >/dev/null 2>&1 &
    pids+=($!); wait_port "$sport"
    [[ -z "$fresh" ]] || env -u AWS_CA_BUNDLE rclone copy -q --transfers 16 "$BENCH_DIR/$s3_key/bench/prefix" b:bench/prefix ;;
  *) echo "S3_SERVER must be s3s-fs or versitygw" >&2; exit 1 ;;
esac
settle
mkdir -p "$BENCH_DIR/secrets/s3"; printf AKBENCH > "$BENCH_DIR/secrets/s3/accesskey"; printf SKBENCH > "$BENCH_DIR/secrets/s3/secretkey"
plan="[{\"path\":\"art\",\"s3\":{\"endpoint\":\"http://127.0.0.1:$sport\",\"bucket\":\"bench\",\"prefix\":\"prefix/\",\"secretRef\":{\"name\":\"s3\"}}}]"
ours_s3() { measure "$GAMEZONE_INIT" apply --root "$runs/s3/$1/out" --secrets-dir "$BENCH_DIR/secrets" --plan-json "$plan"; }
# rclone as a user would run a fast bulk copy of a folder:
# - the remote path ends in `/`: it names a folder, so rclone does not first HEAD `prefix` to see
#   whether it is a file. s3s-fs answers that HEAD (a directory on its disk) with 500 instead of
#   404, and rclone retried it with backoff for about 100 s: the fixed cost that looked like
#   "75 ms per object" in earlier runs.
# - 16 transfers and checkers, like our 16 downloads at once.
# - --use-server-modtime: compare with the listed Last-Modified instead of a HEAD per object for
#   rclone's mtime metadata (the re-run is then a listing plus a stat per file, like ours).
# Not --fast-list: s3s-fs 0.14 takes rclone's empty `delimiter=` as a delimiter and lists nothing.
peer_s3() {
  measure env -u AWS_CA_BUNDLE rclone copy --transfers 16 --checkers 16 --use-server-modtime b:bench/prefix/ "$runs/s3/$1/peer"
  [[ $(find "$runs/s3/$1/peer" -type f | wc -l) -eq "$S3_OBJECTS" ]] || { echo "rclone copied the wrong number of objects" >&2; exit 1; }
}
for r in $(seq "$RUNS"); do
  mkdir -p "$runs/s3/$r"
  pair "s3 prefix ($S3_SERVER)" "$r" ours_s3 peer_s3
  pair "s3 unchanged re-run" "$r" ours_s3 peer_s3
done
drop_runs s3
fi

# ---------- p4 export ----------
if only p4; then
p4_key="p4-$P4_FILES-$P4_MB"
if [[ ! -f "$BENCH_DIR/$p4_key/export.tar.gz" ]]; then
  rm -rf "${BENCH_DIR:?}/$p4_key"; mkdir -p "$BENCH_DIR/$p4_key/src"
  gen "$BENCH_DIR/$p4_key/src" "$P4_FILES" "$P4_MB"
  "$GAMEZONE_INIT" make-p4-export --from "$BENCH_DIR/$p4_key/src" --out "$BENCH_DIR/$p4_key/export.tar.gz" --changelist 1 >/dev/null
fi
settle
plan="[{\"path\":\"p4\",\"p4Export\":{\"url\":\"$BENCH_DIR/$p4_key/export.tar.gz\"}}]"
ours_p4() { measure "$GAMEZONE_INIT" apply --root "$runs/p4/$1/out" --plan-json "$plan"; }
peer_p4() { mkdir -p "$runs/p4/$1/peer"; measure tar -xzf "$BENCH_DIR/$p4_key/export.tar.gz" -C "$runs/p4/$1/peer"; }
for r in $(seq "$RUNS"); do
  mkdir -p "$runs/p4/$r"
  pair "p4 export tar.gz" "$r" ours_p4 peer_p4
done
drop_runs p4
fi

echo
python3 scripts/lib/stats.py --wide "$WIDE" \
  --title "sizes: git $GIT_FILES files/${GIT_MB}MB (subPath 1/$GIT_PARTS), s3 $S3_OBJECTS objects/${S3_MB}MB, p4 $P4_FILES files/${P4_MB}MB; $RUNS runs; load average $(cut -d' ' -f1-3 /proc/loadavg) at the end" \
  "$results"
