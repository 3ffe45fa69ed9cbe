package main

import (
	"net/url"
	"strings"
	"testing"
)

// The password survives the way migrate reads it back: the last `?` splits the query, then
// the user and password are URL-unescaped.
func TestDSNEscapesWhatMigrateUnescapes(t *testing.T) {
	password := "a+b%c?d@e/f:g h"
	d := dsn("game user", password, "db.zone1", "3306", "project1", "tls=true")
	if strings.Count(d, "?") != 1 || !strings.HasSuffix(d, "?tls=true") {
		t.Fatalf("query is not last and alone: %s", d)
	}
	userinfo := strings.TrimPrefix(d[:strings.LastIndex(d, "@")], "mysql://")
	u, p, _ := strings.Cut(userinfo, ":")
	if got, _ := url.QueryUnescape(p); got != password {
		t.Fatalf("password %q came back as %q", password, got)
	}
	if got, _ := url.QueryUnescape(u); got != "game user" {
		t.Fatalf("user came back as %q", got)
	}
	if !strings.Contains(d, "@tcp(db.zone1:3306)/project1") {
		t.Fatalf("address: %s", d)
	}
}

func TestIPv6HostIsBracketed(t *testing.T) {
	if d := dsn("u", "p", "fd00::1", "3306", "db", ""); !strings.Contains(d, "@tcp([fd00::1]:3306)/db") || strings.Contains(d, "?") {
		t.Fatalf("got %s", d)
	}
}
