//! Which servers a layer may be fetched from. Layer URLs are written by tenants and fetched by
//! the operator (to pin revisions) and by init containers, so a URL must not reach the
//! operator's own host, the cloud metadata service or the cluster API server. Pure logic: the
//! HTTP clients, the S3 client and the git transports call [`Egress::check_url`] before they
//! connect and [`Egress::check_addr`] on every address a name resolves to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What the operator and `gamezone-init` may connect to. [`Egress::default`] is [`Egress::strict`].
#[derive(Clone, Debug)]
pub struct Egress {
    nets: Vec<(IpAddr, u8)>,
    hosts: Vec<String>,
    deny: Vec<SocketAddr>,
    local: bool,
    /// The `--allow-egress` entries as given, for [`Egress::to_args`].
    allowed: Vec<String>,
}

impl Default for Egress {
    fn default() -> Self {
        Egress::strict()
    }
}

/// The fix every refusal names.
const FIX: &str = "use a reachable server, or ask the operator's admin to allow it with --allow-egress";

/// An address refused by the policy; travels inside library errors (reqwest's resolver) so the
/// message that reaches the user is this one, not the library's.
/// `policy` is false when the name did not resolve at all (worth trying again).
#[derive(Debug)]
pub(crate) struct Refused {
    pub message: String,
    pub policy: bool,
}

