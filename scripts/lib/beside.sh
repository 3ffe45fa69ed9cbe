# Sourced by scripts that run a long build beside their own work (on 2 cores, each alone leaves
# a core idle in its download and link steps):
#
#   beside_start LABEL COMMAND...   runs COMMAND (a function works too) in the background, each
#                                   of its lines prefixed with "[LABEL] " on stderr; stopped with
#                                   its children if the script exits first
#   beside_wait                     waits for it; its exit status
#   kill_tree PID                   stops PID and every process under it

kill_tree() {
  local child
  for child in $(pgrep -P "$1"); do kill_tree "$child"; done
  kill "$1" 2>/dev/null || true
}

beside_start() {
  local label=$1
  shift
  ( set -o pipefail; "$@" 2>&1 | sed -u "s/^/[$label] /" >&2 ) &
  BESIDE_PID=$!
  trap 'kill_tree "$BESIDE_PID"' EXIT
}

beside_wait() {
  local rc=0
  wait "$BESIDE_PID" || rc=$?
  trap - EXIT
  return "$rc"
}
