#!/usr/bin/env bash
# The migrater against a real MariaDB: a private mysqld on a temp datadir, bound to 127.0.0.1 on a
# free port, run as the current user, with a database user that has a password. Checks:
#   - gamezone-migrate (the image's entrypoint) applies 000001 from a migrations folder;
#   - a DSN spelled in the Job's args with $(MYSQL_PASSWORD) fails for a password with + % ?,
#     and works once the password is URL-encoded; it applies 000002;
#   - a re-run changes nothing; a wrong password and a missing env var are refused;
#   - a broken migration fails with migrate's own error on stderr and a non-zero exit, and
#     leaves the schema marked dirty.
# Installs Debian's mariadb-server when missing (apt-get, idempotent). Exit 0 when all pass.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "migrater test: $*" >&2; }
fail() { echo "migrater test: FAIL: $*" >&2; exit 1; }

(cd "$here/entrypoint" && GOFLAGS=-mod=mod GOSUMDB=off GOTOOLCHAIN=local go test ./... >&2)
migrate="$("$here/build.sh" | tail -n 1)"
entry="$("$here/build.sh" entrypoint | tail -n 1)"

export PATH="$PATH:/usr/sbin:/sbin"
if ! command -v mariadbd >/dev/null || ! command -v mariadb-install-db >/dev/null || ! command -v mariadb >/dev/null; then
  log "installing mariadb-server (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends mariadb-server mariadb-client >&2 \
    || { apt-get update >&2 && apt-get install -y --no-install-recommends mariadb-server mariadb-client >&2; }
fi

work="$(mktemp -d)"
pid=""
cleanup() {
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
me="$(id -un)"
mariadb-install-db --no-defaults --user="$me" --datadir="$work/data" --auth-root-authentication-method=normal \
  --skip-test-db >"$work/install.log" 2>&1 || { cat "$work/install.log" >&2; fail "mariadb-install-db"; }
mariadbd --no-defaults --user="$me" --datadir="$work/data" --socket="$work/sock" --port="$port" \
  --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$work/mariadbd.pid" --log-error="$work/error.log" \
  --innodb-buffer-pool-size=32M --skip-log-bin >"$work/mariadbd.out" 2>&1 &
pid=$!
root_sql() { mariadb --no-defaults -S "$work/sock" -u root -N -B -e "$1"; }
for _ in $(seq 1 300); do
  root_sql 'SELECT 1' >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/error.log" >&2; fail "mariadbd exited"; }
  sleep 0.1
done
root_sql 'SELECT 1' >/dev/null || { cat "$work/error.log" >&2; fail "mariadbd did not answer within 30 s"; }
log "mariadbd $(root_sql 'SELECT VERSION()') on 127.0.0.1:$port"

# What a Secret might hold: characters a URL cannot carry as they are.
password='Zone+1%?p@ss/w:rd'
root_sql "CREATE DATABASE project1;
  CREATE USER 'username1'@'%' IDENTIFIED BY '$password';
  GRANT ALL PRIVILEGES ON project1.* TO 'username1'@'%';"
# As the user, over TCP with the password: the check a migration depends on.
user_sql() { mariadb --no-defaults -h 127.0.0.1 -P "$port" -u username1 -p"$password" -N -B -e "$1" project1; }

# The Job's env (spec.mysql) and the artifacts' migrations folder.
export MYSQL_HOST=127.0.0.1 MYSQL_PORT="$port" MYSQL_USER=username1 MYSQL_PASSWORD="$password" MYSQL_DATABASE=project1
export MIGRATE_BIN="$migrate" MIGRATIONS_DIR="$work/artifacts/migrations"
mkdir -p "$MIGRATIONS_DIR"
cp "$here"/migrations/000001_* "$MIGRATIONS_DIR"/

run() { # run NAME CMD...: stderr to $work/NAME.err, exit code to $rc, with a watchdog
  set +e
  timeout 120 "${@:2}" >"$work/$1.out" 2>"$work/$1.err"
  rc=$?
  set -e
  [[ $rc -ne 124 ]] || fail "$1 hung for 120 s"
}
expect_ok() { [[ $rc -eq 0 ]] || { cat "$work/$1.err" >&2; fail "$1 exited $rc"; }; }
expect_err() { # expect_err NAME TEXT: non-zero exit and TEXT on stderr
  [[ $rc -ne 0 ]] || { cat "$work/$1.err" >&2; fail "$1 succeeded"; }
  grep -qF -- "$2" "$work/$1.err" || { cat "$work/$1.err" >&2; fail "$1: stderr lacks '$2'"; }
}
expect_version() { # the schema version and dirty flag migrate recorded
  local got
  got="$(user_sql 'SELECT version, dirty FROM schema_migrations' | tr '\t' ' ')"
  [[ "$got" == "$1" ]] || fail "schema_migrations is '$got', want '$1'"
}

run first "$entry"
expect_ok first
grep -qF "1/u create_players" "$work/first.err" || { cat "$work/first.err" >&2; fail "first run did not apply 000001"; }
[[ "$(user_sql 'SHOW TABLES' | sort | tr '\n' ' ')" == "players schema_migrations " ]] \
  || fail "tables after 000001: $(user_sql 'SHOW TABLES' | tr '\n' ' ')"
expect_version "1 0"
log "ok: gamezone-migrate applied 000001 (tables: players, schema_migrations)"

cp "$here"/migrations/000002_* "$MIGRATIONS_DIR"/
# The DSN as Kubernetes would expand it from $(VAR)s in spec.migration.args.
raw="mysql://$MYSQL_USER:$MYSQL_PASSWORD@tcp($MYSQL_HOST:$MYSQL_PORT)/$MYSQL_DATABASE"
run raw "$migrate" -path "$MIGRATIONS_DIR" -database "$raw" up
[[ $rc -ne 0 ]] || fail "a DSN with the raw password '$password' was accepted; the README says it is not"
expect_version "1 0"
log "ok: \$(MYSQL_PASSWORD) in the args fails for this password (exit $rc: $(tail -n 1 "$work/raw.err"))"
encoded="$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$password")"
run encoded "$migrate" -path "$MIGRATIONS_DIR" \
  -database "mysql://$MYSQL_USER:$encoded@tcp($MYSQL_HOST:$MYSQL_PORT)/$MYSQL_DATABASE" up