impl Refused {
    fn unresolved() -> Self {
        Refused { message: "the server's name does not resolve; check the host name".to_owned(), policy: false }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

impl Egress {
    /// Refuses loopback, link-local (169.254.0.0/16 with the metadata address, fe80::/10,
    /// fd00:ec2::254), unspecified, multicast and broadcast addresses however spelled
    /// (IPv4-mapped/compatible IPv6, decimal/octal/hex IPv4, DNS names resolving there); local
    /// sources (file://, plain paths, `local` layers) refused.
    pub fn strict() -> Self {
        Egress { nets: Vec::new(), hosts: Vec::new(), deny: Vec::new(), local: false, allowed: Vec::new() }
    }

    /// Also allows these entries: CIDRs (`127.0.0.0/8`, `::1/128`) and single IPs widen the
    /// allowed addresses; host names (exact, case-insensitive) are allowed whatever they
    /// resolve to. `Err` names the bad entry.
    pub fn allow(mut self, entries: &[String]) -> Result<Self, String> {
        for raw in entries {
            let e = raw.trim();
            if e.is_empty() {
                continue;
            }
            if let Some((ip, bits)) = e.split_once('/') {
                let ip: IpAddr = ip.parse().map_err(|_| bad_entry(e))?;
                let bits: u8 = bits.parse().map_err(|_| bad_entry(e))?;
                if bits > if ip.is_ipv4() { 32 } else { 128 } {
                    return Err(bad_entry(e));
                }
                self.nets.push((canonical(ip), if ip.is_ipv4() { bits } else { v6_bits(ip, bits) }));
            } else if let Ok(ip) = e.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                self.nets.push((canonical(ip), if canonical(ip).is_ipv4() { 32 } else { 128 }));
            } else if is_host_name(e) {
                self.hosts.push(e.trim_end_matches('.').to_ascii_lowercase());
            } else {
                return Err(bad_entry(e));
            }
            self.allowed.push(e.to_owned());
        }
        Ok(self)
    }

    /// Always refused, whatever `allow` says: e.g. the cluster API server's address and port.
    pub fn deny(mut self, addrs: &[SocketAddr]) -> Self {
        self.deny.extend(addrs.iter().map(|a| SocketAddr::new(canonical(a.ip()), a.port())));
        self
    }

    /// Allows file:// URLs and plain paths (local development only).
    pub fn allow_local_sources(mut self, yes: bool) -> Self {
        self.local = yes;
        self
    }

    /// Whether local sources (file://, plain paths, `local` layers) are allowed.
    pub fn local_sources_allowed(&self) -> bool {
        self.local
    }

    /// The gamezone-init command-line arguments that reproduce this policy (empty for strict()).
    pub fn to_args(&self) -> Vec<String> {
        let mut args: Vec<String> = self.allowed.iter().map(|a| format!("--allow-egress={a}")).collect();
        args.extend(self.deny.iter().map(|d| format!("--deny-egress={d}")));
        if self.local {
            args.push("--allow-local-sources".to_owned());
        }
        args
    }

    /// Checks a URL before any connection: scheme, literal host, local sources. `field` names
    /// the spec field for the message (e.g. "git.url").
    pub fn check_url(&self, field: &str, url: &str) -> Result<(), String> {
        let local = || {
            if self.local {
                Ok(())
            } else {
                Err(format!(
                    "{field}: local files and paths on the operator's host are not fetched; use a remote URL, or ask the operator's admin to allow local sources with --allow-local-sources"
                ))
            }
        };
        let Some((scheme, _)) = url.split_once("://") else {
            // scp-like ssh (`user@host:path`) names a host; anything else is a local path.
            return match scp_host(url) {
                Some(host) => self.check_host(field, host, 22),
                None => local(),
            };
        };
        let scheme = scheme.to_ascii_lowercase();
        let port = match scheme.as_str() {
            "file" => return local(),
            "http" => 80,
            "https" => 443,
            "git" => 9418,
            "ssh" | "git+ssh" | "ssh+git" => 22,
            _ => {
                return Err(format!(
                    "{field}: the URL scheme `{}` is not supported; use http(s)://, git:// or ssh://",
                    scheme.escape_debug()
                ));
            }
        };
        let u = url::Url::parse(url).map_err(|_| format!("{field}: not a valid URL; check {field}"))?;
        let port = u.port().unwrap_or(port);
        match u.host() {
            None => Err(format!("{field}: the URL has no host; check {field}")),
            Some(url::Host::Ipv4(a)) => self.check_named(field, IpAddr::V4(a), port),
            Some(url::Host::Ipv6(a)) => self.check_named(field, IpAddr::V6(a), port),
            Some(url::Host::Domain(d)) => self.check_host(field, d, port),
        }
    }

    /// Checks one resolved address (used by the DNS resolver and raw TCP connects). Port 0
    /// (the DNS resolver does not know the port) matches every port of a denied address.
    pub fn check_addr(&self, addr: SocketAddr) -> Result<(), String> {
        self.check_denied(addr)?;
        let ip = canonical(addr.ip());
        if self.nets.iter().any(|&(net, bits)| in_net(ip, net, bits)) {
            return Ok(());
        }
        match refused_kind(ip) {
            Some(kind) => Err(format!("{ip} is {kind} address, which the operator does not fetch from; {FIX}")),
            None => Ok(()),
        }
    }

    /// A host from a URL: an IP literal in any spelling, or a name (checked when resolved).
    fn check_host(&self, field: &str, host: &str, port: u16) -> Result<(), String> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.check_named(field, ip, port);
        }
        // Non-http schemes keep the host as written; the WHATWG parser reads `127.1`, `0x7f.1`
        // or `2130706433` the way the system resolver would.
        if let Ok(u) = url::Url::parse(&format!("http://{host}/"))
            && let Some(url::Host::Ipv4(a)) = u.host()
        {
            return self.check_named(field, IpAddr::V4(a), port);
        }
        if !is_host_name(host) {
            return Err(format!("{field}: the host is not a valid name; check {field}"));
        }
        Ok(())
    }

    fn check_named(&self, field: &str, ip: IpAddr, port: u16) -> Result<(), String> {
        self.check_addr(SocketAddr::new(ip, port)).map_err(|m| format!("{field}: {m}"))
    }

    /// Whether `host` is a name allowed whatever it resolves to.
    pub(crate) fn host_allowed(&self, host: &str) -> bool {
        let h = host.trim_end_matches('.');
        self.hosts.iter().any(|a| a.eq_ignore_ascii_case(h))
    }

    /// Keeps the addresses of `host` the policy allows (all of them for an allowed name, but
    /// never a denied one); `Err` when none is left, naming the first refusal.
    pub(crate) fn filter(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, String> {
        let by_name = self.host_allowed(host);
        let mut first = None;
        let mut kept = Vec::new();
        for a in addrs {
            let r = if by_name { self.check_denied(a) } else { self.check_addr(a) };
            match r {
                Ok(()) => kept.push(a),
                Err(m) => first = first.or(Some(m)),
            }
        }
        match (kept.is_empty(), first) {
            (true, Some(m)) => Err(m),
            _ => Ok(kept),
        }
    }

    /// Refuses `addr` when `--deny-egress` names it, whatever else is allowed.
    fn check_denied(&self, addr: SocketAddr) -> Result<(), String> {
        let ip = canonical(addr.ip());
        if self.deny.iter().any(|d| d.ip() == ip && (addr.port() == 0 || d.port() == addr.port())) {
            return Err(format!("{ip} is an address the operator never fetches from (denied by --deny-egress); {FIX}"));
        }
        Ok(())
    }

    /// Resolves `host:port` and keeps what the policy allows (see [`Egress::filter`]).
    pub(crate) async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> =
            tokio::net::lookup_host((host, port)).await.map_err(|_| Refused::unresolved())?.collect();
        self.filter(host, addrs).map_err(|message| Refused { message, policy: true })
    }

    /// Blocking [`Egress::lookup`].
    pub(crate) fn lookup_blocking(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
        use std::net::ToSocketAddrs as _;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().map_err(|_| Refused::unresolved())?.collect();
        self.filter(host, addrs).map_err(|message| Refused { message, policy: true })
    }
}

