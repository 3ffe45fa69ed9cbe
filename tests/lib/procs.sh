# Process helpers shared by the test servers' scripts (tests/controlplane/cp.sh,
# tests/argocd/argocd.sh): start and stop process groups, reserve loopback ports, wait, log.
# Sourced, not run. The sourcing script sets LOG_PREFIX (its name in log lines), DIR (its state
# directory) and SELF (its own path, for the watchdog).
# shellcheck shell=bash

say() { printf '[%s] %s\n' "$LOG_PREFIX" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$LOG_PREFIX" "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# True if PID runs (a zombie waiting for its reaper does not count).
alive() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# Processes of the session led by $1: each component gets its own session,
# so one signal to the group reaches anything it might have forked.
group_alive() {
  local p
  for p in $(pgrep -s "$1" 2>/dev/null); do alive "$p" && return 0; done
  alive "$1"
}

release_ports() {
  local p
  for p in "${RESERVED[@]}"; do rmdir "$PORTS_DIR/$p" 2>/dev/null || true; done
  RESERVED=()
}

reserve_port() {
  local p _
  mkdir -p "$PORTS_DIR"
  for _ in $(seq 500); do
    p=$((20000 + RANDOM % 12000))
    if ss -Htuan "( sport = :$p )" | grep -q .; then continue; fi
    if mkdir "$PORTS_DIR/$p" 2>/dev/null; then
      RESERVED+=("$p")
      printf -v "$1" '%s' "$p"
      return 0
    fi
    # left behind by an `up` that was killed: nobody holds a port this long
    find "$PORTS_DIR/$p" -maxdepth 0 -mmin +5 -exec rm -rf {} + 2>/dev/null || true
  done
  die "found no free loopback port in 20000-31999"
}

# start NAME CMD...: run CMD detached in its own session, logging to logs/NAME.log.
start() {
  local name=$1; shift
  local pidfile="$DIR/logs/$name.pid"
  rm -f "$pidfile"
  # The inner shell writes its own pid, which is right whether or not setsid had to fork.
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$DIR/logs/$name.log" 2>&1 &
  local i
  for i in $(seq 100); do [[ -s "$pidfile" ]] && break; sleep 0.01; done
  [[ -s "$pidfile" ]] || die "$name did not start"
  echo "$name $(cat "$pidfile")" >>"$DIR/pids"
  rm -f "$pidfile"
}

# stop_groups PID...: SIGTERM each process group, SIGKILL what is left after 5s.
stop_groups() {
  (($#)) || return 0
  local pid left
  for pid in "$@"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  local deadline=$(($(date +%s) + 5))
  while :; do
    left=()
    for pid in "$@"; do if group_alive "$pid"; then left+=("$pid"); fi; done
    ((${#left[@]} == 0)) && return 0
    (($(date +%s) < deadline)) || break
    sleep 0.1
  done
  for pid in "${left[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; done
  sleep 0.2
  for pid in "${left[@]}"; do group_alive "$pid" && say "warning: pid $pid survived SIGKILL"; done
  return 0
}

# Tears the control plane down once PID exits, so a crashed test run leaves nothing behind.
start_watchdog() {
  local pidfile="$DIR/watchdog.pid"
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid bash -c '
    echo $$ >"$0"
    watched=$1 dir=$2 self=$3
    running() { [[ -e /proc/$watched ]] && [[ $(awk "{ print \$3 }" /proc/$watched/stat 2>/dev/null) != Z ]]; }
    while running && [[ -e $dir/pids ]]; do sleep 1; done
    [[ -e $dir/pids ]] && exec "$self" down "$dir"
  ' "$pidfile" "$1" "$DIR" "$SELF" </dev/null >>"$DIR/logs/watchdog.log" 2>&1 &
}

# Fail fast with the log of any component that has exited.
check_running() {
  local name pid
  if [[ ! -f "$DIR/pids" ]]; then
    say "stopped while starting (by \`down\` or the watchdog: watched process gone?)"
    return 1
  fi
  while read -r name pid; do
    if ! alive "$pid"; then
      say "$name (pid $pid) exited; last lines of $DIR/logs/$name.log:"
      tail -n 25 "$DIR/logs/$name.log" >&2 || true
      return 1
    fi
  done <"$DIR/pids"
}

# wait_until SECONDS WHAT CMD...: poll CMD every 0.2s while all components live.
wait_until() {
  local timeout=$1 what=$2; shift 2
  local deadline
  deadline=$(($(date +%s) + timeout))
  until "$@" >/dev/null 2>&1; do
    check_running || die "a component died while waiting for $what"
    (($(date +%s) < deadline)) || die "timed out after ${timeout}s waiting for $what (logs in $DIR/logs)"
    sleep 0.2
  done
}

require_tools() {
  local missing=()
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if ((${#missing[@]})); then
    die "missing tools: ${missing[*]} (install them: Go from https://go.dev/dl, the rest from your distribution's packages)"
  fi
}