expect_ok encoded
grep -qF "2/u add_inventory" "$work/encoded.err" || { cat "$work/encoded.err" >&2; fail "000002 not applied"; }
[[ "$(user_sql 'SHOW TABLES' | sort | tr '\n' ' ')" == "inventory players schema_migrations " ]] \
  || fail "tables after 000002: $(user_sql 'SHOW TABLES' | tr '\n' ' ')"
user_sql "SHOW COLUMNS FROM players LIKE 'last_login'" | grep -q last_login || fail "players.last_login missing"
expect_version "2 0"
log "ok: migrate with a URL-encoded password applied 000002 (tables: inventory, players, schema_migrations)"

run again "$entry" up
expect_ok again
grep -qF "no change" "$work/again.err" || { cat "$work/again.err" >&2; fail "re-run was not a no-op"; }
log "ok: a re-run changes nothing"

run wrong env MYSQL_PASSWORD=wrong "$entry" up
expect_err wrong "Access denied for user 'username1'"
log "ok: a wrong password is refused: $(tail -n 1 "$work/wrong.err")"

run unset env -u MYSQL_DATABASE "$entry" up
expect_err unset "MYSQL_DATABASE is not set"
[[ $rc -eq 2 ]] || fail "missing env exited $rc, want 2"
log "ok: a missing variable is named"

printf 'CREATE TABLE broken (id INT PRIMARY KEY,, name TEXT);\n' >"$MIGRATIONS_DIR/000003_broken.up.sql"
printf 'DROP TABLE IF EXISTS broken;\n' >"$MIGRATIONS_DIR/000003_broken.down.sql"
run broken "$entry" up
expect_err broken "error: migration failed"
expect_err broken "Error 1064"
expect_version "3 1"
log "ok: a broken migration exits $rc with migrate's error: $(grep -m1 '^error:' "$work/broken.err")"
run dirty "$entry" up
expect_err dirty "Dirty database version 3"
log "ok: and the next run refuses the dirty schema: $(tail -n 1 "$work/dirty.err")"

log "all checks passed"