fn bad_entry(e: &str) -> String {
    format!("--allow-egress entry `{}` is not a CIDR (10.0.0.0/8, ::1/128), an IP or a host name", e.escape_debug())
}

/// An IPv6 prefix over an IPv4-mapped network counts in IPv4 bits once canonical.
fn v6_bits(ip: IpAddr, bits: u8) -> u8 {
    match (ip, canonical(ip)) {
        (IpAddr::V6(_), IpAddr::V4(_)) => bits.saturating_sub(96),
        _ => bits,
    }
}

/// IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible (`::a.b.c.d`) IPv6 as the IPv4 they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            // ::a.b.c.d, but not :: and ::1 themselves.
            if s[..6].iter().all(|&x| x == 0) && (s[6] != 0 || s[7] > 1) {
                let [.., a, b, c, d] = v6.octets();
                return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            }
            ip
        }
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - u32::from(bits)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// What kind of address the strict policy refuses, as "a/an <kind>".
fn refused_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => {
            if a.is_loopback() {
                Some("a loopback")
            } else if a.is_link_local() {
                Some("a link-local (cloud metadata)")
            } else if a.octets()[0] == 0 {
                Some("an unspecified")
            } else if a.is_multicast() {
                Some("a multicast")
            } else if a.is_broadcast() {
                Some("a broadcast")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            if a.is_loopback() {
                Some("a loopback")
            } else if a.is_unspecified() {
                Some("an unspecified")
            } else if a.is_multicast() {
                Some("a multicast")
            } else if a.segments()[0] & 0xffc0 == 0xfe80 || a == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("a link-local (cloud metadata)")
            } else {
                None
            }
        }
    }
}

/// Letters, digits, `-`, `_` and dots: a DNS name (not an IP literal, not a path).
fn is_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && !h.starts_with('.')
}

