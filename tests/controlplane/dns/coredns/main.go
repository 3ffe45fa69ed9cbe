// CoreDNS for GameZone's test clusters with real nodes: only the plugins the
// cluster's DNS needs (kubernetes for the cluster's names, template to answer
// NXDOMAIN for every other name, as there is no upstream, and what serves and
// checks them), so the build leaves out CoreDNS's cloud back ends and their
// dependencies.
package main

import (
	"log"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

// Execution order, as in CoreDNS's own plugin.cfg.
var directives = []string{"bind", "ready", "errors", "log", "template", "kubernetes"}

func main() {
	if err := dnsserver.SetDirectives(directives); err != nil {
		log.Fatalf("coredns: %v", err)
	}
	coremain.Run()
}
