// Command gamezone-migrate runs golang-migrate's CLI against the zone's MySQL, built from the
// MYSQL_* env that a GameZone's migration Job carries.
//
// A DSN written as `$(MYSQL_PASSWORD)` in the Job's args breaks on passwords with `+`, `%`
// or `?` (migrate URL-unescapes the password and splits on the last `?`); here each part is
// escaped. The process is replaced by migrate (exec), so its output and exit code are
// migrate's own. Arguments are migrate's command; `up` when none are given.
//
// Env: MYSQL_HOST, MYSQL_USER, MYSQL_PASSWORD, MYSQL_DATABASE (required), MYSQL_PORT (3306),
// MYSQL_PARAMS (DSN query, e.g. `tls=true`), MIGRATIONS_DIR (/app/artifacts/migrations),
// MIGRATE_BIN (`migrate` beside this binary).
package main

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

const defaultMigrations = "/app/artifacts/migrations"

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "gamezone-migrate: "+format+"\n", args...)
	os.Exit(2)
}

func required(name string) string {
	v := os.Getenv(name)
	if v == "" {
		fail("%s is not set; the migration Job gets it from the GameZone's spec.mysql", name)
	}
	return v
}

func orDefault(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

// dsn is migrate's mysql URL with user and password escaped the way migrate unescapes them.
func dsn(user, password, host, port, database, params string) string {
	d := "mysql://" + url.QueryEscape(user) + ":" + url.QueryEscape(password) +
		"@tcp(" + net.JoinHostPort(host, port) + ")/" + database
	if params != "" {
		d += "?" + params
	}
	return d
}

func main() {
	host, user := required("MYSQL_HOST"), required("MYSQL_USER")
	password, database := required("MYSQL_PASSWORD"), required("MYSQL_DATABASE")
	port := orDefault("MYSQL_PORT", "3306")
	dir := orDefault("MIGRATIONS_DIR", defaultMigrations)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		fail("no migrations folder %s; layer one into the zone's artifacts or set MIGRATIONS_DIR", dir)
	}
	bin := os.Getenv("MIGRATE_BIN")
	if bin == "" {
		self, err := os.Executable()
		if err != nil {
			fail("cannot find myself (%v); set MIGRATE_BIN to golang-migrate's CLI", err)
		}
		bin = filepath.Join(filepath.Dir(self), "migrate")
	}
	command := os.Args[1:]
	if len(command) == 0 {
		command = []string{"up"}
	}
	argv := append([]string{bin, "-path", dir,
		"-database", dsn(user, password, host, port, database, os.Getenv("MYSQL_PARAMS"))}, command...)
	fmt.Fprintf(os.Stderr, "gamezone-migrate: %s on %s@%s/%s with %s\n",
		strings.Join(command, " "), user, net.JoinHostPort(host, port), database, dir)
	err := syscall.Exec(bin, argv, os.Environ())
	fail("cannot run %s: %v; set MIGRATE_BIN to golang-migrate's CLI", bin, err)
}