/// The host of an scp-like ssh URL (`[user@]host:path`), if `url` is one (git's rule: a colon
/// before any slash).
fn scp_host(url: &str) -> Option<&str> {
    let colon = url.find(':')?;
    if url[..colon].contains('/') {
        return None;
    }
    let host = url[..colon].rsplit_once('@').map_or(&url[..colon], |(_, h)| h);
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(e: &Egress, url: &str) -> String {
        e.check_url("git.url", url).expect_err(url)
    }

    #[test]
    fn strict_refuses_every_spelling_of_loopback_and_metadata() {
        let e = Egress::strict();
        for url in [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::127.0.0.1]/",
            "http://[::1]/",
            "git://127.1/repo.git",
            "git://2130706433/repo.git",
            "ssh://git@[::1]/repo.git",
            "git@127.0.0.1:org/repo.git",
        ] {
            let m = refused(&e, url);
            assert!(
                m.starts_with("git.url: 127.0.0.1 is a loopback address") || m.contains("::1 is a loopback"),
                "{url}: {m}"
            );
            assert!(m.contains("--allow-egress"), "{m}");
        }
        for (url, kind) in [
            ("http://169.254.169.254/latest/meta-data/", "link-local"),
            ("http://[fd00:ec2::254]/", "link-local"),
            ("http://[fe80::1]/", "link-local"),
            ("http://0.0.0.0/", "unspecified"),
            ("http://[::]/", "unspecified"),
            ("http://224.0.0.1/", "multicast"),
            ("http://255.255.255.255/", "broadcast"),
        ] {
            assert!(refused(&e, url).contains(kind), "{url}");
        }
        for url in ["https://github.com/o/r.git", "http://10.0.0.5:9000/", "git://example.com/r", "git@github.com:o/r"]
        {
            assert_eq!(e.check_url("git.url", url), Ok(()), "{url}");
        }
        assert!(refused(&e, "ftp://example.com/x").contains("not supported"));
    }

    #[test]
    fn message_is_a_fixed_phrase() {
        assert_eq!(
            refused(&Egress::strict(), "http://127.0.0.1:18081/latest/meta-data/iam"),
            "git.url: 127.0.0.1 is a loopback address, which the operator does not fetch from; use a reachable server, or ask the operator's admin to allow it with --allow-egress"
        );
    }

    #[test]
    fn local_sources_only_when_allowed() {
        let e = Egress::strict();
        for url in ["file:///etc/passwd", "/srv/repo.git", "./repo", "repo.git"] {
            assert!(refused(&e, url).contains("--allow-local-sources"), "{url}");
        }
        let e = e.allow_local_sources(true);
        assert_eq!(e.check_url("p4Export.url", "file:///etc/passwd"), Ok(()));
        assert_eq!(e.check_url("git.url", "/srv/repo.git"), Ok(()));
    }

    #[tokio::test]
    async fn names_resolving_to_refused_addresses_fail() {
        let e = Egress::strict();
        assert_eq!(e.check_url("s3.endpoint", "http://localhost:9000"), Ok(()), "names are checked when resolved");
        let r = e.lookup("localhost", 80).await.unwrap_err();
        assert!(r.policy && r.message.contains("loopback"), "{r}");
        let allowed = Egress::strict().allow(&["LocalHost".into()]).unwrap();
        assert!(!allowed.lookup("localhost", 80).await.unwrap().is_empty());
        let cidr = Egress::strict().allow(&["127.0.0.0/8".into(), "::1/128".into()]).unwrap();
        assert!(!cidr.lookup("localhost", 80).await.unwrap().is_empty());
    }

    #[test]
    fn allowed_cidrs_and_deny_overriding_allow() {
        let e = Egress::strict().allow(&["127.0.0.0/8".into(), "::1".into(), "169.254.10.0/24".into()]).unwrap();
        assert_eq!(e.check_url("s3.endpoint", "http://127.1:9000/"), Ok(()));
        assert_eq!(e.check_url("s3.endpoint", "http://[::ffff:127.0.0.1]/"), Ok(()));
        assert_eq!(e.check_url("s3.endpoint", "http://[::1]/"), Ok(()));
        assert_eq!(e.check_url("s3.endpoint", "http://169.254.10.3/"), Ok(()));
        assert!(e.check_url("s3.endpoint", "http://169.254.169.254/").is_err());
        let api: SocketAddr = "127.0.0.1:6443".parse().unwrap();
        let e = e.deny(&[api]);
        assert!(e.check_url("s3.endpoint", "http://127.0.0.1:6443/").unwrap_err().contains("--deny-egress"));
        assert!(e.check_url("s3.endpoint", "http://[::ffff:127.0.0.1]:6443/").is_err());
        assert_eq!(e.check_url("s3.endpoint", "http://127.0.0.1:6444/"), Ok(()));
        // The resolver does not know the port: a denied address is refused on every port.
        assert!(e.check_addr("127.0.0.1:0".parse().unwrap()).is_err());
        let by_name = Egress::strict().allow(&["kube.local".into()]).unwrap().deny(&[api]);
        assert!(by_name.filter("kube.local", vec![api]).is_err());
        assert_eq!(by_name.filter("KUBE.local.", vec!["127.0.0.2:1".parse().unwrap()]).unwrap().len(), 1);
    }

    #[test]
    fn bad_entries_are_named_and_args_round_trip() {
        assert!(Egress::strict().allow(&["10.0.0.0/33".into()]).unwrap_err().contains("`10.0.0.0/33`"));
        assert!(Egress::strict().allow(&["http://x".into()]).unwrap_err().contains("`http://x`"));
        assert!(Egress::strict().to_args().is_empty());
        let e = Egress::strict()
            .allow(&["127.0.0.0/8".into(), "minio.local".into()])
            .unwrap()
            .deny(&["10.96.0.1:443".parse().unwrap()])
            .allow_local_sources(true);
        assert_eq!(
            e.to_args(),
            [
                "--allow-egress=127.0.0.0/8",
                "--allow-egress=minio.local",
                "--deny-egress=10.96.0.1:443",
                "--allow-local-sources"
            ]
        );
    }
}
